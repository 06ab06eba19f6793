"""The node's DICOM Storage SCP (pynetdicom): C-ECHO, and C-STORE of the storage SOP classes in every transfer
syntax pynetdicom knows (compressed ones included: pixel data is stored as received, the engine decodes it).

Associations are refused at request time, and logged, when the calling AE title is not allowed (permanent,
"calling AE title not recognised") or the data folder is below its free-space floor (transient, "local limit
exceeded"). An instance is acknowledged with success only after the spool holds it durably (spool.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PancreasDiNTSLib.core.errors import printable
from PancreasDiNTSLib.io.dicomweb import valid_uid
from PancreasDiNTSLib.server.dicom_node.config import NodeConfig
from PancreasDiNTSLib.server.dicom_node.spool import NodeStore, StudyTooLarge

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


class StorageSCP:
    """One listening AE; ``room()`` is None when there is disk space, else the reason there is not."""

    def __init__(self, cfg: NodeConfig, store: NodeStore, room: Callable[[], str | None],
                 log: Callable[[str], None]) -> None:
        self.cfg, self.store, self.room, self.log = cfg, store, room, log
        self.server: Any = None

    def allowed(self, calling: str) -> bool:
        allowed = self.cfg.allowed_aes
        return "*" in allowed or calling.strip() in allowed

    def on_requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ: refuse unknown calling AEs and a full disk before any data moves."""
        rq = event.assoc.requestor
        calling, peer = printable(rq.primitive.calling_ae_title).strip(), f"{rq.address}:{rq.port}"
        if not self.allowed(calling):
            self.log(f"DICOM: association from {calling!r} at {peer} refused: calling AE title not in the allowed "
                     "list (allowed_aes in the node file, --dicom-allow)")
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE unknown
            event.assoc.kill()  # the A-ASSOCIATE-RJ goes out before the connection closes
            return
        lacking = self.room()
        if lacking:
            self.log(f"DICOM: association from {calling!r} at {peer} refused: {lacking}")
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient, local limit exceeded
            event.assoc.kill()

    def on_store_event(self, event: Any) -> int:
        """C-STORE: spool the instance durably, then answer success (or a failure status with the reason logged)."""
        calling = printable(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            uids = (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                    str(event.request.AffectedSOPInstanceUID or ""))
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot parse is refused, not fatal
            self.log(f"DICOM: instance from {calling!r} refused: unreadable dataset ({printable(exc)[:120]})")
            return STATUS_CANNOT_UNDERSTAND
        if not all(valid_uid(u) for u in uids):
            self.log(f"DICOM: instance from {calling!r} refused: missing or invalid Study/Series/SOP Instance UID")
            return STATUS_CANNOT_UNDERSTAND
        if self.room():
            return STATUS_OUT_OF_RESOURCES
        study_uid, series_uid, sop_uid = uids
        try:
            self.store.add_instance(study_uid, "dimse", calling, sop_uid, series_uid,
                                    event.encoded_dataset(include_meta=True), self.cfg.max_instances)
        except (OSError, StudyTooLarge) as exc:
            self.log(f"DICOM: instance from {calling!r} not stored ({printable(exc)[:160]}); answered out of "
                     "resources")
            return STATUS_OUT_OF_RESOURCES
        return 0x0000

    def start(self) -> tuple[str, int]:
        """Listen (non-blocking); the address and port bound."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.presentation import StoragePresentationContexts
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = 16
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 60
        ae.maximum_pdu_size = 0
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_C_STORE, self.on_store_event)]
        self.server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
