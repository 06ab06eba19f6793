"""Which files in a case folder the engine wrote: the manifest, input identity, owned atomic writes.

Every case folder ``OUTDIR/<case>/`` carries ``.pancreas-dints.json``::

    {"schema": "pancreas-dints.case/1", "written_by": "pancreas-dints 0.1.0", "case": "ct",
     "input": {"path": "/data/A/ct.nii.gz", "kind": "file", "size": 123, "mtime_ns": 1700000000000000000},
     "files": {"labels.nii.gz": {"size": 8123, "sha256": "..."}, "report.json": {...},
               "segmentation.seg.nrrd": {"pending": true}}}

The engine replaces or deletes a file only when the manifest lists it and its bytes still match the recorded
size and sha256 (``pending``: about to be written by a run that did not finish; it counts as the engine's).
Everything else in the folder belongs to the user and is never touched. Torch-free (the Slicer bridge may read it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import write_text_atomic
from PancreasDiNTSLib.core.errors import OutputError, disk_full_error, is_disk_full, printable

MANIFEST_NAME = ".pancreas-dints.json"
SCHEMA = "pancreas-dints.case/1"
MAX_MANIFEST_BYTES = 1 << 20


def file_digest(path: Path) -> dict[str, Any]:
    """{"size", "sha256"} of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def input_identity(path: Path) -> dict[str, Any]:
    """What makes an input the same input: resolved path + size + mtime_ns for a file; for a folder (DICOM
    series) the resolved path + a sha256 of its listing (name, size, mtime_ns of every file directly inside)."""
    real = Path(os.path.realpath(path))
    st = real.stat()
    if not stat.S_ISDIR(st.st_mode):
        return {"path": str(real), "kind": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    count = 0
    for entry in sorted(os.scandir(real), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=True):
            est = entry.stat(follow_symlinks=True)
            h.update(f"{entry.name}\0{est.st_size}\0{est.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            count += 1
    return {"path": str(real), "kind": "folder", "files": count, "listing_sha256": h.hexdigest()}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None (absent, unreadable, too large, not ours)."""
    path = folder / MANIFEST_NAME
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("files"), dict):
        return None
    return data


def _safe_member(folder: Path, name: str) -> Path | None:
    """``folder/name`` for a plain file name from a manifest (no separators, not hidden-special), else None."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    return folder / name


class CaseFolder:
    """One case folder and its manifest; all writes into it go through :meth:`write`."""

    def __init__(self, path: Path, identity: dict[str, Any] | None = None, case: str = "") -> None:
        self.path = Path(path)
        self.identity = identity
        self.case = case or self.path.name
        self.manifest = read_manifest(self.path)
        self.files: dict[str, dict[str, Any]] = dict(self.manifest["files"]) if self.manifest else {}

    # -- questions
    def same_input(self) -> bool:
        """The manifest names this folder's input (same identity)."""
        return self.manifest is not None and self.identity is not None and self.manifest.get("input") == self.identity

    def owns(self, name: str) -> bool:
        """The engine may replace or delete ``name``: absent, or listed and unchanged (or pending)."""
        member = _safe_member(self.path, name)
        if member is None:
            return False
        if not os.path.lexists(member):
            return True
        entry = self.files.get(name)
        if not isinstance(entry, dict) or member.is_symlink() or not member.is_file():
            return False
        if entry.get("pending"):
            return True
        try:
            return entry.get("size") == member.stat().st_size and entry == file_digest(member)
        except OSError:
            return False

    def has(self, names: list[str]) -> bool:
        """Every name is listed as written (not pending) and present with its recorded size."""
        for name in names:
            entry, member = self.files.get(name), _safe_member(self.path, name)
            if not isinstance(entry, dict) or entry.get("pending") or member is None or not member.is_file():
                return False
            if member.stat().st_size != entry.get("size"):
                return False
        return True

    def conflicts(self, names: list[str]) -> list[str]:
        """Names the engine wants to write that hold a file it did not write (or that changed since)."""
        return [n for n in names if not self.owns(n)]

    # -- changes
    def begin(self, names: list[str]) -> None:
        """Create the folder if needed and record ``names`` as pending before any of them is written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(self.path, exc) from None
        for name in names:
            self.files[name] = {"pending": True}
        self._save()

    def write(self, name: str, writer: Callable[[Path], Any]) -> None:
        """``writer(dest)`` (which writes atomically) for an owned name, then record the file's digest."""
        dest = _safe_member(self.path, name)
        if dest is None or not self.owns(name):
            raise OutputError(f"{printable(self.path / name)}: not written by pancreas-dints (or changed since); "
                              "move it away to let the engine write there")
        self.files[name] = {"pending": True}
        try:
            writer(dest)
            self.files[name] = file_digest(dest)
        except OSError as exc:
            raise self._error(dest, exc) from None

    def finish(self, keep: list[str]) -> None:
        """Delete the engine's own files that this run did not write (stale), then save the manifest."""
        for name in [n for n in self.files if n not in keep]:
            member = _safe_member(self.path, name)
            if member is not None and self.owns(name):
                try:
                    if os.path.lexists(member):
                        member.unlink()
                except OSError:
                    continue  # an undeletable stale file stays listed
            self.files.pop(name, None)
        self._save()

    def _save(self) -> None:
        data = {"schema": SCHEMA, "written_by": f"pancreas-dints {__version__}", "case": self.case,
                "input": self.identity, "files": self.files}
        try:
            write_text_atomic(self.path / MANIFEST_NAME, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError as exc:
            raise self._error(self.path / MANIFEST_NAME, exc) from None

    @staticmethod
    def _error(path: Path, exc: OSError) -> OutputError:
        if isinstance(exc, OutputError):
            return exc
        if is_disk_full(exc):
            return disk_full_error(path, exc)
        return OutputError(f"{printable(path)}: cannot be written ({exc.strerror or exc}); check the permissions "
                           "of the output folder or choose another -o")


def probe_writable(folder: Path, create: bool = False) -> None:
    """OutputError (or DiskFullError when the disk is full; both exit 5) unless a file can be made in ``folder``
    (created first with ``create``); the probe file is removed again."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(folder, exc) from None
        raise OutputError(f"{printable(folder)}: output folder is not writable ({exc.strerror or exc}); check "
                          "its permissions or choose another -o") from None


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system holding ``folder`` (or its nearest existing parent); None if unknown."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None

