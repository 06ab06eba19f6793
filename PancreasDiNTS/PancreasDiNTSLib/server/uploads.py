"""Receiving an upload: bounded, streamed to a server-made name, synced; a DICOM zip unpacked without its names.

No string of the client becomes a path: the stored file is ``input/input.<kind>`` (``kind`` from a fixed list,
bridge.remote.UPLOAD_KINDS) and a zip's members become ``input/dicom/000000.dcm``, ``000001.dcm``... in member
order (their names, ``../`` or absolute ones included, are never used; links are stored as the plain bytes
they hold). Every limit is checked before the bytes it concerns are written.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from PancreasDiNTSLib.bridge.remote import UPLOAD_KINDS

INPUT_NAMES = {kind: ("dicom" if kind == "zip" else f"input.{kind}") for kind in UPLOAD_KINDS}
ZIP_NAME = "upload.zip"
MAX_MEMBERS = 5000  # slices of one series
_CHUNK = 1 << 20


class UploadRefused(Exception):
    """An upload the server will not keep: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def input_path(job_dir: Path, kind: str) -> Path:
    """Where a job's input lives (a file, or the folder of an unpacked series)."""
    return job_dir / "input" / INPUT_NAMES[kind]


def stored_upload(job_dir: Path, kind: str) -> Path:
    """The file the body is streamed into (the image itself, or the zip before it is unpacked)."""
    return job_dir / "input" / (ZIP_NAME if kind == "zip" else INPUT_NAMES[kind])


async def receive(chunks: AsyncIterator[bytes], dest: Path, declared: int) -> tuple[int, str]:
    """Stream the body into ``dest`` (new file, synced): (bytes, sha256); more or fewer bytes than declared
    refuse the upload (the caller removes what was written)."""
    h, size = hashlib.sha256(), 0
    with open(dest, "xb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > declared:
                raise UploadRefused(400, f"the body is longer than its Content-Length ({declared} bytes); refused")
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if size != declared:
        raise UploadRefused(400, f"upload incomplete: {size} of {declared} bytes arrived; send it again")
    return size, h.hexdigest()


def check_series_zip(zip_path: Path, free: int, max_bytes: int) -> int:
    """The unpacked size of a series zip (from its directory), refused when too large or not a zip."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadRefused(400, f"the upload is not a readable zip ({str(exc)[:100] or 'bad zip'}); send a zip of "
                                 "the DICOM files of one series") from None
    total = sum(m.file_size for m in members)
    if not members:
        raise UploadRefused(400, "the zip holds no files; send a zip of the DICOM files of one series")
    if len(members) > MAX_MEMBERS:
        raise UploadRefused(413, f"the zip holds {len(members)} files, more than {MAX_MEMBERS}; send one series")
    if total > max_bytes:
        raise UploadRefused(413, f"the zip unpacks to {total >> 20} MiB, more than the server's limit of "
                                 f"{max_bytes >> 20} MiB")
    if total > free:
        raise UploadRefused(507, "not enough free disk space on the server to unpack the series; try again later")
    return total


def unpack_series(zip_path: Path, folder: Path, max_bytes: int) -> int:
    """Every file member of the zip as ``folder/NNNNNN.dcm`` (bytes counted against ``max_bytes`` while
    copying: a zip's directory may lie); returns the number of files."""
    folder.mkdir()
    written = 0
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for i, member in enumerate(members):
                with zf.open(member) as src, open(folder / f"{i:06d}.dcm", "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UploadRefused(413, f"the zip unpacks to more than {max_bytes >> 20} MiB; refused")
                        out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise UploadRefused(400, f"the upload is not a readable zip ({str(exc)[:100] or type(exc).__name__}); send "
                                 "a zip of the DICOM files of one series (not encrypted)") from None
    return len(members)
