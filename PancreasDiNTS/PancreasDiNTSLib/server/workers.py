"""Worker slots: one worker process per GPU (or one on the CPU), each fed the oldest queued job (FIFO).

Each slot is a thread of the server that owns one worker process (server/worker.py, its own session, started
only from the slot's thread so that PR_SET_PDEATHSIG ties it to the server). A worker that dies (crash,
``kill -9``, out of memory) fails its job with the reason and is started again; the server stays up. Cancel
kills the worker's whole process tree (bridge.child_process.kill_process_tree) and the slot starts a fresh one.
The upload of a finished job is deleted at once, and so is every file of a job that failed or was cancelled (no
one can fetch them); a done job's results stay until deleted, unclaimed or past the retention time.

A job-store error (a lock held by another program, a full disk, I/O) never ends a slot's thread: the store call
is retried with back-off (1 s doubling to 30 s), the outage is logged in one line (and its end in another), and
``/v1/health`` says ``degraded`` with the reason until the store answers again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PancreasDiNTSLib.bridge.child_process import kill_process_tree
from PancreasDiNTSLib.core.errors import ModelError, printable
from PancreasDiNTSLib.server.store import JobStore
from PancreasDiNTSLib.server.uploads import input_path

RESTART_DELAY_S = 2.0
STORE_RETRY_S = (1.0, 30.0)  # first and longest wait before a failed job-store call is tried again
T = TypeVar("T")


class WorkerFailed(ModelError):
    """A worker process could not start (its one-line reason: model, device...)."""


class Slot:
    """One worker process and the thread that feeds it."""

    def __init__(self, pool: WorkerPool, index: int, device: str) -> None:
        self.pool, self.index, self.device = pool, index, device
        self.proc: subprocess.Popen[str] | None = None
        self.job_id: str | None = None
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop, name=f"worker-slot-{index}", daemon=True)

    def start_worker(self) -> dict[str, Any]:
        """Start the worker process and wait for its hello (WorkerFailed with its reason otherwise)."""
        log = open(self.pool.log_dir / f"worker-{self.index}.log", "a", encoding="utf-8")  # noqa: SIM115
        cmd = [sys.executable, "-m", "PancreasDiNTSLib.server.worker", "--model", self.pool.model, "--device",
               self.device]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                bufsize=1, start_new_session=True)
        log.close()
        assert proc.stdout is not None
        hello = _message(proc.stdout.readline())
        if hello is None or hello.get("type") != "hello":
            kill_process_tree(proc.pid, timeout=2.0)
            why = (hello or {}).get("error") or f"the worker process ended at start; see {self.pool.log_dir}"
            raise WorkerFailed(printable(why))
        self.proc = proc
        return hello

    def loop(self) -> None:
        """Feed the worker until the server stops; nothing (a store error, a bug) ends this thread."""
        while not self.pool.stopping.is_set():
            try:
                self.step()
            except Exception as exc:  # an engine bug: keep scheduling, say it once per occurrence
                self.pool.log(f"worker slot {self.index}: unexpected {type(exc).__name__}: {exc}")
                self.pool.stopping.wait(RESTART_DELAY_S)

    def step(self) -> None:
        """One turn of the loop: (re)start the worker, claim the oldest queued job and run it, or wait."""
        pool = self.pool
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.start_worker()
            except (WorkerFailed, OSError) as exc:
                pool.log(f"worker {self.index}: {exc}")
                time.sleep(RESTART_DELAY_S)
                return
        job = pool.guarded("claiming the next job", lambda: pool.store.claim_next(self.index))
        if job is None:
            with pool.wake:
                pool.wake.wait(timeout=1.0)
            return
        with self.lock:
            self.job_id = job["id"]
        self.run(job)

    def run(self, job: dict[str, Any]) -> None:
        store, job_id, guarded = self.pool.store, job["id"], self.pool.guarded
        folder = store.job_dir(job_id)
        shutil.rmtree(folder / "out", ignore_errors=True)  # a re-run after a restart starts from nothing
        message = {"id": job_id, "input": str(input_path(folder, job["kind"])), "out": str(folder / "out"),
                   "data": str(store.data), "options": job["options"]}
        with self.lock:
            self.job_id = job_id
        started = time.monotonic()
        result = self._exchange(message)
        with self.lock:
            self.job_id = None
            cancelled = job_id in self.cancelled
            self.cancelled.discard(job_id)
        if result is None and self.pool.stopping.is_set():
            return  # the server is stopping: the job stays 'running' and is queued again at the next start
        if result is None:
            if not cancelled:
                code = self.proc.wait() if self.proc is not None else None
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                why = (f"the worker process ended unexpectedly ({how}) while running this job; the server is still "
                       "up; send the image again")
                guarded("recording a failed job", lambda: store.finish(job_id, "failed", why))
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5.0)
            self.proc = None
        elif result.get("state") == "done":
            done = result
            if guarded("recording a finished job", lambda: store.finish(job_id, "done", done.get("message") or None,
                                                                       done.get("files", []))):
                self.pool.durations.append(time.monotonic() - started)
        else:
            error = str(result.get("error") or "failed")
            guarded("recording a failed job", lambda: store.finish(job_id, "failed", error))
        self.pool.live.pop(job_id, None)
        shutil.rmtree(folder / "input", ignore_errors=True)  # the patient image is not kept once the job ended
        final = guarded("reading a job", lambda: store.get(job_id)) or {}
        if final.get("state") != "done":
            shutil.rmtree(folder / "out", ignore_errors=True)  # no one can fetch a failed job's files: gone now
        self.pool.log(f"job {job_id}: {final.get('state', 'deleted')} after {time.monotonic() - started:.1f} s on "
                      f"worker {self.index}" + (f" ({final['error']})" if final.get("error") else ""))

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send one job and follow its progress; its result, or None when the worker died."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except OSError:
            return None
        for line in proc.stdout:
            data = _message(line)
            if data is None or data.get("id") != message["id"]:
                continue
            if data.get("type") == "result":
                return data
            if data.get("type") == "progress":
                self.pool.live[message["id"]] = {k: data.get(k) for k in ("stage", "fraction", "message")}
        return None

    def cancel(self, job_id: str) -> bool:
        """Kill the worker's process tree if it runs ``job_id``; True if it did."""
        with self.lock:
            if self.job_id != job_id or self.proc is None:
                return False
            self.cancelled.add(job_id)
            pid = self.proc.pid
        kill_process_tree(pid, timeout=2.0)
        return True


def _message(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class WorkerPool:
    """The slots of one server; ``live`` holds the running jobs' latest progress (stage, fraction, message)."""

    def __init__(self, store: JobStore, model: str, devices: list[str], log_dir: Path) -> None:
        self.store, self.model, self.log_dir = store, model, log_dir
        self.slots = [Slot(self, i, d) for i, d in enumerate(devices)]
        self.stopping = threading.Event()
        self.wake = threading.Condition()
        self.live: dict[str, dict[str, Any]] = {}
        self.durations: deque[float] = deque(maxlen=20)
        self.hello: dict[str, Any] = {}
        self.store_error: str | None = None  # the job store's current outage (health: degraded), else None

    def guarded(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()`` (a job-store call), retried with back-off while the store fails; None when the server stops
        first. An outage is logged once when it starts and once when it ends."""
        delay = STORE_RETRY_S[0]
        while True:
            try:
                value = call()
            except sqlite3.Error as exc:
                if self.store_error is None:
                    self.log(f"job store error while {what} ({exc}); retrying with back-off, jobs wait meanwhile")
                self.store_error = f"job store error while {what}: {exc}"
                if self.stopping.wait(delay):
                    return None
                delay = min(delay * 2, STORE_RETRY_S[1])
                continue
            if self.store_error is not None:
                self.store_error = None
                self.log("job store answers again; scheduling resumed")
            return value

    def problems(self) -> list[str]:
        """Why the service is degraded (empty when it is not): a store outage, a scheduler thread that ended."""
        out = [self.store_error] if self.store_error else []
        out += [f"the scheduler of worker {s.index} stopped" for s in self.slots
                if s.thread.ident is not None and not s.thread.is_alive() and not self.stopping.is_set()]
        return out

    def start(self) -> dict[str, Any]:
        """Start the first worker here (its failure stops the server with the reason), then every slot's thread."""
        first = self.slots[0]
        # started from the slot's own thread (the worker dies with the thread that started it): wait for it
        box: dict[str, Any] = {}

        def first_start() -> None:
            try:
                box["hello"] = first.start_worker()
            except (WorkerFailed, OSError) as exc:
                box["error"] = exc
                return
            first.loop()

        first.thread = threading.Thread(target=first_start, name="worker-slot-0", daemon=True)
        first.thread.start()
        while not box:
            time.sleep(0.05)
        if "error" in box:
            raise box["error"]
        self.hello = box["hello"]
        for slot in self.slots[1:]:
            slot.thread.start()
        return self.hello

    def notify(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (a running one's process tree is gone when this returns)."""
        if self.store.finish(job_id, "cancelled", "cancelled by the client", only_from=("queued",)):
            shutil.rmtree(self.store.job_dir(job_id) / "input", ignore_errors=True)
            return True
        for _ in range(20):  # a job just claimed is handed to its slot within moments
            job = self.store.get(job_id)
            if job is None or job["state"] != "running":
                return False
            for slot in self.slots:
                with slot.lock:
                    mine = slot.job_id == job_id
                if mine and self.store.finish(job_id, "cancelled", "cancelled by the client", only_from=("running",)):
                    slot.cancel(job_id)
                    for part in ("input", "out"):  # gone when we answer
                        shutil.rmtree(self.store.job_dir(job_id) / part, ignore_errors=True)
                    return True
            time.sleep(0.05)
        return False

    def mean_duration(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    def stop(self) -> None:
        self.stopping.set()
        self.notify()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                kill_process_tree(slot.proc.pid, timeout=2.0)

    @staticmethod
    def log(text: str) -> None:
        print(f"pancreas-dints serve: {printable(text)}", file=sys.stderr, flush=True)
