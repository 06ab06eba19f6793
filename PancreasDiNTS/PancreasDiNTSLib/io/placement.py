"""Where each case's outputs go: safe case names, folders matched to their input, no overlap with inputs.

Rules (README, "Output folders"):

- The case name comes from the input's absolute path (``.`` is the folder's real name; a DICOM file stands for
  its series folder), without image suffixes, made safe on every OS: control and format characters and
  ``<>:"/\\|?*`` become ``_``, leading/trailing dots and spaces go (never empty, ``.``, ``..`` or hidden),
  Windows device names (CON, NUL, COM1...) get a ``_`` prefix, at most 96 UTF-8 bytes; empty -> ``case``.
- Identity: a folder ``OUTDIR/<name>`` is this input's only when its manifest names the same input
  (core.ownership.input_identity). Otherwise the case takes the first free name of ``<name>``, ``<name>-2``,
  ``<name>-3``... (compared case-insensitively within one call), never another input's folder.
- A DICOM folder with several series becomes one case per series (``<folder>-<number-description>``; identity
  adds the series' content fingerprint); ``series_uid`` (``--series``) keeps only that series of each folder.
- A case folder is never an input, an ancestor or a descendant of an input, OUTDIR itself, a symlink or outside
  OUTDIR; an OUTDIR inside an input folder is refused too. Refusals are PlacementError (exit 2), before any work.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PancreasDiNTSLib.core.errors import PancreasDiNTSError, PlacementError, printable
from PancreasDiNTSLib.core.ownership import CaseFolder, input_identity
from PancreasDiNTSLib.io.dicom import folder_cases
from PancreasDiNTSLib.io.images import IMAGE_SUFFIXES, case_name, is_dicom_file

MAX_NAME_BYTES = 96
FALLBACK_NAME = "case"
MAX_CANDIDATES = 10_000
_FORBIDDEN = set('<>:"/\\|?*')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{p}{i}" for p in ("COM", "LPT")
                                                                         for i in range(1, 10)}


def safe_case_name(raw: str, limit: int = MAX_NAME_BYTES) -> str:
    """A folder name that is valid, visible and unambiguous on Linux, macOS and Windows."""
    text = unicodedata.normalize("NFC", raw)
    text = "".join("_" if (unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
                           or c in _FORBIDDEN) else c for c in text)
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

    def check_out_dir(self) -> None:
        for path, fps in self.prints:
            for fp in fps:
                if fp.is_dir() and (self.out_real == fp or fp in self.out_real.parents):
                    raise PlacementError(f"-o {printable(self.out)}: lies inside the input folder "
                                         f"{printable(path)}; choose an output folder outside the inputs")
                if self.out_real == fp:
                    raise PlacementError(f"-o {printable(self.out)}: is the input {printable(path)}; choose an "
                                         "output folder")

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


def plan_cases(paths: list[Path], out_dir: Path, series_uid: str | None = None) -> list[PlannedCase]:
    """The case folder of every input (see the module docstring); PlacementError before any work."""
    planner = _Planner(paths, Path(out_dir))
    planner.check_out_dir()
    inputs = [ci for p in paths for ci in _case_inputs(p, series_uid)]
    identities = [_identity(ci.path) for ci in inputs]
    for ci, identity in zip(inputs, identities, strict=True):
        if ci.series is not None:
            identity.update(series=ci.series, series_fingerprint=ci.fingerprint)
    bases = [case_base_name(ci.path) if not ci.suffix else
             safe_case_name(f"{case_base_name(ci.path)}-{ci.suffix}") for ci in inputs]
    plan: list[PlannedCase | None] = [None] * len(inputs)
    for i, ci in enumerate(inputs):  # 1: a folder already holding this input's results
        for name in candidates(bases[i]):
            folder = planner.usable(name)
            if folder is None:
                if os.path.lexists(planner.out / name):
                    continue
                break
            if not os.path.lexists(folder):
                break
            if folder.is_dir() and CaseFolder(folder, identities[i]).same_input():
                planner.claim(name)
                plan[i] = PlannedCase(ci.path, name, folder, identities[i], True, ci.series)
                break
    for i, ci in enumerate(inputs):  # 2: the first free name
        if plan[i] is not None:
            continue
        for name in candidates(bases[i]):
            folder = planner.usable(name)
            if folder is not None and not os.path.lexists(folder):
                planner.claim(name)
                plan[i] = PlannedCase(ci.path, name, folder, identities[i], False, ci.series)
                break
        else:
            raise PlacementError(f"{printable(ci.path)}: no free case folder name under {printable(out_dir)}")
    return [p for p in plan if p is not None]
