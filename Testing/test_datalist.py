"""Datalists (bundle split rule), case validation, training transforms and the RAM-budget cache."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PancreasDiNTSLib.core.errors import InputError
from PancreasDiNTSLib.io.writers import save_nifti
from PancreasDiNTSLib.synthetic.phantom import write_msd_dataset
from PancreasDiNTSLib.training.data import (
    BudgetCacheDataset,
    DilatedClassMapsd,
    build_deterministic_transforms,
    build_random_transforms,
    check_cases,
    estimate_case_bytes,
    load_datalist,
    prepare_datalist,
    sample_nbytes,
    write_datalist,
)
from PancreasDiNTSLib.training.settings import make_settings


def _msd_names(root, n):
    """An MSD Task07-shaped folder with n labelled cases (names with gaps, as in the real data) + macOS junk."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    names = [f"pancreas_{i:03d}.nii.gz" for i in range(1, 3 * n, 3)][:n]
    for name in names:
        (root / "imagesTr" / name).write_bytes(b"")
        (root / "labelsTr" / name).write_bytes(b"")
    (root / "labelsTr" / "._pancreas_001.nii.gz").write_bytes(b"")  # AppleDouble files ship in the MSD tar
    return names


def test_bundle_split_counts_and_rule(tmp_path):
    names = _msd_names(tmp_path / "Task07_Pancreas", 281)
    dl = prepare_datalist(tmp_path / "Task07_Pancreas")
    assert [len(dl[k]) for k in ("training", "validation", "testing")] == [196, 56, 29]
    # the bundle's rule, written out: sorted labelsTr, set_determinism(123), two train_test_split calls
    from monai.utils import set_determinism
    from sklearn.model_selection import train_test_split

    items = [{"label": f"labelsTr/{n}", "image": f"imagesTr/{n}"} for n in sorted(names)]
    set_determinism(seed=123)
    train, other = train_test_split(items, train_size=196)
    val, test = train_test_split(other, train_size=0.66)
    set_determinism(seed=None)
    assert dl["training"] == train and dl["validation"] == val and dl["testing"] == test
    # every case once, none of the hidden files, and deterministic across calls
    all_items = dl["training"] + dl["validation"] + dl["testing"]
    assert sorted(i["label"] for i in all_items) == sorted(f"labelsTr/{n}" for n in names)
    assert prepare_datalist(tmp_path / "Task07_Pancreas")["testing"] == dl["testing"]


@pytest.mark.slow
def test_split_of_a_phantom_folder_and_cli(tmp_path, cli_env):
    data = write_msd_dataset(tmp_path / "ph", 10, 0, seed=1, size="tiny")
    out = tmp_path / "dl.json"
    r = subprocess.run([sys.executable, "-m", "PancreasDiNTSLib.cli", "prepare-datalist", "--path", str(data),
                        "-o", str(out)], capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 0, r.stderr
    dl = json.loads(out.read_text())
    assert [len(dl[k]) for k in ("training", "validation", "testing")] == [6, 2, 2]  # 196/281 of 10, then 0.66
    assert "proportion" in r.stderr
    items = load_datalist(out, "training")
    assert all(nib.load(i["image"]).shape == nib.load(i["label"]).shape for i in items)
    check_cases(items)


def test_prepare_datalist_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        prepare_datalist(tmp_path / "nope")
    (tmp_path / "empty" / "labelsTr").mkdir(parents=True)
    with pytest.raises(InputError, match="no .nii"):
        prepare_datalist(tmp_path / "empty")
    _msd_names(tmp_path / "orphan", 5)
    (tmp_path / "orphan" / "imagesTr" / "pancreas_004.nii.gz").unlink()
    with pytest.raises(InputError, match="pancreas_004.nii.gz: label .* has no image"):
        prepare_datalist(tmp_path / "orphan")


@pytest.fixture()
def small_set(tmp_path):
    data = write_msd_dataset(tmp_path / "ph", 3, 0, seed=2, size="tiny")
    dl = prepare_datalist(data)
    write_datalist(dl, tmp_path / "dl.json")
    return data, tmp_path / "dl.json"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_cases_are_named(small_set, tmp_path):
    data, dlpath = small_set
    dl = json.loads(dlpath.read_text())
    case = dl["training"][0]
    name = case["image"].split("/")[-1][: -len(".nii.gz")]
    # empty split
    dl_empty = dict(dl, validation=[])
    write_datalist(dl_empty, tmp_path / "empty.json")
    with pytest.raises(InputError) as e:
        load_datalist(tmp_path / "empty.json", "validation")
    assert "'validation' split is empty" in _one_line(e)
    # missing file
    dl_missing = dict(dl, training=[{"image": "imagesTr/gone.nii.gz", "label": case["label"]}])
    write_datalist(dl_missing, tmp_path / "missing.json")
    with pytest.raises(InputError) as e:
        load_datalist(tmp_path / "missing.json", "training")
    assert _one_line(e).startswith("gone: image file") and "gone.nii.gz" in str(e.value)
    # label values outside {0, 1, 2}
    lab = nib.load(data / case["label"])
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 7
    save_nifti(data / case["label"], arr, lab.affine, np.uint8)
    items = load_datalist(dlpath, "training")
    with pytest.raises(InputError) as e:
        check_cases(items)
    assert _one_line(e).startswith(f"{name}: label") and "value(s) 7" in str(e.value)
    # geometry mismatch: shape, then affine
    save_nifti(data / case["label"], arr[:-1] * 0, lab.affine, np.uint8)
    with pytest.raises(InputError, match=f"{name}: label .* has shape"):
        check_cases(items)
    shifted = lab.affine.copy()
    shifted[0, 3] += 5.0
    save_nifti(data / case["label"], arr * 0, shifted, np.uint8)
    with pytest.raises(InputError, match=f"{name}: label .* different affines"):
        check_cases(items)


def test_dilated_class_maps_equal_bundle_lambda():
    """Same maps as the bundle's ndimage.binary_dilation((x == k), iterations=n) for each class."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    lab = np.zeros((1, 30, 26, 22), dtype=np.uint8)
    lab[0, 10:14, 8:12, 5:9] = 1
    lab[0, 20, 20, 15] = 2
    lab[0, rng.integers(0, 30, 5), rng.integers(0, 26, 5), rng.integers(0, 22, 5)] = 1
    for n in (1, 4, 9):
        out = DilatedClassMapsd(num_classes=3, iterations=n)({"label": torch.from_numpy(lab)})["label4crop"]
        for k in range(3):
            ref = ndimage.binary_dilation(lab == k, iterations=n)[0]
            assert np.array_equal(out[k].numpy().astype(bool), ref)
    # an absent class gives an empty map (RandCropByLabelClassesd then never picks it)
    out = DilatedClassMapsd(num_classes=3, iterations=3)({"label": torch.zeros(1, 5, 5, 5, dtype=torch.uint8)})
    assert out["label4crop"][1:].sum() == 0


def test_training_samples_and_budget_cache(small_set, tmp_path):
    _, dlpath = small_set
    settings = make_settings("tiny")
    items = load_datalist(dlpath, "training") + load_datalist(dlpath, "validation")
    det, rnd = build_deterministic_transforms(settings), build_random_transforms(settings)
    full = BudgetCacheDataset(items, det, None, cache_bytes=1 << 30)
    assert len(full.cache) == len(items)
    sizes = [sample_nbytes(full.cache[i]) for i in range(len(items))]
    for i, it in enumerate(items):  # the header-based estimate is what gets cached (+ small metadata)
        assert abs(estimate_case_bytes(it, settings) - sizes[i]) <= 0.01 * sizes[i] + 4096
    budget = sizes[0] + sizes[1] // 2  # room for the first case only
    part = BudgetCacheDataset(items, det, rnd, cache_bytes=budget, estimate=lambda it: estimate_case_bytes(it, settings))
    assert sorted(part.cache) == [0] and part.cached_bytes <= budget
    none = BudgetCacheDataset(items, det, rnd, cache_bytes=0)
    assert not none.cache
    disk = BudgetCacheDataset(items, det, None, cache_bytes=0, cache_dir=tmp_path / "disk")  # beyond the RAM budget
    assert torch.equal(disk[1]["label4crop"], full.cache[1]["label4crop"]) and any((tmp_path / "disk").iterdir())
    for i in range(len(items)):
        cached = full.cache[i]
        fresh = none.base[i]
        assert torch.equal(cached["image"], fresh["image"]) and torch.equal(cached["label"], fresh["label"])
        assert cached["image"].dtype == torch.float16 and cached["label4crop"].dtype == torch.uint8
        before = cached["image"].clone()
        samples = BudgetCacheDataset.__getitem__(_with_post(full, rnd), i)
        assert torch.equal(cached["image"], before)  # augmentation never writes into the cache
        for s in samples:
            assert tuple(s["image"].shape) == (1, *settings.patch_size) and s["image"].dtype == torch.float32
            assert s["label"].dtype == torch.uint8 and set(s["label"].unique().tolist()) <= {0, 1, 2}
            assert "label4crop" not in s
            assert -0.3 <= float(s["image"].min()) and float(s["image"].max()) <= 1.7  # window [0, 1] + intensity aug


def _with_post(ds, post):
    ds.post = post
    return ds
