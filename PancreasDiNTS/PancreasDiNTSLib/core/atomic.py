"""Atomic writes: write to a temporary name in the destination folder, then rename; folders replaced as a whole
only when everything in them is the engine's; one OS-level lock (``filelock``) per output folder serialises the
short steps that decide and swap (planning and claiming case folders, batch tables, manifests, folder swaps)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from PancreasDiNTSLib.core.errors import OutputError, disk_full_error, is_disk_full, printable

LOCK_NAME = ".pancreas-dints.lock"  # in each folder the engine writes into (OUTDIR; the parent of atomic_dir's)
LOCK_TIMEOUT_S = 600.0  # the lock is held for seconds at most; waiting longer means a stuck process


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the OS-level lock of a folder the engine writes into (``folder/.pancreas-dints.lock``, made if
    needed and left in place: removing a lock file is unsafe while another process waits on it) for the
    block, so that one process at a time plans, claims, swaps or updates shared files there. The lock goes
    with the process (a killed run never leaves it taken). Not re-entrant: never nest it for one folder.
    OutputError (exit 5) when it cannot be taken."""
    path = Path(os.path.abspath(folder)) / LOCK_NAME
    try:
        lock = FileLock(path, timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout:
        raise OutputError(f"{printable(folder)}: another pancreas-dints process has held its lock "
                          f"({printable(path)}) for {LOCK_TIMEOUT_S:.0f} s; wait for it to finish or stop it") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise OutputError(f"{printable(path)}: cannot be created ({exc.strerror or exc}); check the permissions "
                          "of the output folder or choose another -o") from None
    try:
        yield
    finally:
        lock.release()


def _suffix_of(dest: Path) -> str:
    return "".join(dest.suffixes[-2:]) if dest.name.endswith((".nii.gz", ".seg.nrrd")) else dest.suffix


@contextlib.contextmanager
def staged(dest: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``dest`` (``.<name>.XXXX.part<suffix>``: it keeps the full suffix,
    e.g. ``.nii.gz``, so format-sniffing writers work); the caller moves it into place (:func:`publish`). It is
    removed whatever happens (error, Ctrl-C, SIGTERM) unless it was moved. A full disk (ENOSPC, EDQUOT, EFBIG)
    anywhere in the block becomes :class:`DiskFullError` (exit 5) naming ``dest``."""
    dest = Path(dest)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        ending = _suffix_of(dest) if suffix is None else suffix
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{ending}", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(dest, exc) from None
        raise
    finally:
        if tmp is not None and os.path.lexists(tmp):
            tmp.unlink()


def publish(tmp: Path, dest: Path) -> None:
    """Move the finished temporary file ``tmp`` onto ``dest`` (one rename; permissions as a new file's)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_path(dest: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds (see :func:`staged`)."""
    with staged(dest, suffix) as tmp:
        yield tmp
        publish(tmp, Path(dest))


FOLDER_MANIFEST = ".pancreas-dints-folder.json"  # what atomic_dir put into a folder (relative path -> size, sha256)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listing(root: Path) -> dict[str, dict[str, object]]:
    """Every entry under ``root`` except the manifest: relative path -> {"size", "sha256"} (files),
    {"kind": "dir"} (folders) or {"kind": "other"} (symlinks, special files)."""
    out: dict[str, dict[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel == FOLDER_MANIFEST:
                continue
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                out[rel] = {"kind": "other"}
            elif path.is_dir():
                out[rel] = {"kind": "dir"}
            else:
                out[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def foreign_files(folder: Path) -> list[str]:
    """Entries in ``folder`` that atomic_dir did not write there (or that changed since): files, and folders
    (``name/``) it did not make (a folder that holds a recorded file counts as made: manifests before 0.2 did
    not list folders); [] for an empty folder."""
    listing = _listing(folder)
    try:
        recorded = json.loads((folder / FOLDER_MANIFEST).read_text(encoding="utf-8")).get("files", {})
        recorded = recorded if isinstance(recorded, dict) else {}
    except (OSError, ValueError, AttributeError):
        recorded = {}

    def ours(rel: str, entry: dict[str, object]) -> bool:
        if entry.get("kind") == "dir":
            return rel in recorded or any(r.startswith(rel + "/") for r in recorded)
        return recorded.get(rel) == entry

    return sorted(rel + ("/" if entry.get("kind") == "dir" else "") for rel, entry in listing.items()
                  if not ours(rel, entry))


def check_location(dest: Path) -> Path:
    """``dest`` as an absolute path; OutputError (exit 5) when it cannot be a folder the engine replaces as a
    whole: the current folder or one holding it (``-o .``), the file-system root, or a path through a file."""
    dest = Path(os.path.abspath(dest))
    cwd = Path(os.path.abspath(os.getcwd()))
    if dest == cwd or dest in cwd.parents or dest.parent == dest:
        raise OutputError(f"{printable(dest)}: is the current folder (or holds it), and the output folder is "
                          "replaced as a whole when it is done; give a new folder instead, e.g. -o ./out")
    for parent in [dest, *dest.parents]:
        if os.path.lexists(parent):
            if parent != dest and not parent.is_dir():
                raise OutputError(f"{printable(parent)}: is a file, not a folder, so {printable(dest)} cannot be "
                                  "made; choose another output folder")
            break
    return dest


def check_replaceable(dest: Path) -> None:
    """OutputError unless ``dest`` can be made here (:func:`check_location`) and is absent, an empty folder, or
    a folder holding exactly what pancreas-dints wrote there: a folder is replaced as a whole only when nothing
    in it belongs to anyone else. Checked under the parent's lock (when the parent exists), so a concurrent
    swap is never seen half done."""
    dest = check_location(dest)
    if not os.path.isdir(dest.parent):
        return _check_replaceable(dest)
    with folder_lock(dest.parent):
        _check_replaceable(dest)


def _check_replaceable(dest: Path) -> None:
    if not os.path.lexists(dest):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise OutputError(f"{printable(dest)}: exists and is not a folder; choose a new folder")
    foreign = foreign_files(dest)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"{printable(dest)}: holds files pancreas-dints did not write ({printable(foreign[0])}"
                          f"{more}); it is left as it is: move them away or choose a new folder")


def _temporary_folder(dest: Path, suffix: str) -> Path:
    """An empty hidden folder next to ``dest`` (OutputError / DiskFullError, one line, when it cannot be made)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent))
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(dest, exc) from None
        raise OutputError(f"{printable(dest)}: cannot be made ({exc.strerror or exc}); check the permissions of "
                          f"{printable(dest.parent)} or choose another output folder") from None


def _swap_in(tmp: Path, dest: Path) -> Path | None:
    """Under the lock of ``dest``: check again, then rename ``tmp`` to ``dest``; returns the old folder moved
    aside (to delete), or None."""
    with folder_lock(dest.parent):
        if not os.path.lexists(dest):
            os.replace(tmp, dest)
            return None
        _check_replaceable(dest)
        aside = _temporary_folder(dest, ".old")
        try:
            os.replace(dest, aside)  # onto the empty folder just made: a unique name, never a user's folder
        except OSError:
            aside.rmdir()
            raise
        try:
            os.replace(tmp, dest)
        except OSError:
            os.replace(aside, dest)  # the earlier folder goes back
            raise
        return aside


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; it becomes ``dest`` only if the block succeeds.

    An existing ``dest`` is replaced only when :func:`check_replaceable` allows it (checked before the block and
    again, under the folder's lock, right before the swap), so a folder holding anybody else's files or folders
    is never deleted, and concurrent runs replace it one after the other. The new folder records its files and
    folders in a manifest (``FOLDER_MANIFEST``) so that a later run may replace it.
    """
    dest = check_location(dest)
    check_replaceable(dest)
    tmp = _temporary_folder(dest, ".part")
    try:
        yield tmp
        (tmp / FOLDER_MANIFEST).write_text(json.dumps({"files": _listing(tmp)}, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        aside = _swap_in(tmp, dest)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(dest: Path, text: str) -> None:
    """``text`` as UTF-8, atomically; a file name's undecodable bytes (surrogate escapes) are written back as
    the bytes they were."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
