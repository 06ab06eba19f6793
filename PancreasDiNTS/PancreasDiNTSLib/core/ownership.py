"""Which files in a case folder the engine wrote: the manifest, input identity, owned atomic writes.

Every case folder ``OUTDIR/<case>/`` carries ``.pancreas-dints.json``::

    {"schema": "pancreas-dints.case/1", "written_by": "pancreas-dints 0.1.0", "case": "ct",
     "input": {"path": "/data/A/ct.nii.gz", "kind": "file", "size": 123, "mtime_ns": 1700000000000000000},
     "files": {"labels.nii.gz": {"size": 8123, "sha256": "..."}, "report.json": {...}}}

A file is the engine's only when the manifest lists it and its bytes match the recorded size and sha256: every
output is written to a hidden staging name (``.labels.nii.gz.XXXX.part.nii.gz``), its digest is recorded in the
manifest (with the digest of the file it replaces, until the rename is done) and only then is it renamed into
place, so at every instant, a killed run included, each file in the folder is proven ours or not ours. The check
is made again under the OUTDIR lock (core.atomic.folder_lock) right before each replace or delete: a file a user
edited or dropped in meanwhile is kept and that output fails with one line. Entries marked ``pending`` (written
by engines before 0.2) prove nothing. Everything else in the folder belongs to the user and is never touched.

A run's finish deletes only the engine's own output names (core.paths.OUTPUT_NAMES) that it did not write this
time: a name the manifest lists but no run writes (a hand-edited manifest) is never deleted. A reviewer's files
(core.paths.REVIEW_NAMES) are written only by a folder opened ``for_review`` and are never deleted by any run.
Torch-free (the Slicer bridge may read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from PancreasDiNTSLib import __version__
from PancreasDiNTSLib.core.atomic import folder_lock, publish, staged, write_text_atomic
from PancreasDiNTSLib.core.errors import OutputError, disk_full_error, is_disk_full, printable
from PancreasDiNTSLib.core.paths import OUTPUT_NAMES, REVIEW_NAMES

MANIFEST_NAME = ".pancreas-dints.json"
SCHEMA = "pancreas-dints.case/1"
MAX_MANIFEST_BYTES = 1 << 20
RUN_OUTPUTS = frozenset(OUTPUT_NAMES.values())  # what a run may delete when it did not write it this time
PERSON_MADE = frozenset(REVIEW_NAMES.values())  # what only a review save writes, and no run deletes


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


def _proven(member: Path, entry: Any) -> bool:
    """``member`` is a regular file whose bytes match ``entry`` ({"size", "sha256"}, or its ``replacing``)."""
    if not isinstance(entry, dict) or member.is_symlink() or not member.is_file():
        return False
    wanted = [{k: e.get(k) for k in ("size", "sha256")} for e in (entry, entry.get("replacing"))
              if isinstance(e, dict) and isinstance(e.get("sha256"), str)]
    try:
        size = member.stat().st_size
        return any(w["size"] == size for w in wanted) and file_digest(member) in wanted
    except OSError:
        return False


class CaseFolder:
    """One case folder and its manifest; all writes into it go through :meth:`write`.

    Changes (claim, write, finish) hold the lock of the folder's parent (OUTDIR) for their short decisive step
    and merge with the manifest on disk, so concurrent runs of the same input keep each other's records."""

    def __init__(self, path: Path, identity: dict[str, Any] | None = None, case: str = "",
                 for_review: bool = False) -> None:
        self.path = Path(path)
        self.for_review = for_review
        self.identity = identity
        self.case = case or self.path.name
        self.manifest = read_manifest(self.path)
        self.files: dict[str, dict[str, Any]] = dict(self.manifest["files"]) if self.manifest else {}

    # -- questions
    def same_input(self) -> bool:
        """The manifest names this folder's input (same identity)."""
        return self.manifest is not None and self.identity is not None and self.manifest.get("input") == self.identity

    def owns(self, name: str) -> bool:
        """The engine may replace or delete ``name``: absent, or listed and its bytes proven (digest)."""
        member = _safe_member(self.path, name)
        if member is None:
            return False
        return not os.path.lexists(member) or _proven(member, self.files.get(name))

    def has(self, names: list[str]) -> bool:
        """Every name is listed as written (no replace under way) and present with its recorded size."""
        for name in names:
            entry, member = self.files.get(name), _safe_member(self.path, name)
            if not isinstance(entry, dict) or "sha256" not in entry or "replacing" in entry or member is None:
                return False
            if not member.is_file() or member.stat().st_size != entry.get("size"):
                return False
        return True

    def conflicts(self, names: list[str]) -> list[str]:
        """Names the engine wants to write that hold a file it did not write (or that changed since)."""
        return [n for n in names if not self.owns(n)]

    # -- changes
    def claim(self) -> None:
        """Make the folder and its manifest (this input, no files yet), so that other runs see it taken. Called
        under the OUTDIR lock by io.placement.claim_cases."""
        self._mkdir()
        self._save()

    def begin(self, names: list[str]) -> None:
        """Make the folder if needed and record this input in its manifest, before any output is written."""
        self._mkdir()
        with self._locked():
            self._save()

    def write(self, name: str, writer: Callable[[Path], Any]) -> None:
        """``writer(staging)`` writes the file under a hidden staging name; then, under the lock, the current
        file is checked again (absent or proven ours), the new digest is recorded and the file is renamed into
        place. A file that is not (or no longer) the engine's is kept: OutputError, one line."""
        dest = _safe_member(self.path, name)
        if name in PERSON_MADE and not self.for_review:
            raise OutputError(f"{printable(self.path / name)}: a reviewer's file; only a review save writes it")
        if dest is None or not self.owns(name):
            raise self._not_ours(name)
        try:
            with staged(dest) as tmp:
                writer(tmp)
                digest = file_digest(tmp)
                with self._locked():
                    if not self.owns(name):
                        raise self._not_ours(name, meanwhile=True)
                    old = file_digest(dest) if os.path.lexists(dest) else None  # the bytes being replaced
                    self.files[name] = dict(digest, replacing=old) if old else digest
                    self._save()  # a kill from here on leaves a file matching one of the two recorded digests
                    publish(tmp, dest)
                    self.files[name] = digest
                    self._save()
        except OSError as exc:
            raise self._error(dest, exc) from None

    def finish(self, keep: list[str]) -> None:
        """Delete the engine's own output files (RUN_OUTPUTS) that this run did not write (stale; proven right
        before the delete), then save the manifest. Other listed names (a reviewer's files) stay, listed."""
        with self._locked():
            for name in [n for n in self.files if n not in keep and n in RUN_OUTPUTS]:
                member = _safe_member(self.path, name)
                if member is not None and self.owns(name):
                    try:
                        if os.path.lexists(member):
                            member.unlink()
                    except OSError:
                        continue  # an undeletable stale file stays listed
                self.files.pop(name, None)
            self._save()

    # -- helpers
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The OUTDIR lock, with the manifest on disk merged in (another run of this input may have written)."""
        with folder_lock(self.path.parent):
            disk = read_manifest(self.path)
            if disk is not None and (self.identity is None or disk.get("input") == self.identity):
                for other, entry in disk["files"].items():
                    if isinstance(entry, dict) and entry != self.files.get(other):
                        self.files[other] = entry
            yield

    def _mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(self.path, exc) from None

    def _not_ours(self, name: str, meanwhile: bool = False) -> OutputError:
        when = "; it was changed or added while this run worked and is kept" if meanwhile else " (or changed since)"
        return OutputError(f"{printable(self.path / name)}: not written by pancreas-dints{when}; move it away to "
                           "let the engine write there")

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

