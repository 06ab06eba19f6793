"""Synthetic phantoms: HU ranges, labels, anatomy layout, header orientation, determinism, MSD layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PancreasDiNTSLib.core.errors import OutputError
from PancreasDiNTSLib.synthetic.phantom import ORIENTATIONS, make_phantom, write_msd_dataset


def _world(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(label == value)
    return (affine[:3, :3] @ ijk.T).T + affine[:3, 3]


def test_deterministic_by_seed():
    a = make_phantom(11, size="tiny")
    b = make_phantom(11, size="tiny")
    c = make_phantom(12, size="tiny")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hu_ranges_and_labels(seed):
    hu, label, affine, info = make_phantom(seed, size="small", tumour=True, return_info=True)
    assert hu.dtype == np.float32 and label.dtype == np.uint8 and hu.shape == label.shape
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert hu.min() >= -1024 and hu.max() <= 3071
    # air outside the body, fat below zero, bone well above soft tissue
    assert np.percentile(hu, 5) < -900
    assert (hu > 400).sum() > 0
    assert ((hu > -150) & (hu < -50)).mean() > 0.02  # fat (subcutaneous and visceral)
    panc, tum = hu[label == 1], hu[label == 2]
    assert 60 < np.median(panc) < 160
    assert np.median(tum) < np.median(panc) - 20  # hypodense tumour
    # spacing and header
    sx, sy, sz = info.spacing
    assert 0.6 <= sx <= 1.0 and sx == sy and 1.0 <= sz <= 5.0
    assert np.allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), info.spacing)
    assert "".join(nib.aff2axcodes(affine)) == info.orientation


def test_tumour_switch_and_frequency():
    _, label, _ = make_phantom(5, size="tiny", tumour=False)
    assert 2 not in label and 1 in label
    with_tumour = sum(make_phantom(s, size="tiny", return_info=True)[3].has_tumour for s in range(20))
    assert 12 <= with_tumour <= 20  # "usually" a tumour (about 85 %)


def test_anatomy_layout_in_world_coordinates():
    """Pancreas head toward the patient's right and lower, tail toward the left (spleen) and higher; the gland lies
    anterior to the spine; the liver side (right) is brighter in the upper abdomen than the left side."""
    hu, label, affine = make_phantom(3, size="small", orientation="LPS", spacing=(0.8, 0.8, 2.0))
    ras = _world(label, affine, 1)  # NIfTI affines map to RAS+ world coordinates whatever the array order
    x = ras[:, 0]
    right, left = ras[x > np.percentile(x, 85)], ras[x < np.percentile(x, 15)]
    assert right[:, 2].mean() < left[:, 2].mean()  # tail higher than head
    # spine: the brightest compact structure is posterior (lower RAS y) to the pancreas
    bone = _world((hu > 500).astype(np.uint8), affine, 1)
    assert np.median(bone[:, 1]) < ras[:, 1].mean()


@pytest.mark.parametrize("code", ORIENTATIONS)
def test_orientation_codes_are_consistent(code):
    """The same phantom in every orientation is the same volume in world space (checked after reorienting)."""
    ref_hu, ref_lab, ref_aff = make_phantom(8, size="tiny", orientation="RAS")
    hu, lab, aff = make_phantom(8, size="tiny", orientation=code)
    assert "".join(nib.aff2axcodes(aff)) == code
    img = nib.as_closest_canonical(nib.Nifti1Image(lab, aff))
    assert np.allclose(img.affine, ref_aff)
    assert np.array_equal(np.asarray(img.dataobj), ref_lab)
    hu_can = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(hu, aff)).dataobj)
    assert np.array_equal(hu_can, ref_hu)


def test_fixed_shape_and_spacing():
    hu, label, affine = make_phantom(1, shape=(40, 36, 12), spacing=(1.0, 1.0, 3.0), orientation="RAS")
    assert hu.shape == (40, 36, 12)
    assert np.allclose(np.diag(affine)[:3], (1.0, 1.0, 3.0))


def test_slice_spacing_range():
    """--slice-mm: thin slices give the small phantom's pancreas a realistic slice count; the default is unchanged."""
    default = make_phantom(21, size="small", return_info=True)[3]
    same = make_phantom(21, size="small", return_info=True, slice_mm=(1.0, 5.0))[3]
    assert default.spacing == same.spacing and 1.0 <= default.spacing[2] <= 5.0
    thin_slices = []
    for seed in (21, 22, 23):
        _, label, affine, info = make_phantom(seed, size="small", orientation="RAS", return_info=True,
                                              slice_mm=(0.6, 1.2))
        assert 0.6 <= info.spacing[2] <= 1.2
        if seed == 21:  # the same draws otherwise: in-plane spacing as without the option
            assert info.spacing[:2] == default.spacing[:2]
        thin_slices.append(int((label == 1).any(axis=(0, 1)).sum()))
    assert min(thin_slices) >= 10, thin_slices  # a pancreas 10+ slices thick (4-6 with 3-5 mm slices)


def test_msd_layout(tmp_path):
    out = write_msd_dataset(tmp_path / "Task07", 3, 2, seed=4, size="tiny")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["numTest"] == 2
    assert meta["labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    assert meta["modality"] == {"0": "CT"}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(p.name for p in (out / "labelsTr").iterdir())
    assert len(list((out / "imagesTs").iterdir())) == 2
    for entry in meta["training"]:
        img = nib.load(out / entry["image"])
        lab = nib.load(out / entry["label"])
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert set(np.unique(np.asarray(lab.dataobj)).tolist()) <= {0, 1, 2}
    # same seed -> same case, whatever the number of cases
    again = write_msd_dataset(tmp_path / "again", 1, 0, seed=4, size="tiny")
    a = np.asarray(nib.load(out / "imagesTr" / "pancreas_001.nii.gz").dataobj)
    b = np.asarray(nib.load(again / "imagesTr" / "pancreas_001.nii.gz").dataobj)
    assert np.array_equal(a, b)
    with pytest.raises(OutputError, match="not empty"):
        write_msd_dataset(out, 1, 0, seed=4, size="tiny")
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_cli_make_phantoms(tmp_path, cli_env):
    out = tmp_path / "DATA"
    r = subprocess.run([sys.executable, "-m", "PancreasDiNTSLib.cli", "make-phantoms", "-n", "2", "--num-test", "1",
                        "-o", str(out), "--size", "tiny", "--seed", "3", "--progress", "none"],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(out / "labelsTr")) == 2
    r = subprocess.run([sys.executable, "-m", "PancreasDiNTSLib.cli", "make-phantoms", "-n", "2", "-o", str(out),
                        "--size", "tiny"], capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 5
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and str(Path(out)) in lines[0]
    r = subprocess.run([sys.executable, "-m", "PancreasDiNTSLib.cli", "make-phantoms", "-n", "1", "-o",
                        str(tmp_path / "bad"), "--slice-mm", "2,1"], capture_output=True, text=True, env=cli_env,
                       timeout=300)
    assert r.returncode == 2 and "--slice-mm 2,1" in r.stderr and not (tmp_path / "bad").exists()
