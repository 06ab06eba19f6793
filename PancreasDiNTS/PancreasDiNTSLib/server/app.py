"""The HTTP API of ``pancreas-dints serve`` (FastAPI; ``/openapi.json``, and the ``/docs`` page with --api-page).

Every ``/v1`` endpoint but ``/v1/health`` needs ``Authorization: Bearer <token>`` (compared in constant time).
Errors are one line of JSON: ``{"error": "..."}``, whatever fails (a job-store error is 503, an unexpected one
500); a client that disconnects mid-request is one log line, never a traceback. An upload is refused before a byte of it is stored when the
queue is full (503), the body is too large (413) or lacks a length (411), or the disk lacks room (507).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.bridge.remote import TERMINAL, UPLOAD_KINDS
from PancreasDiNTSLib.core.errors import UsageError, printable
from PancreasDiNTSLib.core.request import OPTIONS, SegmentRequest, job_choices
from PancreasDiNTSLib.server.store import JobStore, new_job_id
from PancreasDiNTSLib.server.uploads import (
    INPUT_NAMES,
    UploadRefused,
    check_series_zip,
    input_path,
    receive,
    stored_upload,
    unpack_series,
)
from PancreasDiNTSLib.server.workers import WorkerPool

MAX_SERIES_PARAM = 128
# The request body of POST /v1/jobs as the OpenAPI page shows it (the endpoint streams it itself).
UPLOAD_BODY = {"requestBody": {"required": True, "description": "the CT file (kind nii.gz, nii, nrrd, mha) or a zip "
                               "of the DICOM files of one series (kind zip)",
                               "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}}

# The job options POST /v1/jobs reads from its query (core.request's options with job=True), as the OpenAPI page
# shows them; the endpoint reads them all from the query itself, so a new job option needs no edit here.
JOB_PARAMETERS = [{"name": o.dest, "in": "query", "required": False, "description": o.help,
                   "schema": {"type": "string", **({"enum": list(o.choices)} if o.choices else {}),
                              **({"default": str(o.default).lower() if isinstance(o.default, bool) else o.default}
                                 if o.default is not None else {})}}
                  for o in OPTIONS if o.job]


@dataclass
class Limits:
    max_upload_bytes: int = 2 << 30
    max_unpacked_bytes: int = 8 << 30
    max_queue: int = 64
    min_free_bytes: int = 1 << 30
    retention_s: float = 72 * 3600.0
    unclaimed_s: float = 3600.0  # a finished job no client asked about for this long is deleted


@dataclass
class Service:
    """What the endpoints share: the store, the workers, the token, the limits."""

    store: JobStore
    pool: WorkerPool
    token: str
    limits: Limits
    reserved: int = 0  # bytes of uploads in flight (counted against the free space)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, need: int) -> None:
        """Count ``need`` bytes as taken, or refuse with 507 when the disk cannot hold them (and the margin)."""
        with self.lock:
            free = shutil.disk_usage(self.store.data).free - self.reserved
            if free - need < self.limits.min_free_bytes:
                raise HTTPException(507, "not enough free disk space on the server for this upload; try later")
            self.reserved += need

    def release(self, need: int) -> None:
        with self.lock:
            self.reserved -= need


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": printable(message)[:500]}, status_code=status, headers=headers)


def _status(service: Service, job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it: state, queue position (1 = next; 0 at a worker; null once ended), progress, ETA,
    result files."""
    queued = service.store.queued() if job["state"] == "queued" else []
    if job["state"] == "queued" and job["id"] not in queued:
        # a worker took it (or it was cancelled) between the two reads: show it as it is now, never position null
        job = service.store.get(job["id"]) or job
    keys = ("id", "state", "created", "started", "finished", "input_bytes", "input_sha256", "options", "error")
    out = {k: job[k] for k in keys} | {"position": None, "fraction": 0.0, "stage": job["state"], "message": "",
                                        "eta_s": None}
    mean, workers = service.pool.mean_duration(), max(1, len(service.pool.slots))
    if job["state"] == "queued":
        out["position"] = queued.index(job["id"]) + 1 if job["id"] in queued else None
        if mean is not None and out["position"] is not None:
            out["eta_s"] = round(mean * (1 + (out["position"] - 1) / workers), 1)
    elif job["state"] == "running":
        out["position"] = 0
        live = service.pool.live.get(job["id"], {})
        fraction = float(live.get("fraction") or 0.0)
        out |= {"stage": live.get("stage") or "running", "message": live.get("message") or "", "fraction": fraction}
        elapsed = time.time() - (job["started"] or time.time())
        if fraction > 0.02:
            out["eta_s"] = round(elapsed * (1 - fraction) / fraction, 1)
        elif mean is not None:
            out["eta_s"] = round(max(0.0, mean - elapsed), 1)
    elif job["state"] == "done":
        out |= {"fraction": 1.0, "files": job["files"], "message": job["error"] or "", "error": None}
    return out


def _options(query: dict[str, str]) -> dict[str, str]:
    """The job's options from the query, checked as ``segment`` checks them (core.request; 400 with the reason)."""
    try:
        opts = SegmentRequest.from_query(query, inputs=(), out_dir=Path(".")).to_query()
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    series = opts.get("series", "")
    if series and (len(series) > MAX_SERIES_PARAM or not series.isprintable()):
        raise HTTPException(400, "series: give a SeriesInstanceUID or a series selector (at most 128 characters)")
    return opts


async def _store_upload(service: Service, request: Request, kind: str, declared: int) -> tuple[str, int, str]:
    """Stream the body into a new job folder (unpacking a series zip); the job id, bytes and sha256."""
    job_id = new_job_id()
    folder = service.store.job_dir(job_id)
    need = declared * (2 if kind == "zip" else 1)
    service.reserve(need)
    try:
        (folder / "input").mkdir(parents=True)
        size, digest = await receive(request.stream(), stored_upload(folder, kind), declared)
        if kind == "zip":
            zipped = stored_upload(folder, kind)
            free = shutil.disk_usage(service.store.data).free - service.limits.min_free_bytes
            await run_in_threadpool(check_series_zip, zipped, free, service.limits.max_unpacked_bytes)
            await run_in_threadpool(unpack_series, zipped, input_path(folder, kind), service.limits.max_unpacked_bytes)
            zipped.unlink()
        return job_id, size, digest
    except UploadRefused as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(exc.status, str(exc)) from None
    except (ClientDisconnect, OSError, asyncio.CancelledError):
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        service.release(need)


def _declared_length(request: Request, limits: Limits) -> int:
    text = request.headers.get("content-length")
    if text is None:
        raise HTTPException(411, "send the upload with a Content-Length header")
    if not text.isdigit():
        raise HTTPException(400, "Content-Length is not a number")
    size = int(text)
    if size == 0:
        raise HTTPException(400, "empty upload; send one CT image or a zip of one DICOM series")
    if size > limits.max_upload_bytes:
        raise HTTPException(413, f"upload of {size >> 20} MiB is larger than the server's limit of "
                                 f"{limits.max_upload_bytes >> 20} MiB")
    return size


def _job_or_404(service: Service, job_id: str) -> dict[str, Any]:
    job = service.store.get(job_id)
    if job is None:
        raise HTTPException(404, "no such job (finished jobs are removed after the retention time, or when no "
                                 "client has asked about them for --unclaimed-hours)")
    service.store.touch(job_id)  # a client still wants this job
    return job


def _jobs_router(service: Service) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/jobs", status_code=202, summary="Submit one CT (the request body: the file, or a zip of one "
                 "DICOM series); options as query parameters, as for `segment`",
                 openapi_extra=UPLOAD_BODY | {"parameters": JOB_PARAMETERS})
    async def submit(request: Request, kind: str) -> dict[str, Any]:
        if kind not in UPLOAD_KINDS:
            raise HTTPException(400, f"kind {printable(kind)[:20]}: choose one of {', '.join(UPLOAD_KINDS)}")
        opts = _options(dict(request.query_params))  # every job option of core.request (JOB_PARAMETERS)
        if service.store.count("queued") >= service.limits.max_queue:
            raise HTTPException(503, f"the queue is full ({service.limits.max_queue} jobs); try again later")
        declared = _declared_length(request, service.limits)
        job_id, size, digest = await _store_upload(service, request, kind, declared)
        try:
            service.store.add(job_id, kind, opts, size, digest)
        except sqlite3.Error:  # no job: nothing of the upload may stay (it holds a patient's CT)
            shutil.rmtree(service.store.job_dir(job_id), ignore_errors=True)
            raise
        service.pool.notify()
        client = request.client.host if request.client else "?"
        service.pool.log(f"job {job_id}: accepted from {client} ({kind}, {size} bytes, sha256 {digest[:16]}...)")
        return _status(service, _job_or_404(service, job_id))

    @router.get("/jobs/{job_id}", summary="Status: state, queue position, progress fraction, ETA, result files")
    def status(job_id: str) -> dict[str, Any]:
        return _status(service, _job_or_404(service, job_id))

    @router.get("/jobs/{job_id}/events", summary="Progress stream: one JSON status per line, until the job ends")
    async def events(job_id: str) -> StreamingResponse:
        _job_or_404(service, job_id)

        async def lines() -> AsyncIterator[str]:
            last = ""
            while (job := service.store.get(job_id)) is not None:
                text = json.dumps(_status(service, job), sort_keys=True)
                if text != last:
                    last = text
                    service.store.touch(job_id)
                    yield text + "\n"
                if job["state"] in TERMINAL:
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.post("/jobs/{job_id}/cancel", summary="Cancel: a running job's worker process tree is ended")
    def cancel(job_id: str) -> dict[str, Any]:
        _job_or_404(service, job_id)
        service.pool.cancel(job_id)
        return _status(service, _job_or_404(service, job_id))

    @router.delete("/jobs/{job_id}", summary="Delete a job and its files (cancelled first if it still runs)")
    def delete(job_id: str) -> dict[str, Any]:
        _job_or_404(service, job_id)
        service.pool.cancel(job_id)
        shutil.rmtree(service.store.job_dir(job_id), ignore_errors=True)
        service.store.delete(job_id)
        return {"id": job_id, "deleted": True}

    @router.get("/jobs/{job_id}/files/{name}", summary="Download one result file of a finished job")
    def download(job_id: str, name: str) -> FileResponse:
        job = _job_or_404(service, job_id)
        known = {f["name"] for f in job["files"]} if job["state"] == "done" else set()
        if name not in known:
            raise HTTPException(404, "no such result file for this job")
        out = service.store.job_dir(job_id) / "out"
        folders = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
        if len(folders) != 1 or not (folders[0] / name).is_file():
            raise HTTPException(404, "the result files of this job are gone")
        return FileResponse(folders[0] / name, media_type="application/octet-stream", filename=name)

    return router


class TokenGate:
    """ASGI middleware: every /v1 request but health needs the bearer token (checked before the body is read)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/v1/") and path != "/v1/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
                await _error(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(service: Service, api_page: bool = False) -> FastAPI:
    """The FastAPI application of one server; ``api_page``: serve /docs (Swagger UI, whose scripts the browser
    loads from a public CDN: off by default, so an offline hospital network never sees a broken page or a request
    to a third party). /openapi.json is always served."""
    app = FastAPI(title="PancreasDiNTS server", version=__version__, docs_url="/docs" if api_page else None,
                  redoc_url=None,
                  description="Pancreas and pancreatic tumour segmentation in CT on a shared GPU (docs/SERVER.md).")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(sqlite3.Error)
    async def store_error(request: Request, exc: sqlite3.Error) -> JSONResponse:
        service.pool.log(f"{request.method} {request.url.path}: job store error ({exc}); answered 503")
        return _error(503, f"the server's job store is unavailable ({exc}); nothing was kept; try again in a "
                           "minute", {"Retry-After": "30"})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        service.pool.log(f"{request.method} {request.url.path}: the client disconnected; nothing was kept")
        return _error(400, "the client disconnected before the request was complete")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"unexpected server error ({type(exc).__name__}); see the server's log")

    app.add_middleware(TokenGate, token=service.token)

    @app.get("/v1/health", summary="Is the server up (no token needed); 'degraded' with the reasons when jobs "
             "cannot be scheduled (e.g. the job store is locked)")
    def health() -> dict[str, Any]:
        problems = service.pool.problems()
        return {"status": "degraded" if problems else "ok", "api": 1, "version": __version__} | (
            {"problems": problems} if problems else {})

    @app.get("/v1/model", summary="The model served (name, version, md5s), the workers and the limits")
    def model() -> dict[str, Any]:
        hello = service.pool.hello
        limits = service.limits
        return {"model": hello.get("model", {}), "devices": [s.device for s in service.pool.slots],
                "options": job_choices(), "input_kinds": {k: Path(v).name for k, v in INPUT_NAMES.items()},
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_queue": limits.max_queue,
                           "retention_s": limits.retention_s, "unclaimed_s": limits.unclaimed_s}}

    app.include_router(_jobs_router(service))
    return app
