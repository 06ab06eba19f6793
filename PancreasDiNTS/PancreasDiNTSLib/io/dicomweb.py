"""DICOMweb input: a study or one series fetched from a DICOMweb server (QIDO-RS lists the series, WADO-RS
brings the instances; dicomweb-client), authenticated from a credentials file (``bearer TOKEN`` or
``basic USER:PASSWORD``, never on a command line). Used by ``segment`` for an input
``https://HOST/ROOT/studies/UID[/series/UID]`` (``--dicomweb-auth FILE``) and by the server's DICOM node.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import InputError, UsageError, printable, require_modules
from PancreasDiNTSLib.core.paths import MODEL_HOME_ENV

MAX_AUTH_BYTES = 4096
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_TEXT = r"[0-9]{1,64}(?:\.[0-9]{1,64}){0,31}"  # digits and single dots: never "." or ".." (a folder name)
_INPUT = re.compile(rf"^(https?://[^?#]+?)/studies/({_UID_TEXT})(?:/series/({_UID_TEXT}))?/?$")


def valid_uid(text: Any) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters."""
    return isinstance(text, str) and 0 < len(text) <= 64 and bool(_UID.match(text))


def auth_headers(path: Path | None) -> dict[str, str]:
    """The Authorization header from a credentials file: ``bearer TOKEN`` or ``basic USER:PASSWORD``."""
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_AUTH_BYTES:
            raise UsageError(f"{printable(path)}: too large for a credentials file")
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{printable(path)}: credentials file unreadable ({printable(exc)[:80]})") from None
    scheme, _, value = text.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return {"Authorization": f"Bearer {value.strip()}"}
    if scheme.lower() == "basic" and ":" in value:
        return {"Authorization": "Basic " + base64.b64encode(value.strip().encode()).decode("ascii")}
    raise UsageError(f"{printable(path)}: write 'bearer TOKEN' or 'basic USER:PASSWORD' in a credentials file")


def dicomweb_client(url: str, auth_file: Path | None, timeout: float = 60.0) -> Any:
    """A dicomweb-client for this root, authenticated from the file."""
    from dicomweb_client.api import DICOMwebClient

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{printable(url)[:80]}: a DICOMweb root starts with http:// or https://")
    return DICOMwebClient(url, headers=auth_headers(auth_file), timeout=timeout)


def encode(ds: Any) -> bytes:
    """A dataset as DICOM file bytes (file meta made when the source sent none)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = meta = meta or FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def iter_instances(url: str, study: str, series: str | None = None, auth_file: Path | None = None) -> Iterator[Any]:
    """The instances of a study (or of one of its series) as pydicom datasets, one at a time; InputError with
    one line when the server cannot be reached, refuses, or holds no such study."""
    import requests

    for uid, what in ((study, "study"), (series, "series")):
        if uid is not None and not valid_uid(uid):
            raise UsageError(f"{what} {printable(uid)[:70]!r}: not a DICOM UID (digits and dots, at most 64)")
    client = dicomweb_client(url, auth_file)
    try:
        found = [series] if series else [str(s["0020000E"]["Value"][0]) for s in client.search_for_series(study)]
        if not found:
            raise InputError(f"{printable(url)}: no study {study} there (QIDO-RS found no series)")
        for uid in found:
            yield from client.iter_series(study, uid)
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        hint = "; check the credentials file" if code in (401, 403) else ""
        raise InputError(f"{printable(url)}: DICOMweb answered HTTP {code} for study {study}{hint}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise InputError(f"{printable(url)}: DICOMweb server cannot be reached ({type(exc).__name__})") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InputError(f"{printable(url)}: unexpected DICOMweb answer ({printable(exc)[:80]})") from None


def parse_input(text: str) -> tuple[str, str, str | None] | None:
    """``https://HOST/ROOT/studies/UID[/series/UID]`` -> (root, study, series); None for anything else."""
    match = _INPUT.match(text)
    if match is None or any(len(uid) > 64 for uid in match.groups()[1:] if uid):
        return None
    return match.group(1), match.group(2), match.group(3)


def fetch_folder(text: str) -> Path:
    """Where a DICOMweb input is fetched to: the same folder for the same URL (so a rerun finds its case folder),
    under ``$PANCREAS_DINTS_HOME/dicomweb`` (else ``~/.cache/pancreas-dints/dicomweb``), named by the study."""
    home = os.environ.get(MODEL_HOME_ENV)
    root = Path(home).expanduser() if home else Path.home() / ".cache" / "pancreas-dints"
    parsed = parse_input(text)
    assert parsed is not None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return root / "dicomweb" / digest / parsed[1]


def fetch_input(text: str, auth_file: Path | None) -> Path:
    """Fetch a DICOMweb input into its folder (made mode 0700, emptied first); the folder. InputError/UsageError
    with one line when it cannot be fetched."""
    parsed = parse_input(text)
    if parsed is None:
        raise UsageError(f"{printable(text)[:120]}: a DICOMweb input is https://HOST/ROOT/studies/UID[/series/UID]")
    require_modules("a DICOMweb input", ("dicomweb_client",), "pip install 'pancreas-dints[server]'")
    folder = fetch_folder(text)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    count = 0
    for count, ds in enumerate(iter_instances(*parsed[:2], series=parsed[2], auth_file=auth_file), start=1):
        (folder / f"{count:06d}.dcm").write_bytes(encode(ds))
    if not count:
        raise InputError(f"{printable(text)}: the DICOMweb server returned no instance")
    return folder
