"""Property test of output placement (issue 11): random input trees (NIfTI files, DICOM series folders, odd names
with leading dots, spaces, unicode, control characters, Windows device names, symlinks), random OUTDIR placements
(new, equal to or containing inputs, inside an input series) and random sequences of runs with random --format /
--overwrite. After every run: each input is byte-identical, every file the engine did not write still exists
unchanged, nothing appeared outside OUTDIR, no input folder gained a file, and every case folder's report names
the input it was made from.

The runs go through the real batch driver (`run_segment`: expansion, planning, skip, prefetch, segment_case,
writers, manifests, summary), with a stub network (labels from an HU threshold) so that an example takes a
fraction of a second.

Issue 26: rounds of concurrent runs into one OUTDIR (threads of this process: the OUTDIR lock is an OS file lock
taken per open file, so threads contend for it exactly as processes do) over inputs that share a file name,
with random user edits between the rounds (an engine output corrected, a file dropped under a name a later run
plans, a note). After every round: each patient has one folder and its labels are that patient's, every edit
is kept byte for byte, every other file in a case folder is proven by its manifest digest, and summary.json
keeps a row for every case any run reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from image_files import write_dicom_series
from PancreasDiNTSLib.core.errors import PlacementError
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME, file_digest
from PancreasDiNTSLib.core.request import Region
from PancreasDiNTSLib.inference.batch import SegmentSettings, run_segment
from PancreasDiNTSLib.inference.segmenter import Inverted

NAMES = ["ct", "ct", "CT", ".hidden", "..", "...", "a b", " lead", "ünïcødé", "CON", "nul", "x\ny", "tab\there",
         "ok  fake: 999 mL", "-dash", "long" * 30]
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


class StubSegmenter:
    """The Segmenter interface the pipeline uses, without a network: labels from an HU threshold."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.fast = None
        self.sw_batch_size = 1
        self.bundle = SimpleNamespace(name="stub", version="0", describe=lambda: {"name": "stub"})

    def describe(self) -> dict:
        return {"mode": "stub"}

    def preprocess(self, image):
        return image

    def infer(self, pre, on_window=None):
        return pre

    def postprocess(self, logits, pre) -> np.ndarray:
        a = np.asarray(logits)[0]
        return ((a > -200).astype(np.uint8) + (a > 100).astype(np.uint8)).astype(np.uint8)

    def invert(self, logits, pre, readout=True) -> Inverted:
        labels = self.postprocess(logits, pre)
        return Inverted(labels, np.full(labels.shape, 200, np.uint8), None)


def ct_volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 300, size=(6, 6, 4)).astype(np.int16)
    data[0, 0, 0] = -1000
    return data


def digest(p: Path) -> str:
    return "link->" + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else hashlib.sha256(
        p.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))}


def inside(p: Path, folder: Path) -> bool:
    p, folder = Path(os.path.realpath(p)), Path(os.path.realpath(folder))
    return p == folder or folder in p.parents


inputs_strategy = st.lists(st.tuples(st.sampled_from(["nifti", "dicom"]), st.integers(0, 2),
                                     st.sampled_from(NAMES)), min_size=1, max_size=4)
runs_strategy = st.lists(st.tuples(st.lists(st.sampled_from(["nifti", "seg.nrrd", "dicom-seg"]), min_size=1,
                                            max_size=3, unique=True), st.booleans(), st.booleans()),
                         min_size=1, max_size=3)
OUTDIRS = ["new", "root", "d0", "in_series", "is_series", "sub"]


def build(root: Path, specs: list[tuple[str, int, str]], symlink: bool) -> tuple[list[Path], list[Path]]:
    """Inputs under root/d0, root/d1/sub, root/d2 (files and DICOM folders); user notes next to them."""
    folders = [root / "d0", root / "d1" / "sub", root / "d2"]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
        (f / "notes.txt").write_text("user notes")
    made: list[Path] = []
    for k, (kind, where, name) in enumerate(specs):
        if kind == "nifti":
            path = folders[where] / f"{name}.nii.gz"
            if path.exists():
                continue
            nib.save(nib.Nifti1Image(ct_volume(k), AFFINE), str(path))
        else:
            path = folders[where] / f"{name}_series"
            if path.exists():
                continue
            write_dicom_series(ct_volume(k), AFFINE, path)
        made.append(path)
    links = []
    if symlink and any(p.is_file() for p in made):
        target = next(p for p in made if p.is_file())
        link = root / "d2" / "linked.nii.gz"
        if not link.exists():
            link.symlink_to(target)
            links.append(link)
    return made, links


def choose_outdir(root: Path, which: str, made: list[Path]) -> Path:
    series = [p for p in made if p.is_dir()]
    if which == "root":
        return root
    if which == "d0":
        return root / "d0"
    if which == "sub":
        return root / "d1"
    if which == "in_series" and series:
        return series[0] / "results"
    if which == "is_series" and series:
        return series[0]
    return root / "out"


def check_after(root: Path, out: Path, before: dict[str, str], user: dict[Path, bytes], made: list[Path],
                series_listing: dict[Path, set[str]]) -> None:
    now = tree(root)
    for rel, h in before.items():  # every input and every user file: still there, unchanged
        assert now.get(rel) == h, f"{rel!r} changed or vanished"
    for path, content in user.items():
        assert path.read_bytes() == content, path
    for rel in set(now) - set(before):  # anything new is inside OUTDIR and not inside an input
        assert inside(root / rel, out), f"{rel!r} written outside OUTDIR"
        assert not any(inside(root / rel, m) for m in made if m.is_dir()), f"{rel!r} written into an input"
    for folder, names in series_listing.items():
        assert {p.name for p in folder.iterdir()} == names
    summary = out / "summary.json"
    if summary.is_file():
        for r in json.loads(summary.read_text())["results"]:
            if r["status"] in ("ok", "skipped"):
                report = json.loads((Path(r["output_dir"]) / "report.json").read_text())
                assert os.path.realpath(report["input"]) == os.path.realpath(r["input"])
                assert inside(Path(r["output_dir"]), out) and Path(r["output_dir"]) != out


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(specs=inputs_strategy, symlink=st.booleans(), which=st.sampled_from(OUTDIRS), runs=runs_strategy,
       plant=st.integers(0, 10))
@pytest.mark.slow
def test_output_placement_never_loses_or_misplaces_data(specs, symlink, which, runs, plant):
    stub = StubSegmenter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made, links = build(root, specs, symlink)
        out = choose_outdir(root, which, made)
        user: dict[Path, bytes] = {}
        if not out.exists() and not any(inside(out, m) for m in made):
            out.mkdir(parents=True)
            (out / "notes.txt").write_bytes(b"my results notes")
        series_listing = {m: {p.name for p in m.iterdir()} for m in made if m.is_dir()}
        initial = tree(root)  # inputs and the user's files: never changed by any run
        for formats, overwrite, by_folder in runs:
            previous = tree(root)
            args = sorted({str(p.parent) for p in made}) if by_folder else [str(p) for p in made + links]
            try:
                run_segment(SegmentSettings(tuple(args), out, "stub", formats=tuple(formats), progress="none",
                                            overwrite=overwrite, region=Region("whole")),
                            segmenter=stub)  # type: ignore[arg-type]
            except PlacementError:
                event(f"refused (OUTDIR {which})")
                assert tree(root) == previous, "a refused run changed something"
                return
            check_after(root, out, initial, user, made, series_listing)
            event(f"ran (OUTDIR {which}, {'folders' if by_folder else 'files'})")
            cases = sorted(p for p in out.iterdir() if (p / MANIFEST_NAME).is_file()) if out.is_dir() else []
            if cases:  # the user adds a file to a case folder; it must survive every later run
                added = cases[plant % len(cases)] / f"labels_corrected_{plant}.nii.gz"
                added.write_bytes(b"manual correction %d" % plant)
                user[added] = added.read_bytes()


# --------------------------------------------------------------------------- issue 26: concurrent runs, edits


def stub_labels(path: Path) -> np.ndarray:
    """The labels StubSegmenter makes for a NIfTI input."""
    a = np.asarray(nib.load(str(path)).dataobj)
    return ((a > -200).astype(np.uint8) + (a > 100).astype(np.uint8)).astype(np.uint8)


def check_cases(out: Path, user: dict[Path, bytes], reported: set[tuple[str, str]]) -> None:
    """One folder per patient holding that patient's labels; user files kept; the rest proven; rows kept."""
    owner: dict[str, str] = {}
    for case in sorted(p for p in out.iterdir() if (p / MANIFEST_NAME).is_file()):
        manifest = json.loads((case / MANIFEST_NAME).read_text())
        source = manifest["input"]["path"]
        assert source not in owner, f"{source} has two folders: {owner.get(source)} and {case.name}"
        owner[source] = case.name
        for name, entry in manifest["files"].items():
            path = case / name
            if path.is_file() and path not in user:
                assert "replacing" not in entry and file_digest(path) == entry, f"{path} is not proven"
        labels = case / "labels.nii.gz"
        if labels.is_file() and labels not in user:
            assert np.array_equal(np.asarray(nib.load(str(labels)).dataobj), stub_labels(Path(source))), \
                f"{labels} holds another patient's labels"
    for path, content in user.items():
        assert path.read_bytes() == content, f"the user's {path} was replaced"
    rows = {(r["case"], r["input"]) for r in json.loads((out / "summary.json").read_text())["results"]}
    assert reported <= rows, f"summary.json dropped {reported - rows}"


def user_edit(out: Path, kind: str, pick: int, user: dict[Path, bytes]) -> None:
    """Between rounds: the user corrects an engine output, drops a file under a planned name, or adds a note."""
    cases = sorted(p for p in out.iterdir() if (p / MANIFEST_NAME).is_file()) if out.is_dir() else []
    if not cases:
        return
    case = cases[pick % len(cases)]
    name = {"correct": "labels.nii.gz", "drop": "segmentation.seg.nrrd", "note": f"note_{pick}.txt"}[kind]
    if kind == "drop" and (case / name).exists():
        name = "report.pdf"
    target = case / name
    if kind == "correct" and not target.is_file():
        return
    target.write_bytes(b"the user's %s %d" % (kind.encode(), pick))
    user[target] = target.read_bytes()


round_strategy = st.tuples(
    st.lists(st.tuples(st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True),
                       st.lists(st.sampled_from(["nifti", "seg.nrrd"]), min_size=1, max_size=2, unique=True),
                       st.booleans()), min_size=2, max_size=3),
    st.lists(st.tuples(st.sampled_from(["correct", "drop", "note"]), st.integers(0, 20)), max_size=2))


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(rounds=st.lists(round_strategy, min_size=1, max_size=3))
def test_concurrent_runs_and_edits_between_runs_keep_every_patient(rounds):
    stub = StubSegmenter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = []
        for k, name in enumerate(["ct", "ct", "CT", "ct", "Ct"]):  # five patients, file names that collide
            path = root / f"site{k}" / f"{name}.nii.gz"
            path.parent.mkdir()
            nib.save(nib.Nifti1Image(ct_volume(100 + k), AFFINE), str(path))
            inputs.append(path)
        before = {p: p.read_bytes() for p in inputs}
        out = root / "out"
        user: dict[Path, bytes] = {}
        reported: set[tuple[str, str]] = set()

        def one_run(job: tuple[list[int], list[str], bool]):
            chosen, formats, overwrite = job
            return run_segment(SegmentSettings(tuple(str(inputs[i]) for i in chosen), out, "stub",
                                               formats=tuple(formats), progress="none", overwrite=overwrite,
                                               prefetch=False, region=Region("whole")),
                               segmenter=stub)  # type: ignore[arg-type]

        for jobs, edits in rounds:
            with ThreadPoolExecutor(len(jobs)) as pool:
                summaries = list(pool.map(one_run, jobs))
            for summary in summaries:
                reported |= {(r.case, r.input) for r in summary.results}
                for r in summary.results:
                    if r.status == "failed":  # only ever because of a user's file, said in one line
                        assert "not written by pancreas-dints" in r.message, r.message
                        event("a user's file stopped an output")
            event(f"{len(jobs)} concurrent runs")
            check_cases(out, user, reported)
            for kind, pick in edits:
                user_edit(out, kind, pick, user)
        assert {p: p.read_bytes() for p in inputs} == before
