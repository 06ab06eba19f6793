"""Sending results: C-STORE (pynetdicom SCU) or STOW-RS (dicomweb-client), one batch per destination.

A batch answers, per SOP instance, ``sent`` (success or a warning status) or ``refused`` (a failure status: the
DICOM status, or the HTTP status for STOW-RS, is recorded); instances without an answer stay pending and are
tried again with back-off (a destination that is down, refuses the association, is out of resources or answers
5xx). Credentials come from a file (``bearer TOKEN`` or ``basic USER:PASSWORD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PancreasDiNTSLib.core.errors import printable
from PancreasDiNTSLib.io.dicomweb import dicomweb_client
from PancreasDiNTSLib.server.dicom_node.config import Destination

Answer = dict[str, tuple[str, str]]  # sop_uid -> (sent | refused, status)


class Unreachable(Exception):
    """The destination cannot take anything now (down, association refused, 5xx): try again later."""


def _status_answer(code: int) -> tuple[str, str] | None:
    """sent / refused for a C-STORE status; None for a transient one (out of resources: try again)."""
    text = f"0x{code:04X}"
    if code == 0x0000 or 0xB000 <= code <= 0xB0FF:
        return "sent", text
    if 0xA700 <= code <= 0xA7FF:
        return None
    return "refused", text


def send_dimse(dest: Destination, calling_ae: str, items: Sequence[tuple[str, Path]]) -> Answer:
    """C-STORE every file over one association."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [(sop, pydicom.dcmread(str(path))) for sop, path in items]
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}):
        ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        how = "rejected the association" if assoc.is_rejected else "cannot be reached"
        raise Unreachable(f"{dest.ae_title}@{dest.host}:{dest.port} {how}")
    answers: Answer = {}
    try:
        for sop, ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                break  # the association broke: the rest stays pending
            answer = _status_answer(int(status.Status))
            if answer is not None:
                answers[sop] = answer
    finally:
        if assoc.is_established:
            assoc.release()
    if not answers:
        raise Unreachable(f"{dest.ae_title}@{dest.host}:{dest.port} took no instance (out of resources or aborted)")
    return answers


def send_stow(dest: Destination, items: Sequence[tuple[str, Path]]) -> Answer:
    """STOW-RS every file in one request; per-instance answers from the response's Referenced/Failed sequences."""
    import pydicom
    import requests

    datasets = [pydicom.dcmread(str(path)) for _, path in items]
    try:
        response = dicomweb_client(dest.url, dest.auth_file).store_instances(datasets)
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (408, 429) or code >= 500 or code == 0:
            raise Unreachable(f"{printable(dest.url)} answered HTTP {code}") from None
        return {sop: ("refused", f"HTTP {code}") for sop, _ in items}
    except (requests.exceptions.RequestException, OSError) as exc:
        raise Unreachable(f"{printable(dest.url)} cannot be reached ({type(exc).__name__})") from None
    answers: Answer = {}
    for item in response.get("ReferencedSOPSequence", []) if response is not None else []:
        answers[str(item.ReferencedSOPInstanceUID)] = ("sent", "0x0000")
    for item in response.get("FailedSOPSequence", []) if response is not None else []:
        code = int(item.get("FailureReason", 0xC000))
        answers[str(item.ReferencedSOPInstanceUID)] = _status_answer(code) or ("refused", f"0x{code:04X}")
    if not answers:  # a server that answers 200 without a body: every instance stored
        answers = {sop: ("sent", "HTTP 200") for sop, _ in items}
    return answers


def send(dest: Destination, calling_ae: str, items: Sequence[tuple[str, Path]]) -> Answer:
    return send_dimse(dest, calling_ae, items) if dest.kind == "dimse" else send_stow(dest, items)
