"""Atomic writes: write to a temporary name in the destination folder, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PancreasDiNTSLib.core.errors import OutputError, disk_full_error, is_disk_full, printable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds.

    The temporary name keeps the destination's full suffix (e.g. ``.nii.gz``) so format-sniffing writers work.
    The temporary file is removed whatever happens (error, Ctrl-C, SIGTERM). A full disk (ENOSPC, EDQUOT, EFBIG)
    anywhere in the block becomes :class:`DiskFullError` (exit 5) naming ``dest``.
    """
    dest = Path(dest)
    if suffix is None:
        suffix = "".join(dest.suffixes[-2:]) if dest.name.endswith((".nii.gz", ".seg.nrrd")) else dest.suffix
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{suffix}", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(dest, exc) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


FOLDER_MANIFEST = ".pancreas-dints-folder.json"  # what atomic_dir put into a folder (relative path -> size, sha256)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listing(root: Path) -> dict[str, dict[str, object]]:
    """Every entry under ``root`` except the manifest: relative path -> {"size", "sha256"} (files) or
    {"kind": "other"} (symlinks, special files); folders themselves are not listed."""
    out: dict[str, dict[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel == FOLDER_MANIFEST:
                continue
            if path.is_symlink() or not path.is_file():
                out[rel] = {"kind": "other"}
            else:
                out[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def foreign_files(folder: Path) -> list[str]:
    """Files in ``folder`` that atomic_dir did not write there (or that changed since); [] for an empty folder."""
    listing = _listing(folder)
    try:
        recorded = json.loads((folder / FOLDER_MANIFEST).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    return sorted(rel for rel, entry in listing.items() if recorded.get(rel) != entry)


def check_replaceable(dest: Path) -> None:
    """OutputError unless ``dest`` is absent, an empty folder, or a folder holding exactly what pancreas-dints
    wrote there: a folder is replaced as a whole only when nothing in it belongs to anyone else."""
    if not os.path.lexists(dest):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise OutputError(f"{printable(dest)}: exists and is not a folder; choose a new folder")
    foreign = foreign_files(dest)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"{printable(dest)}: holds files pancreas-dints did not write ({printable(foreign[0])}"
                          f"{more}); it is left as it is: move them away or choose a new folder")


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; it becomes ``dest`` only if the block succeeds.

    An existing ``dest`` is replaced only when :func:`check_replaceable` allows it (checked before the block and
    again before the swap), so a folder holding anybody else's files is never deleted. The new folder records
    its files in a manifest (``FOLDER_MANIFEST``) so that a later run may replace it.
    """
    dest = Path(dest)
    check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        yield tmp
        (tmp / FOLDER_MANIFEST).write_text(json.dumps({"files": _listing(tmp)}, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.lexists(dest):
            check_replaceable(dest)
            aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, aside)  # onto the empty folder just made: a unique name, never a user's folder
            os.replace(tmp, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
