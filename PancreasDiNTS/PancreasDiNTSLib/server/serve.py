"""Starting ``pancreas-dints serve``: data folder, token, lock, job recovery, workers, then uvicorn.

The data folder (``--data``, mode 0700) holds ``token`` (made on first start, mode 0600, unless ``--token-file``
gives one), ``jobs.sqlite3`` (the job store), ``jobs/<id>/`` (uploads and results), ``logs/`` (worker output)
and ``server.json`` (the address, written once listening). One server per data folder (a lock). A
non-loopback ``--host`` prints that the traffic must go over TLS (``--tls-cert``/``--tls-key``, or a proxy).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.bridge.commands import devices_command
from PancreasDiNTSLib.bridge.device_list import parse_devices
from PancreasDiNTSLib.bridge.remote import is_loopback, read_token
from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.errors import OutputError, UsageError, printable, require_modules
from PancreasDiNTSLib.server.app import Limits, Service, create_app
from PancreasDiNTSLib.server.dicom_node.config import NodeConfig
from PancreasDiNTSLib.server.dicom_node.node import Node
from PancreasDiNTSLib.server.dicom_node.stow import node_router
from PancreasDiNTSLib.server.store import JobStore
from PancreasDiNTSLib.server.workers import WorkerPool

TOKEN_NAME = "token"
JANITOR_EVERY_S = 60.0


@dataclass
class ServeSettings:
    data: Path
    model: str
    host: str = "127.0.0.1"
    port: int = 8765
    devices: str = "auto"
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    limits: Limits = field(default_factory=Limits)
    node: NodeConfig | None = None  # the DICOM node (docs/PACS.md), off when None
    api_page: bool = False  # /docs (Swagger UI, loaded from a public CDN by the browser): off unless asked for


def say(text: str) -> None:
    print(f"pancreas-dints serve: {printable(text)}", file=sys.stderr, flush=True)


def load_token(data: Path, token_file: Path | None) -> tuple[str, Path]:
    """The token (from ``token_file``, else DATA/token, made on the first start with mode 0600) and its file;
    checked as every client checks it (bridge.remote.read_token: owner-only mode, strength): UsageError."""
    if token_file is not None:
        return read_token(token_file, UsageError, for_server=True), token_file
    path = data / TOKEN_NAME
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return read_token(path, UsageError, for_server=True), path


@contextlib.contextmanager
def data_lock(data: Path) -> Iterator[None]:
    """One server per data folder (an exclusive lock on DATA/server.lock while it runs)."""
    handle = open(data / "server.lock", "a+")  # noqa: SIM115
    try:
        if os.name == "posix":
            import fcntl

            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UsageError(f"--data {printable(data)}: another server uses this data folder; stop it or "
                                 "choose another folder") from None
        yield
    finally:
        handle.close()


def worker_devices(spec: str) -> list[str]:
    """``auto``: one worker per GPU (none: one on the CPU); else the comma-separated devices given."""
    if spec != "auto":
        devices = [d.strip() for d in spec.split(",") if d.strip()]
        if not devices:
            raise UsageError("--device: give auto, cpu, cuda, cuda:N or a comma-separated list")
        return devices
    try:
        out = subprocess.run(devices_command(sys.executable), capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    gpus = [d for d, _ in parse_devices(out) if d.startswith("cuda:")]
    return gpus or ["cpu"]


def clean_orphans(store: JobStore) -> int:
    """Remove job folders with no job in the store (uploads that were never accepted)."""
    known, removed = store.known_ids(), 0
    for folder in store.jobs_dir.iterdir():
        if folder.name not in known:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def purge_expired(store: JobStore, retention_s: float, unclaimed_s: float | None = None) -> int:
    """Delete the finished jobs past the retention time, or unclaimed for ``unclaimed_s`` (their files, then
    their row); how many."""
    now = time.time()
    expired = store.expired(now - retention_s, now - unclaimed_s if unclaimed_s is not None else None)
    for job_id in expired:
        shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
        store.delete(job_id)
    return len(expired)


def discard_unfetchable(store: JobStore) -> int:
    """Patient data no one can fetch: the upload of every job that ended, and every file of a job that did not
    end 'done' (only a done job's results can be downloaded); how many folders were removed."""
    removed = 0
    for job_id, state in store.ended().items():
        folder = store.job_dir(job_id)
        for part in (["input"] if state == "done" else ["input", "out"]):
            if (folder / part).exists():
                shutil.rmtree(folder / part, ignore_errors=True)
                removed += 1
    return removed


def janitor(service: Service, stop: threading.Event) -> None:
    """Purge expired and unclaimed jobs and data no one can fetch every minute (more often for shorter times)."""
    every = min(JANITOR_EVERY_S, max(1.0, min(service.limits.retention_s, service.limits.unclaimed_s) / 2))
    while not stop.wait(every):
        try:
            purge_expired(service.store, service.limits.retention_s, service.limits.unclaimed_s)
            discard_unfetchable(service.store)
        except sqlite3.Error as exc:  # a store outage: the next round tries again (health says degraded)
            say(f"retention: the job store is unavailable ({exc}); trying again in {every:.0f} s")


def open_store(data: Path) -> tuple[JobStore, int, dict[str, int]]:
    """The job store, with orphan uploads removed and interrupted jobs recovered; a damaged or locked store is
    one line (OutputError, exit 5) that says what to do."""
    path = data / "jobs.sqlite3"
    try:
        store = JobStore(data)
        store.check()
        orphans, counts = clean_orphans(store), store.recover()
        discard_unfetchable(store)  # e.g. the upload of a job failed just now by recover()
        return store, orphans, counts
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):
            raise OutputError(f"{printable(path)}: the job store is locked by another program ({exc}); stop it "
                              "and start again") from None
        raise OutputError(f"{printable(path)}: the job store is damaged ({exc}); stop, move the file away (e.g. "
                          "to jobs.sqlite3.damaged: its jobs are lost) and start again (a new store is made)") from None


def _listen(settings: ServeSettings) -> tuple[socket.socket, str]:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family)
    except OSError as exc:
        raise UsageError(f"--host {printable(settings.host)} --port {settings.port}: cannot listen there "
                         f"({exc.strerror or exc}); choose another port") from None
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    return sock, f"{scheme}://{host}:{sock.getsockname()[1]}"


def _check_tls(settings: ServeSettings) -> None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (the certificate and its private key)")
    for p in (settings.tls_cert, settings.tls_key):
        if p is not None and not Path(p).is_file():
            raise UsageError(f"{printable(p)}: file not found")
    if not is_loopback(settings.host) and not settings.tls_cert:
        say(f"warning: listening on {settings.host} without TLS: images and the token cross the network in clear; "
            "use --tls-cert/--tls-key or a reverse proxy with HTTPS (docs/SERVER.md)")


def start_node(settings: ServeSettings, service: Service, app: Any) -> Node | None:
    """The DICOM node (SCP, STOW-RS, pull, sends) when configured; its outputs checked against the engine's."""
    cfg = settings.node
    if cfg is None:
        return None
    require_modules("the DICOM node", ("pynetdicom", "dicomweb_client"), "pip install 'pancreas-dints[server]'")

    if not cfg.allowed_aes:
        say("warning: the DICOM node allows no calling AE title; every association will be refused (allowed_aes, "
            "--dicom-allow)")
    node = Node(cfg, service.store, settings.limits.min_free_bytes, say, service.pool.notify)
    host, port = node.start()
    app.include_router(node_router(node, settings.limits.max_upload_bytes))
    say(f"DICOM node {cfg.ae_title} listening on {host}:{port} (allowed: {', '.join(cfg.allowed_aes) or 'none'}; "
        f"quiet period {cfg.quiet_s:g} s; sends to {', '.join(d.name for d in cfg.destinations) or 'nowhere'})")
    return node


def serve(settings: ServeSettings) -> int:
    """Run the server until SIGINT/SIGTERM; returns an exit code."""
    import uvicorn

    _check_tls(settings)
    data = settings.data.expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data / "logs").mkdir(exist_ok=True, mode=0o700)
    with data_lock(data):
        token, token_path = load_token(data, settings.token_file)
        store, orphans, counts = open_store(data)
        if orphans or any(counts.values()):
            say(f"recovered: {counts['requeued']} job(s) queued again, {counts['failed']} failed with a reason, "
                f"{orphans} unfinished upload(s) removed")
        pool = WorkerPool(store, settings.model, worker_devices(settings.devices), data / "logs")
        hello = pool.start()
        service = Service(store, pool, token, settings.limits)
        sock, url = _listen(settings)
        app = create_app(service, settings.api_page)
        node, info = start_node(settings, service, app), {"url": url, "pid": os.getpid()}
        if node is not None and node.address is not None:
            info["dicom"] = {"ae_title": node.cfg.ae_title, "host": node.address[0], "port": node.address[1]}
        stop = threading.Event()
        threading.Thread(target=janitor, args=(service, stop), daemon=True).start()
        write_text_atomic(data / "server.json", json.dumps(info) + "\n")
        model = hello.get("model", {})
        say(f"listening on {url} (model {model.get('name', '?')} {model.get('version', '')}, workers: "
            f"{', '.join(s.device for s in pool.slots)}; token in {token_path}; API description "
            f"{url}/openapi.json{f', API page {url}/docs' if settings.api_page else ''})")
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            stop.set()
            if node is not None:
                node.stop()
            pool.stop()
            store.close()
    return 0
