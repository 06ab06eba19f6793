"""One description of a ``segment`` run, shared by every front door (torch-free: Slicer and the server import it).

:data:`OPTIONS` lists every ``segment`` option once: flag, type, default, allowed values, help. A
:class:`SegmentRequest` is one run (``validate`` gives the one-line errors, exit 2); :class:`Region` says which part
of the CT is inferred (``whole``, ``auto``, a ``box``, or the engine's default for the device). The translations:

========================= ========================================= =============================================
to / from                 functions                                  used by
========================= ========================================= =============================================
argparse                  :func:`add_arguments`, ``from_namespace``  ``cli/segment.py``
engine command line       ``to_argv``                                ``bridge/commands`` (Slicer), ``--help`` test
server job query / JSON   ``to_query``, ``from_query``               ``bridge/remote``, ``server/app``, its workers
Slicer parameter node     ``to_parameters``, ``from_parameters``     ``PancreasDiNTS.py`` (keys, old scenes read)
report                    ``Region.report``                          ``inference/pipeline.case_report``
========================= ========================================= =============================================

Adding a ``segment`` option: one :class:`Option` in :data:`OPTIONS` and its field in :class:`SegmentRequest`
(``job=True`` if a server job may carry it), then the code that uses the value, tests and docs
(docs/ARCHITECTURE.md, "Adding a segment option").
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import UsageError, printable
from PancreasDiNTSLib.core.formats import DEFAULT_FORMATS, FORMATS, format_help, parse_formats
from PancreasDiNTSLib.core.progress import PROGRESS_STYLES

INFERENCE_MODES = ("fast", "exact", "fastmm")  # how the network runs (inference.segmenter)
ENGINES = ("eager", "cuda-graph", "compile")  # how the fast modes run it (inference.fastpath)
PRECISIONS = ("auto", "fp32", "bf16")  # the network's number format (inference.precision decides what auto means)
REGION_MODES = ("auto", "whole")  # --region (a --roi box is the third way)
ROI_SPACES = ("ras", "voxel")
ROI_MODES = ("grid", "local")
SEG_TYPES = ("binary", "labelmap")  # the DICOM SEG's form (io.dicom_seg)
# The Slicer panel's region choice: stored key -> the text it shows (old scenes stored the text; both are read).
PANEL_REGIONS = {"auto": "automatic pancreas region", "whole": "whole CT", "box": "ROI node"}
PANEL_MODES = ("fast", "exact")  # the panel's speed choice (a subset of INFERENCE_MODES)


# ------------------------------------------------------------------------------------------------ the region


@dataclass(frozen=True)
class RoiRequest:
    """A box: two opposite corners X0,Y0,Z0,X1,Y1,Z1 in ``space`` (ras mm | voxel), inferred in ``mode``."""

    box: tuple[float, ...]
    space: str = "ras"  # "ras" (millimetres, a Slicer ROI's bounds) | "voxel" (indices)
    mode: str = "grid"  # "grid" (the full run's windows) | "local" (crop plus context)

    def __post_init__(self) -> None:
        if len(self.box) != 6 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.box):
            raise UsageError(f"--roi {printable(','.join(map(str, self.box)))}: give six finite numbers "
                             "X0,Y0,Z0,X1,Y1,Z1 (two opposite corners)")
        if self.space not in ROI_SPACES:
            raise UsageError(f"--roi-space {printable(self.space)}: choose {' or '.join(ROI_SPACES)}")
        if self.mode not in ROI_MODES:
            raise UsageError(f"--roi-mode {printable(self.mode)}: choose {' or '.join(ROI_MODES)}")
        flat = [axis for axis, lo, hi in zip("XYZ", self.box[:3], self.box[3:], strict=True) if lo == hi]
        if flat:
            raise UsageError(f"--roi {printable(','.join(map(str, self.box)))}: the box has zero size along "
                             f"{', '.join(flat)}; give two opposite corners that differ on every axis")

    @classmethod
    def parse(cls, text: str, space: str = "ras", mode: str = "grid") -> RoiRequest:
        """``"X0,Y0,Z0,X1,Y1,Z1"`` -> RoiRequest; UsageError (exit 2) for anything else (NaN, inf, text)."""
        try:
            box = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"--roi {printable(text)}: give six numbers X0,Y0,Z0,X1,Y1,Z1 (two opposite "
                             "corners)") from None
        if len(box) != 6 or not all(math.isfinite(v) for v in box):
            raise UsageError(f"--roi {printable(text)}: give six finite numbers X0,Y0,Z0,X1,Y1,Z1")
        return cls(box, space, mode)

    def text(self) -> str:
        """The box as ``--roi`` / the server's ``roi`` take it (exact: repr of each float)."""
        return ",".join(repr(float(v)) for v in self.box)

    def describe(self) -> dict[str, Any]:
        return {"box": list(self.box), "space": self.space, "mode": self.mode}


@dataclass(frozen=True)
class Region:
    """Which part of the CT is inferred: ``kind`` "whole" (every window), "auto" (the automatic pancreas region),
    "box" (``box``), or None: the engine's default for the device (auto on a CPU, whole on a GPU)."""

    kind: str | None = None
    box: RoiRequest | None = None

    def __post_init__(self) -> None:
        if self.kind not in (None, *REGION_MODES, "box"):
            raise UsageError(f"--region {printable(str(self.kind))}: choose {' or '.join(REGION_MODES)}")
        if (self.kind == "box") != (self.box is not None):
            raise UsageError("a box region needs its --roi box, and only a box region has one")

    @classmethod
    def from_flags(cls, region: str | None, roi: str | None, roi_space: str = "ras",
                   roi_mode: str = "grid") -> Region:
        """``--region``, ``--roi``, ``--roi-space``, ``--roi-mode`` -> Region (a box takes --region whole's place)."""
        if region is not None and region not in REGION_MODES:
            raise UsageError(f"--region {printable(region)}: choose {' or '.join(REGION_MODES)}")
        if roi:
            if region == "auto":
                raise UsageError("--region auto and --roi: choose one (the box, or the automatic region)")
            return cls("box", RoiRequest.parse(roi, roi_space, roi_mode))
        return cls(region)

    def flags(self) -> dict[str, Any]:
        """The four flags' values (inverse of :meth:`from_flags`)."""
        if self.box is not None:
            return {"region": None, "roi": self.box.text(), "roi_space": self.box.space, "roi_mode": self.box.mode}
        return {"region": self.kind, "roi": None, "roi_space": "ras", "roi_mode": "grid"}

    def resolved(self, device_type: str) -> str:
        """The one decision of what runs: "box", "whole" or "auto" (None -> auto on a CPU, whole on a GPU)."""
        if self.kind is None:
            return "auto" if device_type == "cpu" else "whole"
        return self.kind

    def report(self) -> dict[str, Any]:
        """report.json ``inference.region`` when the automatic region did not run."""
        return {"mode": "box" if self.box is not None else "whole"}


# ------------------------------------------------------------------------------------------------ the options


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{printable(text)}: give a whole number, 1 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a usage error, exit 2, otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


CONVERTERS: dict[str, Any] = {"int": positive_int, "seconds": positive_float, "float": float}


@dataclass(frozen=True)
class Option:
    """One ``segment`` option: how argparse, the engine's command line and the server's query spell it."""

    dest: str  # argparse dest and the server's query name
    flags: tuple[str, ...]  # () for the positional inputs
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    kind: str = "text"  # text | int (>= 1) | seconds (> 0) | float | on (store_true) | off (store_false) | many
    metavar: str | None = None
    required: bool = False
    field: str = ""  # the SegmentRequest field it fills (default: dest; the four region flags fill "region")
    job: bool = False  # a server job may carry it (query parameter ``dest``)

    @property
    def target(self) -> str:
        return self.field or self.dest

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kw: dict[str, Any] = {"help": self.help.replace("%", "%%")}  # argparse formats help with %
        if self.kind == "many":
            parser.add_argument(self.dest, nargs="+", metavar=self.metavar, **kw)
            return
        if self.kind in ("on", "off"):
            kw |= {"action": "store_true" if self.kind == "on" else "store_false"}
        else:
            kw |= {"default": self.default, "metavar": self.metavar, "choices": self.choices}
            kw |= {"type": CONVERTERS[self.kind]} if self.kind in CONVERTERS else {}
            kw |= {"required": True} if self.required else {}
        parser.add_argument(*self.flags, dest=self.dest, **{k: v for k, v in kw.items() if v is not None})

    def argv(self, value: Any) -> list[str]:
        """The command-line words of ``value`` ([] for the default)."""
        if value == self.default or value is None or self.kind == "many":
            return []
        if self.kind in ("on", "off"):
            return [self.flags[-1]]
        text = str(value)
        return [f"{self.flags[-1]}={text}"] if text.startswith("-") else [self.flags[-1], text]


_REGION_HELP = ("auto: a coarse pass over non-overlapping windows finds the pancreas and lesions, the full run's windows "
                "then run only there (labels equal a whole run's wherever they ran; outside it labels are background); "
                "whole: every window. Default: auto on a CPU, whole on a GPU; a --roi box takes its place")
OPTIONS: tuple[Option, ...] = (
    Option("inputs", (), "image files, DICOM series folders, folders of images, or globs (quote them)",
           kind="many", metavar="INPUT"),
    Option("output", ("-o", "--output"), "results go to OUTDIR/<case>/", metavar="OUTDIR", required=True,
           field="out_dir"),
    Option("model", ("--model",), "MONAI bundle folder (configs/inference.yaml, models/model.pt, "
           "models/search_code_*.pt), an exported model file, or `official` (the default): the released model "
           "installed by `pancreas-dints download`", default="official", metavar="BUNDLE_DIR"),
    Option("device", ("--device",), "auto (default), cpu, cuda or cuda:N", default="auto"),
    Option("formats", ("--format",), format_help(), default=",".join(DEFAULT_FORMATS), job=True),
    Option("seg_type", ("--seg-type",), "the DICOM SEG's form: binary (default; one frame per segment and image) or "
           "labelmap (DICOM 2024: one frame per image holding the label values, read by OHIF 3.11)", default="binary",
           choices=SEG_TYPES),
    Option("progress", ("--progress",), "bar (terminal), json (one JSON object per line on stdout), none; auto = bar "
           "on a terminal", default="auto", choices=PROGRESS_STYLES),
    Option("overwrite", ("--overwrite",), "redo cases whose outputs already exist", default=False, kind="on"),
    Option("allow_non_ct", ("--allow-non-ct",), "segment images whose intensities do not look like CT Hounsfield "
           "units (with a warning)", default=False, kind="on", job=True),
    Option("sw_batch_size", ("--sw-batch-size",), "windows per network call (default: the bundle's; on a GPU the "
           "fast modes size it by free memory)", kind="int"),
    Option("mode", ("--mode",), "fast (default): static DiNTS forward, constant windows computed once, same labels as "
           "the bundle; exact: MONAI's SlidingWindowInferer as the bundle runs it (the reference); fastmm: fast with "
           "matrix-product upsampling (rounding-level differences)", default="fast", choices=INFERENCE_MODES,
           job=True),
    Option("engine", ("--engine",), "how the fast modes run the network (cuda-graph needs a GPU)", default="eager",
           choices=ENGINES),
    Option("precision", ("--precision",), "the network's number format. auto (default): fp32 on a CPU (bf16 "
           "missed one agreement target, docs/PERFORMANCE.md), the bundle's AMP on a GPU; fp32: float32 "
           "everywhere; bf16: the fast modes on a CPU in bf16, 2.8-4.5x faster per window where the CPU flags "
           "have avx512_bf16 or amx_bf16 (emulated and slower without)",
           default="auto", choices=PRECISIONS, job=True),
    Option("roi", ("--roi",), "segment only inside this box (corners; labels outside are 0): for CPU-only machines",
           metavar="X0,Y0,Z0,X1,Y1,Z1", field="region", job=True),
    Option("roi_space", ("--roi-space",), "coordinates of --roi: RAS millimetres (a Slicer ROI's bounds) or voxel "
           "indices", default="ras", choices=ROI_SPACES, field="region", job=True),
    Option("roi_mode", ("--roi-mode",), "grid: the full run's windows touching the box (labels in the box equal the "
           "full run's); local: crop the CT to the box plus context (time proportional to the box)", default="grid",
           choices=ROI_MODES, field="region", job=True),
    Option("region", ("--region",), _REGION_HELP, choices=REGION_MODES, job=True),
    Option("series", ("--series",), "read only this series (SeriesInstanceUID) of each DICOM folder; without it a "
           "folder of several series gives one case per series", metavar="UID", job=True),
    Option("dicomweb_auth", ("--dicomweb-auth",), "credentials for DICOMweb inputs (an input "
           "https://HOST/dicom-web/studies/UID[/series/UID] is fetched by QIDO-RS/WADO-RS): a file holding "
           "'bearer TOKEN' or 'basic USER:PASSWORD'", metavar="FILE"),
    Option("prefetch", ("--no-prefetch",), "do not read/preprocess the next case in a background thread during "
           "inference (saves the memory of one case in batch mode)", default=True, kind="off"),
    Option("server", ("--server",), "segment on a `pancreas-dints serve` server (e.g. https://gpu-server:8765): the "
           "same case folders, files and tables as a local run (docs/SERVER.md)", metavar="URL"),
    Option("token_file", ("--token-file",), "the server's token (default: $PANCREAS_DINTS_TOKEN_FILE, else "
           "~/.config/pancreas-dints/token)", metavar="FILE"),
    Option("server_job_timeout", ("--server-job-timeout",), "with --server: the longest one case may take from its "
           "upload to its result, queue wait included (default 7200); then the job is cancelled and the case fails",
           default=7200.0, kind="seconds", metavar="SECONDS"),
    Option("server_timeout", ("--server-timeout",), "with --server: the longest the whole run may take; cases not yet "
           "sent then fail (default 0: no limit, each case is bounded by --server-job-timeout)", default=0.0,
           kind="float", metavar="SECONDS"),
)
OPTION = {o.dest: o for o in OPTIONS}
REGION_FLAGS = ("region", "roi", "roi_space", "roi_mode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``segment`` option on ``parser`` (cli/segment.py)."""
    for option in OPTIONS:
        option.add_to(parser)


# ------------------------------------------------------------------------------------------------ the request


@dataclass(frozen=True)
class SegmentRequest:
    """Everything ``segment`` is asked to do (one field per :data:`OPTIONS` target). Checked when made."""

    inputs: tuple[str, ...]
    out_dir: Path
    model: str | Path = "official"
    device: str = "auto"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    seg_type: str = "binary"  # SEG_TYPES
    progress: str = "auto"
    overwrite: bool = False
    allow_non_ct: bool = False
    sw_batch_size: int | None = None  # windows per network call; None: the bundle's (GPU: sized by memory)
    mode: str = "fast"  # INFERENCE_MODES
    engine: str = "eager"  # ENGINES
    precision: str = "auto"  # PRECISIONS
    region: Region = field(default_factory=Region)
    series: str | None = None  # only this series of each DICOM folder (UID or io.dicom selector)
    dicomweb_auth: str | None = None  # credentials file for DICOMweb inputs (io.dicomweb)
    prefetch: bool = True
    server: str | None = None  # segment on a `pancreas-dints serve` (inference.remote)
    token_file: str | None = None  # the token for --server
    server_job_timeout: float = 7200.0  # --server: one case, from its upload to its result (queue wait included), s
    server_timeout: float = 0.0  # --server: the whole run, s (0: no limit)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats))
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        object.__setattr__(self, "out_dir", Path(self.out_dir).expanduser())
        self.validate()

    def validate(self) -> None:
        """UsageError (exit 2) with the one line users see, for a value no option allows."""
        if self.sw_batch_size is not None and (not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1):
            raise UsageError(f"--sw-batch-size {self.sw_batch_size}: give a whole number of windows, 1 or more")
        for name in ("mode", "engine", "progress", "seg_type", "precision"):
            option = OPTION[name]
            if getattr(self, name) not in (option.choices or ()):
                raise UsageError(f"{option.flags[-1]} {printable(str(getattr(self, name)))}: choose one of "
                                 f"{', '.join(option.choices or ())}")
        if self.precision == "bf16" and self.mode == "exact":
            raise UsageError("--precision bf16 with --mode exact: the exact mode computes as the bundle (fp32); "
                             "use --mode fast for bf16")
        if self.seg_type != "binary" and self.server:
            raise UsageError("--seg-type labelmap is not passed to a server; run the case locally for a LABELMAP SEG")
        if not isinstance(self.region, Region):
            raise UsageError(f"region {printable(repr(self.region))}: give a Region (whole, auto or a box)")

    # -- flags: {dest: value} as argparse gives them
    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> SegmentRequest:
        """A request from option values by dest (missing ones: the defaults)."""
        get = {o.dest: values.get(o.dest, o.default) for o in OPTIONS}
        region = Region.from_flags(*(get[k] for k in REGION_FLAGS))
        kw = {o.target: get[o.dest] for o in OPTIONS if o.target != "region"}
        return cls(**kw, region=region)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> SegmentRequest:
        return cls.from_flags(vars(args))

    def flags(self) -> dict[str, Any]:
        """Option values by dest (inverse of :meth:`from_flags`)."""
        out = {o.dest: getattr(self, o.target) for o in OPTIONS if o.target != "region"}
        out |= self.region.flags() | {"formats": ",".join(self.formats), "output": str(self.out_dir),
                                     "model": str(self.model)}
        return out

    def to_argv(self) -> list[str]:
        """``segment``'s arguments for this request (options at their defaults left out; inputs first)."""
        flags = self.flags()
        words = [*self.inputs, "-o", flags["output"], "--model", flags["model"]]
        for option in OPTIONS:
            if option.dest not in ("inputs", "output", "model"):
                words += option.argv(flags[option.dest])
        return words

    # -- the server's job query (strings, only the options a job may carry)
    def to_query(self) -> dict[str, str]:
        """The query parameters of a server job (what the server stores as the job's options)."""
        flags = self.flags()
        query = {"formats": flags["formats"], "mode": self.mode, "allow_non_ct": "true" if self.allow_non_ct else "false"}
        if self.region.box is not None:
            query |= {k: str(flags[k]) for k in ("roi", "roi_space", "roi_mode")}
        return query | {k: str(flags[k]) for k in ("series", "region") if flags[k]} | \
            ({"precision": self.precision} if self.precision != "auto" else {})

    @classmethod
    def from_query(cls, query: Mapping[str, str], **fixed: Any) -> SegmentRequest:
        """A request from a job's query (unknown keys ignored; ``fixed``: inputs, out_dir, model... by field).
        UsageError naming the query parameter for a bad value."""
        values: dict[str, Any] = {o.dest: query[o.dest] for o in OPTIONS if o.job and query.get(o.dest)}
        flag = str(query.get("allow_non_ct", "false")).strip().lower()
        if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            raise UsageError(f"allow_non_ct {printable(flag)[:20]}: give true or false")
        values["allow_non_ct"] = flag in ("1", "true", "yes", "on")
        try:
            request = cls.from_flags(values | {"inputs": (), "output": "."})
        except UsageError as exc:
            message = str(exc)
            for o in OPTIONS:
                message = message.replace(o.flags[-1] + " ", o.dest + " ", 1) if o.flags else message
            raise UsageError(message) from None
        return replace(request, **fixed)

    # -- the Slicer parameter node (stored values are keys)
    def to_parameters(self) -> dict[str, Any]:
        """The Slicer module's parameter-node values of this request (region key, ROI mode, mode, device...)."""
        region = self.region.kind or "auto"
        return {"region": region, "roiMode": self.region.box.mode if self.region.box else "grid", "mode": self.mode,
                "device": self.device, "allowNonCT": self.allow_non_ct, "computeConfidence": "confidence" in self.formats,
                "precision": self.precision}


def panel_region(stored: str) -> str:
    """A parameter node's region value -> its key ("auto" | "whole" | "box"); old scenes stored the display text."""
    if stored in PANEL_REGIONS:
        return stored
    by_text = {text: key for key, text in PANEL_REGIONS.items()}
    if stored in by_text:
        return by_text[stored]
    raise UsageError(f"region {printable(stored)}: choose one of {', '.join(PANEL_REGIONS)}")


def from_parameters(values: Mapping[str, Any], inputs: tuple[str, ...], out_dir: str | Path, model: str | Path,
                    roi_box: tuple[float, ...] | None = None, formats: tuple[str, ...] = ("seg.nrrd",)) -> SegmentRequest:
    """The request of a Slicer Segment run from the parameter node's values (keys or old display texts) and the
    ROI node's world box (used when the region is "box"). The confidence map is asked for when
    ``computeConfidence`` is on and the region is not a box."""
    key = panel_region(str(values.get("region", "auto")))
    mode = str(values.get("mode", "fast"))
    if mode not in PANEL_MODES:
        raise UsageError(f"mode {printable(mode)}: choose one of {', '.join(PANEL_MODES)}")
    if key == "box":
        if roi_box is None:
            raise UsageError("the region is an ROI node: select the ROI node")
        region = Region("box", RoiRequest(tuple(float(v) for v in roi_box), "ras", str(values.get("roiMode", "grid"))))
    else:
        region = Region(key)
    extra = ("confidence",) if values.get("computeConfidence", True) and key != "box" else ()
    return SegmentRequest(tuple(inputs), Path(out_dir), model, device=str(values.get("device", "auto")),
                          formats=tuple(f for f in formats if f != "confidence") + extra, progress="json",
                          overwrite=True, allow_non_ct=bool(values.get("allowNonCT", False)), mode=mode, region=region,
                          precision=str(values.get("precision", "auto")))


def job_choices() -> dict[str, list[str]]:
    """The allowed values of a server job's options (the server's /v1/model "options")."""
    return {"formats": list(FORMATS), "modes": list(INFERENCE_MODES), "roi_spaces": list(ROI_SPACES),
            "roi_modes": list(ROI_MODES), "regions": list(REGION_MODES), "precisions": list(PRECISIONS)}


def request_fields() -> tuple[str, ...]:
    """The fields of :class:`SegmentRequest` (a test compares them with :data:`OPTIONS` and the CLI's parser)."""
    return tuple(f.name for f in fields(SegmentRequest))
