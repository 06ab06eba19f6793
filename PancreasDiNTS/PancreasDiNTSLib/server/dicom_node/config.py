"""The DICOM node's settings: from ``serve`` options or a small JSON/YAML file (docs/PACS.md lists every key).

The node is off unless a DICOM port or a node file is given. Destinations receive the results (``dimse``: C-STORE
to an AE; ``stow``: STOW-RS to a DICOMweb root); sources are the DICOMweb servers the node may pull from, by name
(a client never gives the node a URL). Credentials live in files (``auth_file``: ``bearer TOKEN`` or
``basic USER:PASSWORD``), never on a command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import UsageError, printable
from PancreasDiNTSLib.core.formats import parse_formats
from PancreasDiNTSLib.core.request import SegmentRequest
from PancreasDiNTSLib.core.safeparse import load_data_file

DEFAULT_OUTPUTS = ("dicom-seg", "dicom-sr")
PREFERENCES = ("keywords", "thinnest", "most_slices")  # the orders selection.py knows
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, at most 16 characters
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Rules:
    """Series selection rules (selection.py applies them in this order; every decision is recorded)."""

    modalities: tuple[str, ...] = ("CT",)
    exclude_image_types: tuple[str, ...] = ("LOCALIZER", "DERIVED", "SECONDARY")
    max_axial_tilt_deg: float = 20.0
    min_slices: int = 40
    min_thickness_mm: float = 0.0
    max_thickness_mm: float = 5.0
    prefer_keywords: tuple[str, ...] = ("portal", "venous", "pv")
    order: tuple[str, ...] = ("keywords", "thinnest", "most_slices")


@dataclass(frozen=True)
class Destination:
    """Where results go: ``dimse`` (C-STORE to ae_title@host:port) or ``stow`` (STOW-RS to url)."""

    name: str
    kind: str
    host: str = "127.0.0.1"
    port: int = 104
    ae_title: str = ""
    url: str = ""
    auth_file: Path | None = None


@dataclass(frozen=True)
class Source:
    """A DICOMweb server the node may pull from (QIDO-RS / WADO-RS)."""

    name: str
    url: str
    auth_file: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "PANCREAS_DINTS"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_aes: tuple[str, ...] = ()
    quiet_s: float = 30.0
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS  # the engine's format names (core.formats)
    mode: str = "fast"  # the inference mode of the node's jobs (core.request)
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Source, ...] = ()
    rules: Rules = field(default_factory=Rules)
    retry_first_s: float = 5.0
    retry_max_s: float = 300.0
    max_instances: int = 5000  # per study: more is refused (out of resources)

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources if s.name == name), None)

    def job_options(self) -> dict[str, str]:
        """The options of the node's jobs, as the server stores a job's options (core.request's job query)."""
        return SegmentRequest(inputs=(), out_dir=Path("."), formats=self.outputs, mode=self.mode).to_query()


def _check_ae(title: str, what: str) -> str:
    title = str(title).strip()
    if not _AE.match(title):
        raise UsageError(f"{what} {printable(title)[:40]!r}: an AE title is 1 to 16 printable ASCII characters "
                         "without a backslash")
    return title


def _dataclass(kind: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping of keys to values")
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{where}: unknown key {printable(unknown[0])[:40]!r}; known keys: {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        default = known[key].default
        if isinstance(value, list):
            value = tuple(value)
        elif key == "auth_file" and value is not None:
            value = Path(str(value)).expanduser()
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{where}: {key} must be a number")
        elif isinstance(default, str) and not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be text")
        if isinstance(default, tuple) and not isinstance(value, tuple):
            raise UsageError(f"{where}: {key} must be a list")
        values[key] = value
    try:
        return kind(**values)
    except TypeError as exc:
        raise UsageError(f"{where}: {printable(exc)}") from None


def _destination(data: Any, k: int) -> Destination:
    dest = _dataclass(Destination, data, f"destinations[{k}]")
    if not _NAME.match(str(dest.name)):
        raise UsageError(f"destinations[{k}]: name: letters, digits, '_', '.', '-' (at most 64)")
    if dest.kind == "dimse":
        _check_ae(dest.ae_title, f"destinations[{k}] ae_title")
        if not isinstance(dest.port, int) or not 0 < dest.port < 65536:
            raise UsageError(f"destinations[{k}]: port must be 1 to 65535")
    elif dest.kind == "stow":
        if not str(dest.url).startswith(("http://", "https://")):
            raise UsageError(f"destinations[{k}]: url must be the DICOMweb root (http:// or https://)")
    else:
        raise UsageError(f"destinations[{k}]: kind must be dimse (C-STORE) or stow (STOW-RS)")
    return dest


def node_config(data: dict[str, Any], where: str = "node") -> NodeConfig:
    """A checked NodeConfig from a mapping (a node file's content, options merged in)."""
    data = dict(data)
    if "rules" in data:
        data["rules"] = rules = _dataclass(Rules, data["rules"], f"{where}: rules")
        unknown = [k for k in rules.order if k not in PREFERENCES]
        if unknown:
            raise UsageError(f"{where}: rules: order {printable(unknown[0])[:40]!r}: choose from {', '.join(PREFERENCES)}")
        data["rules"] = replace(rules, modalities=tuple(str(m).upper() for m in rules.modalities),
                                exclude_image_types=tuple(str(t).upper() for t in rules.exclude_image_types))
    data["destinations"] = [_destination(d, k) for k, d in enumerate(data.get("destinations") or [])]
    data["sources"] = [_dataclass(Source, s, f"{where}: sources[{k}]") for k, s in enumerate(data.get("sources") or [])]
    cfg: NodeConfig = _dataclass(NodeConfig, data, where)
    _check_ae(cfg.ae_title, "ae_title")
    for title in cfg.allowed_aes:
        if title != "*":
            _check_ae(title, "allowed_aes")
    if not 0 <= int(cfg.port) < 65536:
        raise UsageError(f"{where}: port must be 0 to 65535")
    try:
        parse_formats(cfg.outputs)
        SegmentRequest(inputs=(), out_dir=Path("."), formats=cfg.outputs, mode=cfg.mode)
    except UsageError as exc:
        raise UsageError(f"{where}: outputs/mode: {exc}") from None
    if not float(cfg.quiet_s) >= 0:
        raise UsageError(f"{where}: quiet_s must be a number of seconds >= 0")
    for src in cfg.sources:
        if not _NAME.match(str(src.name)) or not str(src.url).startswith(("http://", "https://")):
            raise UsageError(f"{where}: a source needs a name (letters, digits, '_.-') and an http(s) url")
    return cfg


def load_node_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """The node file (if any) with the command line's values on top."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = load_data_file(path, error=UsageError)
        if not isinstance(loaded, dict):
            raise UsageError(f"{printable(path)}: the node file must be a mapping (docs/PACS.md)")
        data = loaded
    data.update({k: v for k, v in overrides.items() if v is not None})
    return node_config(data, printable(path) if path else "node")
