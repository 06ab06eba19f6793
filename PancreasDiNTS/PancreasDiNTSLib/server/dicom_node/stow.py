"""The node's HTTP side (under the server's token): STOW-RS in (``POST /v1/dicomweb/studies``), pull
(``POST /v1/pull``) and the listing of studies with their decisions (``GET /v1/node/studies``).

A STOW-RS body (``multipart/related; type="application/dicom"``) is streamed to a file in the node's folder
(bounded by the server's upload limit and free-space floor), split into its parts, and each part spooled
durably before the response says it was stored (DICOM JSON: Referenced / Failed SOP Sequence).
"""

from __future__ import annotations

import mmap
import re
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from PancreasDiNTSLib.core.errors import printable
from PancreasDiNTSLib.io.dicomweb import valid_uid
from PancreasDiNTSLib.server.dicom_node.node import Node
from PancreasDiNTSLib.server.dicom_node.spool import StudyTooLarge

MAX_PARTS = 5000
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)


def split_parts(path: Path, boundary: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, headers) of each part of a multipart body held in ``path``."""
    parts: list[tuple[int, int, bytes]] = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
        delimiter = b"--" + boundary
        pos = body.find(delimiter)
        while pos >= 0 and len(parts) <= MAX_PARTS:
            start = pos + len(delimiter)
            if body[start:start + 2] == b"--":
                break
            head_end = body.find(b"\r\n\r\n", start)
            nxt = body.find(b"\r\n" + delimiter, head_end)
            if head_end < 0 or nxt < 0:
                break
            parts.append((head_end + 4, nxt, bytes(body[start:head_end])))
            pos = nxt + 2
    return parts


def _uids(data: bytes) -> tuple[str, str, str, str]:
    import pydicom

    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)
    return (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", "")))


def _sop_item(sop_class: str, sop: str, failure: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [sop_class]}, "00081155": {"vr": "UI", "Value": [sop]}}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


def store_parts(node: Node, path: Path, boundary: bytes, study: str | None, client: str) -> dict[str, Any]:
    """Spool every application/dicom part; the STOW-RS response body (DICOM JSON)."""
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
        for start, end, headers in split_parts(path, boundary):
            if b"application/dicom" not in headers.lower():
                continue
            data = body[start:end]
            try:
                study_uid, series_uid, sop, sop_class = _uids(data)
            except Exception:  # noqa: BLE001 - a part pydicom cannot read is one failed instance
                failed.append(_sop_item("", "", 0xC000))
                continue
            if not (valid_uid(study_uid) and valid_uid(series_uid) and valid_uid(sop)) or (study and study != study_uid):
                failed.append(_sop_item(sop_class, sop if valid_uid(sop) else "", 0xA900))
                continue
            try:
                node.store.add_instance(study_uid, "stow", client, sop, series_uid, data, node.cfg.max_instances)
            except StudyTooLarge:
                failed.append(_sop_item(sop_class, sop, 0xA700))
                continue
            stored.append(_sop_item(sop_class, sop))
    out: dict[str, Any] = {}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": failed}
    return out


async def _receive_body(node: Node, request: Request, max_bytes: int) -> Path:
    text = request.headers.get("content-length")
    if text is not None and (not text.isdigit() or int(text) > max_bytes):
        raise HTTPException(413, f"STOW-RS body larger than the server's limit of {max_bytes >> 20} MiB")
    lacking = node.room()
    if lacking:
        raise HTTPException(507, lacking)
    incoming = node.store.root / "incoming"
    incoming.mkdir(exist_ok=True, mode=0o700)
    path, size = incoming / f"{uuid.uuid4().hex}.part", 0
    with open(path, "xb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                out.close()
                path.unlink()
                raise HTTPException(413, f"STOW-RS body larger than the server's limit of {max_bytes >> 20} MiB")
            out.write(chunk)
    return path


class PullRequest(BaseModel):
    source: str
    study: str
    series: str | None = None


def _study_view(node: Node, study: dict[str, Any], sends: bool = False) -> dict[str, Any]:
    view = {k: v for k, v in study.items() if k != "seq"}
    view["instances"] = len(node.store.instances(study["id"]))
    if sends:
        view["sends"] = [{k: s[k] for k in ("destination", "sop_uid", "state", "attempts", "status")}
                         for s in node.store.sends("study = ?", (study["id"],))]
    return view


def node_router(node: Node, max_bytes: int) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/dicomweb/studies", summary="STOW-RS: store DICOM instances (multipart/related; type=application/dicom)")
    @router.post("/dicomweb/studies/{study}", summary="STOW-RS into one study")
    async def stow(request: Request, study: str | None = None) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        match = _BOUNDARY.search(kind)
        if not kind.lower().startswith("multipart/related") or match is None:
            raise HTTPException(415, "send multipart/related; type=\"application/dicom\" with a boundary")
        path = await _receive_body(node, request, max_bytes)
        try:
            client = f"STOW {request.client.host if request.client else '?'}"
            body = await run_in_threadpool(store_parts, node, path, match.group(1).encode(), study, client)
        finally:
            path.unlink(missing_ok=True)
        status = 200 if "00081198" not in body else (202 if "00081199" in body else 409)
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")

    @router.post("/pull", status_code=202, summary="Pull a study (or one series) from a configured DICOMweb source")
    def pull(req: PullRequest) -> dict[str, Any]:
        if node.cfg.source(req.source) is None:
            raise HTTPException(400, f"source {printable(req.source)[:40]!r}: not a source of this node's file")
        if not valid_uid(req.study) or (req.series is not None and not valid_uid(req.series)):
            raise HTTPException(400, "study and series: give DICOM UIDs (digits and dots, at most 64)")
        return _study_view(node, node.store.study(node.pull(req.source, req.study, req.series)) or {})

    @router.get("/node/studies", summary="The node's studies, newest first: state, timings, decisions")
    def studies(state: str | None = None, limit: int = 100) -> dict[str, Any]:
        where, args = ("state = ?", (state,)) if state else ("1", ())
        rows = node.store.studies(where, args, max(1, min(limit, 1000)))
        return {"studies": [_study_view(node, s) for s in rows], "counts": node.store.counts()}

    @router.get("/node/studies/{study_id}", summary="One study: decisions and every send")
    def one(study_id: str) -> dict[str, Any]:
        study = node.store.study(study_id) if re.fullmatch(r"[0-9a-f]{32}", study_id) else None
        if study is None:
            raise HTTPException(404, "no such node study")
        return _study_view(node, study, sends=True)

    @router.get("/node/health", summary="The DICOM node: listening address, free space, counts")
    def health() -> dict[str, Any]:
        host, port = node.address or ("", 0)
        return {"ae_title": node.cfg.ae_title, "host": host, "port": port, "free_space_ok": node.room() is None,
                "counts": node.store.counts(), "pending_sends": len(node.store.sends("state = 'pending'"))}

    return router
