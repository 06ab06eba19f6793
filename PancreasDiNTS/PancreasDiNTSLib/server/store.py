"""The job store: one SQLite database in the data folder (``DATA/jobs.sqlite3``), durable across a ``kill -9``.

A job is recorded (state ``queued``) only after its upload is complete and synced to disk, in one committed
transaction, so an accepted upload is never lost. States: ``queued`` -> ``running`` -> ``done`` | ``failed`` |
``cancelled``. :meth:`JobStore.recover` runs at every start: a job that was ``running`` when the server
stopped is queued again once (``attempts``), then failed with a reason. Each job's files live in
``DATA/jobs/<id>/`` (``input/``, ``out/``); the id is server-made (uuid4 hex) and is the only name taken from it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.bridge.remote import TERMINAL  # the job states after which nothing changes (the API's)

MAX_ATTEMPTS = 2  # a job interrupted by a server stop runs again once, then fails with the reason
_ID = re.compile(r"^[0-9a-f]{32}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    kind TEXT NOT NULL,
    options TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker INTEGER,
    error TEXT,
    files TEXT,
    seen REAL
)"""
_FIELDS = ("seq", "id", "state", "created", "started", "finished", "kind", "options", "input_bytes", "input_sha256",
           "attempts", "worker", "error", "files", "seen")


def new_job_id() -> str:
    return uuid.uuid4().hex


def valid_job_id(text: str) -> bool:
    """A server-made job id (32 lower-case hex digits); anything else is never looked up."""
    return bool(_ID.match(text))


class JobStore:
    """Jobs in SQLite (WAL, synchronous=FULL); one connection, used under a lock from any thread."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.jobs_dir = data / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(data / "jobs.sqlite3"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
        if "seen" not in columns:  # a store made before 'seen' (the client's last request) was recorded
            self._db.execute("ALTER TABLE jobs ADD COLUMN seen REAL")

    def check(self) -> None:
        """sqlite3.DatabaseError unless the database is intact (SQLite's quick_check)."""
        with self._lock:
            result = self._db.execute("PRAGMA quick_check").fetchone()
        if not result or result[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")

    def job_dir(self, job_id: str) -> Path:
        assert valid_job_id(job_id)
        return self.jobs_dir / job_id

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(sql, args)
            rows = cur.fetchall()
        return [_decode(dict(zip(_FIELDS, r, strict=True))) for r in rows]

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def add(self, job_id: str, kind: str, options: dict[str, str], size: int, sha256: str) -> None:
        self._write("INSERT INTO jobs (id, state, created, kind, options, input_bytes, input_sha256) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?)", (job_id, time.time(), kind, json.dumps(options), size, sha256))

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not valid_job_id(job_id):
            return None
        rows = self._rows(f"SELECT {', '.join(_FIELDS)} FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def queued(self) -> list[str]:
        """Ids of the queued jobs, oldest first (the order they run in)."""
        return [r["id"] for r in self._rows(f"SELECT {', '.join(_FIELDS)} FROM jobs WHERE state = 'queued' ORDER BY seq")]

    def count(self, state: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0])

    def claim_next(self, worker: int) -> dict[str, Any] | None:
        """The oldest queued job, now ``running`` on ``worker`` (FIFO), or None."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    self._db.execute("UPDATE jobs SET state = 'running', started = ?, worker = ?, "
                                     "attempts = attempts + 1 WHERE id = ?", (time.time(), worker, row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row is not None else None

    def finish(self, job_id: str, state: str, error: str | None = None, files: list[dict[str, Any]] | None = None,
               only_from: tuple[str, ...] = ("queued", "running")) -> bool:
        """Move a job to a terminal state (only from ``only_from``); False when it was not there."""
        assert state in TERMINAL
        marks = ", ".join("?" for _ in only_from)
        return self._write(f"UPDATE jobs SET state = ?, finished = ?, error = ?, files = ? WHERE id = ? AND state IN "
                           f"({marks})", (state, time.time(), error, json.dumps(files or []), job_id, *only_from)) > 0

    def delete(self, job_id: str) -> None:
        self._write("DELETE FROM jobs WHERE id = ?", (job_id,))

    def touch(self, job_id: str) -> None:
        """A client asked about this job now (its results are still wanted)."""
        self._write("UPDATE jobs SET seen = ? WHERE id = ?", (time.time(), job_id))

    def expired(self, before: float, unclaimed_before: float | None = None) -> list[str]:
        """Finished jobs that ended before ``before`` (past the retention time), or that ended before
        ``unclaimed_before`` and no client has asked about since then (no one is left to fetch them)."""
        marks = ", ".join("?" for _ in TERMINAL)
        unclaimed = -1.0 if unclaimed_before is None else unclaimed_before
        return [r["id"] for r in self._rows(f"SELECT {', '.join(_FIELDS)} FROM jobs WHERE state IN ({marks}) AND "
                                            "(finished < ? OR (finished < ? AND COALESCE(seen, 0) < ?))",
                                            (*TERMINAL, before, unclaimed, unclaimed))]

    def ended(self) -> dict[str, str]:
        """id -> state of every job that ended (done, failed, cancelled)."""
        marks = ", ".join("?" for _ in TERMINAL)
        with self._lock:
            return dict(self._db.execute(f"SELECT id, state FROM jobs WHERE state IN ({marks})", TERMINAL).fetchall())

    def recover(self) -> dict[str, int]:
        """After a (possibly hard) stop: re-queue or fail the jobs that were running; returns the counts."""
        counts = {"requeued": 0, "failed": 0}
        for job in self._rows(f"SELECT {', '.join(_FIELDS)} FROM jobs WHERE state IN ('running', 'queued')"):
            has_input = (self.job_dir(job["id"]) / "input").is_dir()
            if job["state"] == "queued" and has_input:
                continue
            if has_input and job["attempts"] < MAX_ATTEMPTS:
                self._write("UPDATE jobs SET state = 'queued', started = NULL, worker = NULL WHERE id = ?",
                            (job["id"],))
                counts["requeued"] += 1
            else:
                why = ("the server stopped while this job ran, twice; not run again (send the image again)"
                       if has_input else "the stored upload is missing after a server restart; send the image again")
                self.finish(job["id"], "failed", why)
                counts["failed"] += 1
        return counts

    def known_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs").fetchall()}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["options"] = json.loads(row["options"] or "{}")
    row["files"] = json.loads(row["files"] or "[]")
    return row
