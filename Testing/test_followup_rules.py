"""Follow-up comparison: the matching and the response rules on constructed inputs (boundary values), and the
refusals that need no registration (case folders built from tiny label maps with the engine's writers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.followup import match, response
from PancreasDiNTSLib.followup.cases import check_pair, open_side
from PancreasDiNTSLib.io.writers import save_nifti, write_report
from PancreasDiNTSLib.readout.combined import case_readout


def groups_of(overlap, pv, cv, dist=None):
    overlap = np.asarray(overlap, dtype=float)
    if dist is None:
        dist = np.full(overlap.shape, 100.0)
    return [(g.kind, g.prior, g.current, g.by) for g in match.match_lesions(overlap, pv, cv, dist)]


def test_assignment_is_not_greedy() -> None:
    # greedy (largest Dice first) would pair prior 0 with current 0 and leave prior 1 without a partner;
    # the assignment maximises the total: 0-1 and 1-0
    overlap = [[1.0, 0.9], [0.8, 0.0]]
    got = groups_of(overlap, [2.0, 2.0], [2.0, 2.0])
    assert got == [("matched", [0], [1], "overlap"), ("matched", [1], [0], "overlap")]


def test_split_merge_new_gone() -> None:
    # prior 0 split into current 0 and 1; prior 1 gone; current 2 new
    got = groups_of([[0.5, 0.4, 0.0], [0.0, 0.0, 0.0]], [1.0, 0.3], [0.5, 0.4, 0.2])
    assert got == [("split", [0], [0, 1], "overlap"), ("no longer seen", [1], [], None), ("new", [], [2], None)]
    # the same the other way round is a merge
    got = groups_of(np.array([[0.5, 0.4, 0.0], [0.0, 0.0, 0.0]]).T, [0.5, 0.4, 0.2], [1.0, 0.3])
    assert got[0] == ("merged", [0, 1], [0], "overlap")
    # a lesion touching another only at its edge (< 30 % of its volume) is not a part of it
    got = groups_of([[0.5, 0.05]], [1.0], [0.5, 0.5])
    assert ("new", [], [1], None) in got


def test_centroid_fallback_limit() -> None:
    limit = match.MAX_CENTROID_DISTANCE_MM
    z = np.zeros((2, 2))
    dist = np.array([[limit, 50.0], [50.0, limit + 0.01]])
    got = groups_of(z, [1.0, 1.0], [1.0, 1.0], dist)
    assert ("matched", [0], [0], "centroid") in got  # exactly at the limit: matched
    assert ("no longer seen", [1], [], None) in got and ("new", [], [1], None) in got  # beyond it: not
    # by assignment: the pair that minimises the total distance wins, not the nearest first
    dist = np.array([[1.0, 2.0], [2.0, 9.5]])
    got = groups_of(z, [1.0, 1.0], [1.0, 1.0], dist)
    assert ("matched", [0], [1], "centroid") in got and ("matched", [1], [0], "centroid") in got


def test_confidence_words() -> None:
    groups = match.match_lesions(np.array([[0.9]]), np.array([1.0]), np.array([1.0]), np.array([[0.1]]))
    assert groups[0].confidence == "high"
    groups = match.match_lesions(np.zeros((1, 1)), np.array([1.0]), np.array([1.0]), np.array([[8.0]]))
    assert groups[0].confidence == "low" and groups[0].by == "centroid"


@pytest.mark.parametrize(("base", "cur", "new", "left", "before", "category"), [
    (25.0, 30.0, 0, 1, 1, "PD"),      # exactly +20 % and exactly +5 mm
    (25.0, 29.99, 0, 1, 1, "SD"),     # just under
    (20.0, 24.0, 0, 1, 1, "SD"),      # +20 % but only +4 mm
    (50.0, 59.99, 0, 1, 1, "SD"),
    (50.0, 60.0, 0, 1, 1, "PD"),      # +20 %, +10 mm
    (50.0, 35.0, 0, 1, 1, "PR"),      # exactly -30 %
    (50.0, 35.01, 0, 1, 1, "SD"),     # just under 30 %
    (33.3, 23.31, 0, 1, 1, "PR"),     # exactly -30 % of a sum that is not round
    (30.0, 30.0, 1, 2, 1, "PD"),      # a new lesion
    (30.0, 0.0, 0, 0, 1, "CR"),       # nothing left
    (None, None, 0, 0, 0, "NE"),      # no lesion at either time point
    (None, None, 0, 1, 1, "non-CR/non-PD"),  # only non-measurable lesions
])
def test_recist_boundaries(base, cur, new, left, before, category) -> None:
    out = response.recist_category(base, cur, new, left, before)
    assert out["category"] == category, out
    assert out["label"] == "computed from the automatic segmentation; not a clinical response assessment"


@pytest.mark.parametrize(("prior", "current", "new", "left", "category"), [
    (1.0, 1.728, 0, 1, "PD"), (1.0, 1.7279, 0, 1, "SD"), (1.0, 0.343, 0, 1, "PR"), (1.0, 0.3431, 0, 1, "SD"),
    (1.0, 0.0, 0, 0, "CR"), (1.0, 0.2, 1, 2, "PD"), (0.0, 0.0, 0, 0, "NE"),
])
def test_volumetric_boundaries(prior, current, new, left, category) -> None:
    out = response.volumetric_response(prior, current, new, left)
    assert out["category"] == category and out["label"] == response.LABEL


def test_measurable_targets() -> None:
    targets, limit = response.target_lesions([10.0, 9.99, 25.0, 12.0, None], slice_mm=2.5)
    assert limit == 10.0 and targets == [2, 3]  # the two longest measurable (two per organ)
    targets, limit = response.target_lesions([10.0, 11.99, 12.0], slice_mm=6.0)
    assert limit == 12.0 and targets == [2]  # >= twice the slice spacing


def test_lesion_status_thresholds() -> None:
    assert response.lesion_status(1.0, 1.2, noise=0.05) == "grown"  # exactly +20 %
    assert response.lesion_status(1.0, 1.19, noise=0.05) == "stable"
    assert response.lesion_status(1.0, 1.5, noise=0.6) == "stable"  # within the noise
    assert response.lesion_status(1.0, 0.8, noise=0.05) == "shrunk"
    small = response.noise_ml(0.5, (1.6, 1.6, 2.5))
    assert response.noise_ml(1.0, (1.6, 1.6, 2.5)) > small > response.noise_ml(0.5, (0.8, 0.8, 1.0))


# ------------------------------------------------------------------------------------ refusals before any work


def case_folder(root: Path, name: str, labels: np.ndarray, schema: str | None = None, report: bool = True) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct = root / f"{name}.nii.gz"
    save_nifti(ct, np.zeros(labels.shape, np.int16), affine, np.int16)
    folder = root / name
    folder.mkdir()
    save_nifti(folder / "labels.nii.gz", labels, affine, np.uint8)
    if report:
        readout = case_readout(labels, affine)
        if schema:
            readout["schema"] = schema
        write_report(folder / "report.json", {"case": name, "input": str(ct), "readout": readout})
    return folder


@pytest.fixture
def gland() -> np.ndarray:
    lab = np.zeros((24, 16, 12), np.uint8)
    lab[4:20, 6:10, 4:8] = 1
    lab[6:9, 6:9, 5:8] = 2
    return lab


def test_refusals(tmp_path: Path, gland: np.ndarray) -> None:
    good = case_folder(tmp_path, "good", gland)
    no_report = case_folder(tmp_path, "no_report", gland, report=False)
    (no_labels := case_folder(tmp_path, "no_labels", gland)).joinpath("labels.nii.gz").unlink()
    chest = case_folder(tmp_path, "chest", np.zeros_like(gland))
    old = case_folder(tmp_path, "old", gland, schema="pancreas-dints.readout/0")
    with pytest.raises(InputError, match=r"no labels\.nii\.gz"):
        open_side("prior", no_labels)
    with pytest.raises(InputError, match=r"no report\.json"):
        open_side("prior", no_report)
    with pytest.raises(InputError, match="no pancreas segmented.*different body part"):
        open_side("current", chest)
    with pytest.raises(InputError, match="read-out versions differ"):
        check_pair(open_side("prior", good), open_side("current", old))
    report = json.loads((good / "report.json").read_text())
    Path(report["input"]).unlink()
    with pytest.raises(InputError, match="is not there"):
        open_side("prior", good)


def test_a_speck_is_listed_new_but_is_not_progression() -> None:
    assert response.counts_as_new({"longest_axial_diameter_mm": response.NEW_LESION_MIN_MM})
    assert not response.counts_as_new({"longest_axial_diameter_mm": 4.99})
    assert not response.counts_as_new({"longest_axial_diameter_mm": None})  # a single voxel has no diameter


def test_pairs_csv_rules(tmp_path: Path) -> None:
    from PancreasDiNTSLib.core.errors import UsageError
    from PancreasDiNTSLib.followup.batch import read_pairs

    table = tmp_path / "pairs.csv"
    table.write_text("prior,current,name\na/p,a/c,\nb/p,b/c,second one\n")
    pairs = read_pairs(table)
    assert [(n, p.relative_to(tmp_path).as_posix()) for n, p, _ in pairs] == [("pair_0001", "a/p"),
                                                                               ("second_one", "b/p")]
    for text, message in (("prior,current,name\na,b,compare.csv\n", "taken by compare"),
                          ("prior,current,name\na,b,x\nc,d,x\n", "used twice"),
                          ("prior,name\na,b\n", "prior,current"), ("prior,current\na,\n", "both needed")):
        table.write_text(text)
        with pytest.raises(UsageError, match=message):
            read_pairs(table)
