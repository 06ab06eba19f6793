"""The node's spool and records: ``DATA/node/spool/<study id>/`` and ``DATA/node/node.sqlite3``.

An instance is written to a temporary name in its study's folder, synced, renamed to a server-made name
(``<uuid>.dcm``), the folder synced, and only then recorded (one committed row, synchronous=FULL) and
acknowledged: after the sender got "success", a ``kill -9`` loses nothing. A file that reached its name but not
its row (a stop between the two) is indexed again at the next start from its own header. No string of a sender
becomes a path; UIDs are checked before they are stored.

A node study is one arrival of a study: states ``receiving`` -> ``selected`` -> ``segmenting`` -> ``sending``
-> ``done`` | ``skipped`` | ``failed``, with the time of each step. Sends are recorded per destination and
instance (``pending`` -> ``sent`` | ``refused``) so that they survive restarts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

STUDY_FINAL_STATES = ("done", "skipped", "failed")  # a study's states after which the node is done with it
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS studies (
        id TEXT PRIMARY KEY, seq INTEGER, study_uid TEXT NOT NULL, source TEXT NOT NULL, calling_ae TEXT,
        state TEXT NOT NULL, created REAL NOT NULL, last_instance REAL, selected REAL, segmenting REAL,
        sending REAL, finished REAL, job_id TEXT, series_uid TEXT, reason TEXT, decisions TEXT)""",
    """CREATE TABLE IF NOT EXISTS instances (
        study TEXT NOT NULL, sop_uid TEXT NOT NULL, series_uid TEXT NOT NULL, file TEXT NOT NULL,
        received REAL NOT NULL, PRIMARY KEY (study, sop_uid))""",
    """CREATE TABLE IF NOT EXISTS sends (
        study TEXT NOT NULL, destination TEXT NOT NULL, sop_uid TEXT NOT NULL, file TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
        status TEXT, PRIMARY KEY (study, destination, sop_uid))""",
)
STUDY_FIELDS = ("id", "seq", "study_uid", "source", "calling_ae", "state", "created", "last_instance", "selected",
                "segmenting", "sending", "finished", "job_id", "series_uid", "reason", "decisions")
SEND_FIELDS = ("study", "destination", "sop_uid", "file", "state", "attempts", "next_try", "status")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(folder: Path, data: bytes | memoryview) -> Path:
    """``data`` as ``folder/<uuid>.dcm``: written, synced, renamed, the folder synced; the new path."""
    name = uuid.uuid4().hex
    tmp, dest = folder / f".{name}.part", folder / f"{name}.dcm"
    with open(tmp, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    fsync_dir(folder)
    return dest


class StudyTooLarge(Exception):
    """A study already holds the most instances the node takes (``max_instances``)."""


class NodeStore:
    """Studies, instances and sends in SQLite (WAL, synchronous=FULL); one connection under a lock."""

    def __init__(self, data: Path, readonly: bool = False) -> None:
        self.root = data / "node"
        self.spool = self.root / "spool"
        self._lock = threading.RLock()
        if readonly:  # a listing while the server runs (or after): nothing is created or changed
            self._db = sqlite3.connect(f"{(self.root / 'node.sqlite3').as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False, isolation_level=None)
            return
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(self.root / "node.sqlite3"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for sql in _SCHEMA:
            self._db.execute(sql)

    # ------------------------------------------------------------------------------------------- studies
    def folder(self, study_id: str) -> Path:
        assert re.fullmatch(r"[0-9a-f]{32}", study_id)
        return self.spool / study_id

    def open_study(self, study_uid: str, source: str, calling_ae: str) -> str:
        """The study being received under this Study Instance UID (from this source), or a new one."""
        with self._lock:
            row = self._db.execute("SELECT id FROM studies WHERE study_uid = ? AND source = ? AND state = 'receiving'",
                                   (study_uid, source)).fetchone()
            if row is not None:
                return str(row[0])
            study_id = uuid.uuid4().hex
            self.folder(study_id).mkdir(mode=0o700)
            fsync_dir(self.spool)
            seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM studies").fetchone()[0])
            self._db.execute("INSERT INTO studies (id, seq, study_uid, source, calling_ae, state, created) VALUES "
                             "(?, ?, ?, ?, ?, 'receiving', ?)", (study_id, seq, study_uid, source, calling_ae,
                                                                 time.time()))
            return study_id

    def close_receiving(self, study_id: str, cutoff: float, **values: Any) -> bool:
        """Move a study from ``receiving`` to ``selected`` if its last instance came before ``cutoff`` (atomic with
        the arrival of instances)."""
        with self._lock:
            return self._db.execute("UPDATE studies SET state = 'selected', selected = ? WHERE id = ? AND state = "
                                    "'receiving' AND COALESCE(last_instance, created) <= ?",
                                    (time.time(), study_id, cutoff)).rowcount > 0

    def study(self, study_id: str) -> dict[str, Any] | None:
        rows = self.studies("id = ?", (study_id,))
        return rows[0] if rows else None

    def studies(self, where: str = "1", args: tuple[Any, ...] = (), limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(STUDY_FIELDS)} FROM studies WHERE {where} ORDER BY seq DESC "
                                    "LIMIT ?", (*args, limit)).fetchall()
        out = [dict(zip(STUDY_FIELDS, r, strict=True)) for r in rows]
        for row in out:
            row["decisions"] = json.loads(row["decisions"] or "[]")
        return out

    def update(self, study_id: str, only_from: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set columns of a study (``decisions`` as JSON); with ``only_from``, only while in one of those states."""
        if "decisions" in values:
            values["decisions"] = json.dumps(values["decisions"])
        sets = ", ".join(f"{k} = ?" for k in values)
        sql, args = f"UPDATE studies SET {sets} WHERE id = ?", [*values.values(), study_id]
        if only_from:
            sql += f" AND state IN ({', '.join('?' for _ in only_from)})"
            args += list(only_from)
        with self._lock:
            return self._db.execute(sql, args).rowcount > 0

    # ----------------------------------------------------------------------------------------- instances
    def add_instance(self, study_uid: str, source: str, calling_ae: str, sop_uid: str, series_uid: str,
                     data: bytes | memoryview, max_instances: int = 1 << 30) -> str | None:
        """Store one instance durably and record it in the study being received; its node study id, or None
        when that study already holds this SOP instance (a repeated send: acknowledged, not stored twice).
        StudyTooLarge when the study already holds ``max_instances``."""
        study_id = self.open_study(study_uid, source, calling_ae)
        with self._lock:
            if self._db.execute("SELECT 1 FROM instances WHERE study = ? AND sop_uid = ?",
                                (study_id, sop_uid)).fetchone():
                return None
            held = int(self._db.execute("SELECT COUNT(*) FROM instances WHERE study = ?", (study_id,)).fetchone()[0])
        if held >= max_instances:
            raise StudyTooLarge(f"study {study_uid} already holds {held} instances, the most this node takes "
                                "(max_instances)")
        path = write_durably(self.folder(study_id), data)
        with self._lock:
            state = self._db.execute("SELECT state FROM studies WHERE id = ?", (study_id,)).fetchone()[0]
            if state != "receiving":  # decided while this instance was being written: it starts a new arrival
                study_id = self.open_study(study_uid, source, calling_ae)
                os.replace(path, self.folder(study_id) / path.name)
                path = self.folder(study_id) / path.name
                fsync_dir(path.parent)
            now = time.time()
            added = self._db.execute("INSERT OR IGNORE INTO instances (study, sop_uid, series_uid, file, received) "
                                     "VALUES (?, ?, ?, ?, ?)", (study_id, sop_uid, series_uid, path.name, now)).rowcount
            if not added:
                path.unlink()
                return None
            self._db.execute("UPDATE studies SET last_instance = ? WHERE id = ?", (now, study_id))
        return study_id

    def instances(self, study_id: str, series_uid: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT sop_uid, series_uid, file, received FROM instances WHERE study = ?"
        args: tuple[Any, ...] = (study_id,)
        if series_uid is not None:
            sql, args = sql + " AND series_uid = ?", (study_id, series_uid)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY rowid", args).fetchall()
        return [dict(zip(("sop_uid", "series_uid", "file", "received"), r, strict=True)) for r in rows]

    def reindex(self, read_uids: Any) -> int:
        """Files of receiving studies that reached their name but not their row (a hard stop between the two):
        recorded from their own header (``read_uids(path) -> (sop, series)``); leftovers of unfinished writes
        removed. Returns how many were recorded."""
        count = 0
        for study in self.studies("state = 'receiving'"):
            folder = self.folder(study["id"])
            known = {i["file"] for i in self.instances(study["id"])}
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.name.endswith(".part"):
                    path.unlink()
                elif path.suffix == ".dcm" and path.name not in known:
                    uids = read_uids(path)
                    if uids is None:
                        continue
                    with self._lock:
                        self._db.execute("INSERT OR IGNORE INTO instances (study, sop_uid, series_uid, file, received) "
                                         "VALUES (?, ?, ?, ?, ?)", (study["id"], *uids, path.name, path.stat().st_mtime))
                    count += 1
        return count

    def clean_incoming(self) -> None:
        """Remove STOW-RS bodies left by a stop while they were being received (never acknowledged)."""
        shutil.rmtree(self.root / "incoming", ignore_errors=True)

    def remove_spool(self, study_id: str) -> None:
        shutil.rmtree(self.folder(study_id), ignore_errors=True)

    # --------------------------------------------------------------------------------------------- sends
    def add_sends(self, study_id: str, rows: list[tuple[str, str, str]]) -> None:
        """Record (destination, sop_uid, file) to send, once each (a second call after a restart adds nothing)."""
        with self._lock:
            for dest, sop, file in rows:
                self._db.execute("INSERT OR IGNORE INTO sends (study, destination, sop_uid, file, state) VALUES "
                                 "(?, ?, ?, ?, 'pending')", (study_id, dest, sop, file))

    def sends(self, where: str = "1", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(SEND_FIELDS)} FROM sends WHERE {where} ORDER BY rowid",
                                    args).fetchall()
        return [dict(zip(SEND_FIELDS, r, strict=True)) for r in rows]

    def mark_send(self, study_id: str, dest: str, sop_uid: str, state: str, status: str | None,
                  next_try: float = 0.0) -> None:
        with self._lock:
            self._db.execute("UPDATE sends SET state = ?, status = ?, attempts = attempts + 1, next_try = ? WHERE "
                             "study = ? AND destination = ? AND sop_uid = ?",
                             (state, status, next_try, study_id, dest, sop_uid))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
