"""Where each case's outputs go: safe case names, folders matched to their input, no overlap with inputs.

Rules (README, "Output folders"):

- The case name comes from the input's absolute path (``.`` is the folder's real name; a DICOM file stands for
  its series folder), without image suffixes, made safe on every OS: control and format characters and
  ``<>:"/\\|?*`` become ``_``, leading/trailing dots and spaces go (never empty, ``.``, ``..`` or hidden),
  Windows device names (CON, NUL, COM1...) get a ``_`` prefix, at most 96 UTF-8 bytes; empty -> ``case``.
  Letters stay (Unicode, NFC): a name in another encoding than the file system's (Latin-1 bytes) is decoded,
  and only where the file-system encoding cannot hold a letter is it transliterated (``Ü`` -> ``U``).
- Identity: a folder ``OUTDIR/<name>`` is this input's only when its manifest names the same input
  (core.ownership.input_identity). Otherwise the case takes the first free name of ``<name>``, ``<name>-2``,
  ``<name>-3``..., never another input's folder. Names are compared case-insensitively (``Ct``, ``ct`` and
  ``CT`` are one name on macOS and Windows), with OUTDIR's entries and within the run, so a rerun finds each
  input's folder whatever the case of its name.
- Concurrent runs into one OUTDIR: :func:`claim_cases` plans and makes the new case folders (with a manifest
  naming the input) as one step under the OUTDIR lock (core.atomic.folder_lock).
- A DICOM folder with several series becomes one case per series (``<folder>-<number-description>``; identity
  adds the series' content fingerprint); ``series_uid`` (``--series``) keeps only that series of each folder.
- A case folder is never an input, an ancestor or a descendant of an input, OUTDIR itself, a symlink or outside
  OUTDIR; an OUTDIR inside an input folder is refused too. Refusals are PlacementError (exit 2), before any work.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.atomic import folder_lock
from PancreasDiNTSLib.core.errors import PancreasDiNTSError, PlacementError, printable
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME, CaseFolder, input_identity
from PancreasDiNTSLib.io.dicom import folder_cases
from PancreasDiNTSLib.io.images import IMAGE_SUFFIXES, case_name, is_dicom_file

MAX_NAME_BYTES = 96
FALLBACK_NAME = "case"
MAX_CANDIDATES = 10_000
_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{p}{i}" for p in ("COM", "LPT")
                                                                         for i in range(1, 10)}


def _undo_escapes(text: str) -> str:
    """A name whose bytes are not valid in the file-system encoding (a Latin-1 name on a UTF-8 system) reaches
    Python as surrogate escapes: its bytes are read as UTF-8, else Windows-1252, else Latin-1, so letters stay."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    try:
        raw = text.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeEncodeError:
        return text
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _fits(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def _transliterate(text: str, encoding: str) -> str:
    """``text`` in ``encoding``: accents dropped (``Ü`` -> ``U``), anything else it cannot hold -> ``_``."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", "".join(c if _fits(c, encoding) else "_" for c in plain))


def safe_case_name(raw: str, limit: int = MAX_NAME_BYTES, encoding: str | None = None) -> str:
    """A folder name that is valid, visible and unambiguous on Linux, macOS and Windows. Letters are kept as
    Unicode (NFC) where the file-system encoding (``encoding``, default Python's) can hold them, else
    transliterated."""
    encoding = encoding or sys.getfilesystemencoding()
    text = unicodedata.normalize("NFC", _undo_escapes(raw))
    text = "".join("_" if (unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
                           or c in _FORBIDDEN) else c for c in text)
    if not _fits(text, encoding):
        text = _transliterate(text, encoding)
    text = text.strip(" .")
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    text = text.rstrip(" .")
    if not text:
        return FALLBACK_NAME
    if text.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        text = "_" + text
    return text


def case_base_name(path: Path) -> str:
    """The case name of an input, from its absolute path (``.`` -> the folder's real name)."""
    absolute = Path(os.path.abspath(path))
    if _is_dicom_file_input(absolute):
        absolute = absolute.parent  # a DICOM file stands for its series folder
    return safe_case_name(case_name(absolute) if absolute.name else "")


def candidates(base: str) -> Iterator[str]:
    """``base``, ``base-2``, ``base-3``... each within MAX_NAME_BYTES."""
    yield base
    for k in range(2, MAX_CANDIDATES):
        suffix = f"-{k}"
        yield safe_case_name(base, MAX_NAME_BYTES - len(suffix)) + suffix


def footprint(path: Path) -> list[Path]:
    """The real paths reading ``path`` touches: the file or folder, and a DICOM file's series folder."""
    real = Path(os.path.realpath(path))
    paths = [real, Path(os.path.abspath(path))]
    if _is_dicom_file_input(real):
        paths.append(real.parent)
    return paths


def _is_dicom_file_input(path: Path) -> bool:
    """A regular file (never a FIFO: is_file first) that is a DICOM slice: it stands for its series folder."""
    return path.is_file() and not path.name.lower().endswith(IMAGE_SUFFIXES) and (
        path.suffix.lower() == ".dcm" or is_dicom_file(path))


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


@dataclass(frozen=True)
class PlannedCase:
    """One input and the case folder its outputs go to."""

    path: Path
    name: str
    folder: Path
    identity: dict[str, Any]
    existing: bool  # the folder already holds this input's results (its manifest names the same input)
    series: str | None = None  # the DICOM series to read from a folder of several (io.dicom selector)


@dataclass(frozen=True)
class _CaseInput:
    """One case before its folder is chosen: an input path, and a series of it when the folder holds several."""

    path: Path
    suffix: str = ""
    series: str | None = None
    fingerprint: str | None = None


def _case_inputs(path: Path, series_uid: str | None) -> list[_CaseInput]:
    """A DICOM folder of several series (or with ``series_uid``) -> one case input per series; else the path."""
    if not path.is_dir():
        return [_CaseInput(path)]
    try:
        cases = folder_cases(path)
    except PancreasDiNTSError:
        return [_CaseInput(path)]  # the case fails on its own when it is read, with the reader's message
    if series_uid is not None:
        chosen = [s for _, s in cases if series_uid in (s.uid, s.selector)]
        if not chosen:
            found = ", ".join(s.selector for _, s in cases) or "none"
            raise PlacementError(f"--series {printable(series_uid)}: not in {printable(path)} (its series: "
                                 f"{printable(found)}); give one of those")
        return [_CaseInput(path, "", chosen[0].selector, chosen[0].fingerprint())]
    if len(cases) <= 1:
        return [_CaseInput(path)]
    return [_CaseInput(path, suffix, s.selector, s.fingerprint()) for suffix, s in cases]


class _Planner:
    def __init__(self, paths: list[Path], out_dir: Path) -> None:
        self.out = out_dir
        self.out_real = Path(os.path.realpath(out_dir))
        self.prints = [(p, footprint(p)) for p in paths]
        self.claimed: set[str] = set()
        self.existing: dict[str, list[str]] = {}

    def check_out_dir(self) -> None:
        for path, fps in self.prints:
            for fp in fps:
                if fp.is_dir() and (self.out_real == fp or fp in self.out_real.parents):
                    raise PlacementError(f"-o {printable(self.out)}: lies inside the input folder "
                                         f"{printable(path)}; choose an output folder outside the inputs")
                if self.out_real == fp:
                    raise PlacementError(f"-o {printable(self.out)}: is the input {printable(path)}; choose an "
                                         "output folder")

    def scan(self) -> None:
        """What OUTDIR holds now, by case-folded name (``Ct`` and ``ct`` are one name on macOS and Windows)."""
        self.claimed = set()
        self.existing = {}
        try:
            names = os.listdir(self.out)
        except OSError:
            names = []
        for name in names:
            self.existing.setdefault(name.casefold(), []).append(name)

    def taken(self, name: str) -> list[str]:
        """The entries of OUTDIR whose name equals ``name`` up to case."""
        return self.existing.get(name.casefold(), [])

    def usable(self, name: str) -> Path | None:
        """``OUTDIR/name`` unless it is a symlink or already claimed; PlacementError if it touches an input."""
        if name.casefold() in self.claimed:
            return None
        folder = self.out / name
        if folder.is_symlink():
            return None
        real = self.out_real / name
        for path, fps in self.prints:
            if any(_related(real, fp) for fp in fps):
                raise PlacementError(f"{printable(path)}: its case folder {printable(folder)} would be or contain "
                                     "an input; choose an -o outside the input folders")
        return folder

    def claim(self, name: str) -> None:
        self.claimed.add(name.casefold())


def _identity(path: Path) -> dict[str, Any]:
    try:
        return input_identity(path)
    except OSError:
        return {"path": os.path.abspath(path), "kind": "unreadable"}


class CasePlanner:
    """The inputs of one run (DICOM series split, identities, base names: the slow part, done once) and their
    case folders under OUTDIR (:meth:`plan`, cheap: it can be redone under the OUTDIR lock)."""

    def __init__(self, paths: list[Path], out_dir: Path, series_uid: str | None = None) -> None:
        self.out = Path(out_dir)
        self.planner = _Planner(paths, self.out)
        self.planner.check_out_dir()
        self.inputs = [ci for p in paths for ci in _case_inputs(p, series_uid)]
        self.identities = [_identity(ci.path) for ci in self.inputs]
        for ci, identity in zip(self.inputs, self.identities, strict=True):
            if ci.series is not None:
                identity.update(series=ci.series, series_fingerprint=ci.fingerprint)
        self.bases = [case_base_name(ci.path) if not ci.suffix else
                      safe_case_name(f"{case_base_name(ci.path)}-{ci.suffix}") for ci in self.inputs]

    def _earlier(self, i: int) -> PlannedCase | None:
        """The folder already holding input i's results (its manifest names the same input), if any."""
        planner, ci = self.planner, self.inputs[i]
        for name in candidates(self.bases[i]):
            present = planner.taken(name)
            if not present:
                return None
            for real_name in present:
                folder = planner.usable(real_name)
                if folder is not None and folder.is_dir() and CaseFolder(folder, self.identities[i]).same_input():
                    planner.claim(real_name)
                    return PlannedCase(ci.path, real_name, folder, self.identities[i], True, ci.series)
        return None

    def _free(self, i: int) -> PlannedCase:
        """The first name free up to case (neither in OUTDIR nor claimed in this plan)."""
        planner, ci = self.planner, self.inputs[i]
        for name in candidates(self.bases[i]):
            folder = planner.usable(name)
            if folder is not None and not planner.taken(name) and not os.path.lexists(folder):
                planner.claim(name)
                return PlannedCase(ci.path, name, folder, self.identities[i], False, ci.series)
        raise PlacementError(f"{printable(ci.path)}: no free case folder name under {printable(self.out)}")

    def plan(self) -> list[PlannedCase]:
        """Every input's case folder against what OUTDIR holds now: its earlier folder, else the first free name."""
        self.planner.scan()
        plan: list[PlannedCase | None] = [self._earlier(i) for i in range(len(self.inputs))]
        return [p if p is not None else self._free(i) for i, p in enumerate(plan)]


def plan_cases(paths: list[Path], out_dir: Path, series_uid: str | None = None) -> list[PlannedCase]:
    """The case folder of every input (see the module docstring); PlacementError before any work."""
    return CasePlanner(paths, out_dir, series_uid).plan()


def claim_cases(planner: CasePlanner, rank: int = 0, world_size: int = 1) -> list[PlannedCase]:
    """Plan again and claim, as one step under the OUTDIR lock: every new case folder of this process's share
    (``plan[rank::world_size]``, torchrun) is made with a manifest naming its input before the lock is released,
    so concurrent runs into one OUTDIR never share a folder (the same input twice shares its folder, as it would
    one after the other). OUTDIR must exist. Returns the whole plan."""
    with folder_lock(planner.out):
        plan = planner.plan()
        for planned in plan[rank::world_size]:
            if not planned.existing:
                CaseFolder(planned.folder, planned.identity, planned.name).claim()
    return plan


def release_claim(planned: PlannedCase) -> None:
    """Remove a case folder this run claimed and then wrote nothing into (the case failed before writing):
    only when it holds nothing but its manifest, unchanged (under the OUTDIR lock)."""
    with folder_lock(planned.folder.parent):
        folder = CaseFolder(planned.folder, planned.identity, planned.name)
        try:
            if folder.same_input() and not folder.files and os.listdir(planned.folder) == [MANIFEST_NAME]:
                (planned.folder / MANIFEST_NAME).unlink()
                planned.folder.rmdir()
        except OSError:
            pass  # it stays: a claimed folder is reused by the next run of this input
