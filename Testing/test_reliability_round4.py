"""Issue 31 (reliability round 4), one test per finding on real files and real processes: a rerun keeps a
reviewer's work (1). The server's store faults, the client against a misbehaving server, tokens and the rest are
in Testing/test_server_round4.py."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PancreasDiNTSLib.core.ownership import MANIFEST_NAME, file_digest
from PancreasDiNTSLib.review import batch, record
from test_output_safety_round3 import CLI, exited_within, paused_child, seg, segment_cmd, tiny_ct  # noqa: F401

REVIEW_FILES = ("labels_corrected.nii.gz", "segmentation_corrected.seg.nrrd", "review.json")


def correct(case: Path) -> dict:
    """A reviewer's corrected save: one more pancreas voxel; the .seg.nrrd writer copies the engine's file."""
    labels = record.load_labels(case / "labels.nii.gz")
    corrected = np.asarray(labels.dataobj).copy()
    corrected[0, 0, 0] = 1
    review = record.ReviewInput("corrected", "alice", labels=corrected,
                                write_segmentation=lambda dest: shutil.copyfile(case / "segmentation.seg.nrrd", dest))
    return record.save_review(case, review)


def digests(case: Path) -> dict[str, dict]:
    return {n: file_digest(case / n) for n in REVIEW_FILES}


@pytest.mark.slow
def test_finding1_a_rerun_keeps_the_reviewers_corrections(tmp_path, tiny_ct, tiny_bundle, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")[0] == 0
    case = out / "tiny"
    saved = correct(case)
    assert saved["labels_sha256"] == file_digest(case / "labels.nii.gz")["sha256"]
    kept = digests(case)
    # a user's file that a hand-edited manifest lists with its true digest
    (case / "notes.txt").write_text("my notes\n")
    manifest = json.loads((case / MANIFEST_NAME).read_text())
    manifest["files"]["notes.txt"] = file_digest(case / "notes.txt")
    (case / MANIFEST_NAME).write_text(json.dumps(manifest))

    # one more format (the labels do not change: same model, same CT) and --overwrite with fewer formats
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd,confidence")
    assert code == 0, err
    code, err = seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti", "--overwrite")
    assert code == 0, err
    assert digests(case) == kept  # nothing a reviewer made was deleted or replaced
    assert (case / "notes.txt").read_text() == "my notes\n"
    assert not (case / "segmentation.seg.nrrd").exists()  # the engine's own stale output is still cleaned up
    listed = json.loads((case / MANIFEST_NAME).read_text())["files"]
    assert set(REVIEW_FILES) <= set(listed)  # still listed: the next review save may replace them
    assert batch.load_case(case).status == "corrected"  # same labels: the review still holds

    # labels that change (another model): the review is flagged as made on the earlier labels, its files kept
    other = tmp_path / "other-model"
    shutil.copytree(tiny_bundle, other)
    weights = next((other / "models").glob("*.pt"))
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=False)
    inner = state.get("state_dict", state) if isinstance(state, dict) else state
    for value in inner.values():
        if hasattr(value, "dtype") and value.is_floating_point():
            value.add_(torch.randn_like(value))
    torch.save(state, weights)
    code, err = seg(capsys, [tiny_ct], out, other, "--format", "nifti,seg.nrrd", "--overwrite")
    assert code == 0, err
    assert digests(case) == kept
    assert file_digest(case / "labels.nii.gz")["sha256"] != saved["labels_sha256"]  # the perturbed model differs
    assert "made on the earlier labels" in err and err.count("\n") <= 4, err
    loaded = batch.load_case(case)
    assert loaded.status == "corrected (earlier labels)" and "earlier labels" in loaded.problem
    assert batch.segmentation_to_open(case) == (case / "segmentation.seg.nrrd", False)
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert rows[0]["status"] == "corrected (earlier labels)"


@pytest.mark.subprocess
@pytest.mark.slow
def test_finding1_a_save_during_a_rerun_survives_the_run(tmp_path, tiny_ct, tiny_bundle, cli_env, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert seg(capsys, [tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd")[0] == 0
    case = out / "tiny"
    go = tmp_path / "go"
    proc = paused_child(dict(cli_env, OMP_NUM_THREADS="1"), go, ("PancreasDiNTSLib.io.writers", "write_label_nifti"),
                        segment_cmd([tiny_ct], out, tiny_bundle, "--format", "nifti,seg.nrrd", "--overwrite"))
    correct(case)  # the reviewer saves while the rerun is inferring
    kept = digests(case)
    go.touch()
    assert exited_within(proc, 300) == 0
    assert digests(case) == kept
    assert batch.load_case(case).status == "corrected"
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert [r["status"] for r in rows] == ["corrected"]


def test_finding1_only_a_review_save_writes_a_reviewers_file(tmp_path):
    from PancreasDiNTSLib.core.errors import OutputError
    from PancreasDiNTSLib.core.ownership import CaseFolder

    folder = CaseFolder(tmp_path / "case", {"path": "x"}, "case")
    folder.begin([])
    with pytest.raises(OutputError, match="a reviewer's file"):
        folder.write("review.json", lambda dest: dest.write_text("{}"))
    CaseFolder(tmp_path / "case", {"path": "x"}, "case", for_review=True).write(
        "review.json", lambda dest: dest.write_text("{}"))
    run = CaseFolder(tmp_path / "case", {"path": "x"}, "case")
    run.finish([])
    assert (tmp_path / "case" / "review.json").read_text() == "{}"
