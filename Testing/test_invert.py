"""Slab-wise inversion (invert.py) against MONAI's one-piece Invertd, on real CT geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from image_files import load_nifti
from monai.transforms import Activations
from PancreasDiNTSLib.inference.invert import can_invert_in_slabs, invert_labels
from PancreasDiNTSLib.inference.segmenter import Segmenter
from PancreasDiNTSLib.io.images import read_image
from PancreasDiNTSLib.model.loader import load_bundle


def _geometries(tmp_path, example_ct_sm):
    """The real CT as stored (RAS, 3 mm), and its voxels under an oblique, anisotropic, axis-flipped affine."""
    yield "real", example_ct_sm
    data, _ = load_nifti(example_ct_sm)
    t = np.deg2rad(17.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.9, -1.3, 2.5])  # L->R and P->A flipped: an LPS-like voxel order
    affine[:3, 3] = [60.0, 80.0, -30.0]
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data[:, :, :20].astype(np.int16), affine), path)
    yield "oblique", path


@pytest.mark.slow
def test_slabs_equal_monai_invertd(tmp_path, example_ct_sm, tiny_bundle):
    seg = Segmenter(load_bundle(tiny_bundle), "cpu", mode="fast")
    for name, path in _geometries(tmp_path, example_ct_sm):
        case = read_image(path)
        pre = seg.preprocess(case.image)
        assert can_invert_in_slabs(pre)
        torch.manual_seed(0)
        # near-ties everywhere: small random logits make every voxel's label hang on the interpolated values
        logits = 0.3 * torch.randn((1, 3, *pre.shape[1:]))
        whole = seg.postprocess(logits, pre, slabs=False)  # MONAI Invertd + argmax, as the bundle
        assert whole.shape == tuple(case.image.shape[1:]) and len(np.unique(whole)) == 3
        probs = torch.as_tensor(Activations(softmax=True)(logits[0]))
        for slab_voxels in (1, 7919, 10**9):  # one row per slab, uneven slabs, one slab
            labels = invert_labels(probs, pre, slab_voxels=slab_voxels)
            assert labels.dtype == np.uint8
            assert np.array_equal(labels, whole), (name, slab_voxels, float((labels == whole).mean()))
        assert np.array_equal(seg.postprocess(logits, pre, slabs=True), whole)


def test_only_the_bundles_spatial_transforms_are_inverted_in_slabs(example_ct_sm, tiny_bundle):
    seg = Segmenter(load_bundle(tiny_bundle), "cpu", mode="fast")
    pre = seg.preprocess(read_image(example_ct_sm).image)
    assert not can_invert_in_slabs(torch.zeros(1, 4, 4, 4))
    popped = pre.clone()
    popped.applied_operations = pre.applied_operations[:1]  # orientation only
    assert not can_invert_in_slabs(popped)
    with pytest.raises(ValueError, match="not Orientation"):
        invert_labels(torch.zeros(3, *pre.shape[1:]), popped)


@pytest.mark.slow
def test_confidence_and_lesion_score_come_from_the_same_inverted_probabilities(tmp_path, example_ct_sm, tiny_bundle):
    """Segmenter.invert hands out labels equal to postprocess's, and the uint8 confidence map / lesion maximum of
    the very probabilities Invertd produced (brute force here: the whole inverted volume); the slab inversion
    gives the same map (within one grey level: its coordinates may round differently) and lesion score."""
    from monai.transforms import Activationsd, Compose, Invertd
    from PancreasDiNTSLib.readout.confidence import confidence_map

    seg = Segmenter(load_bundle(tiny_bundle), "cpu", mode="fast")
    for name, path in _geometries(tmp_path, example_ct_sm):
        case = read_image(path)
        pre = seg.preprocess(case.image)
        torch.manual_seed(1)
        logits = 0.8 * torch.randn((1, 3, *pre.shape[1:]))
        inv = seg.invert(logits, pre, slabs=False)
        assert np.array_equal(inv.labels, seg.postprocess(logits, pre, slabs=False)), name
        post = Compose([Activationsd(keys="pred", softmax=True),
                        Invertd(keys="pred", transform=seg.preprocessing, orig_keys="image", nearest_interp=False,
                                to_tensor=True)])
        probs = np.asarray(post({"image": pre, "pred": logits[0]})["pred"].numpy())
        expected = np.clip(np.rint(255.0 * probs.max(axis=0).astype(np.float32)), 0, 255).astype(np.uint8)
        assert inv.confidence is not None and inv.confidence.shape == inv.labels.shape
        assert np.array_equal(inv.confidence, expected) and np.array_equal(confidence_map(probs), expected)
        k = int(np.argmax(probs[2]))
        assert inv.lesion is not None and inv.lesion[0] == pytest.approx(float(probs[2].flat[k]), abs=1e-6)
        assert inv.lesion[1] == tuple(int(v) for v in np.unravel_index(k, probs[2].shape))
        slabbed = seg.invert(logits, pre, slabs=True)
        assert np.array_equal(slabbed.labels, inv.labels), name
        assert slabbed.confidence is not None
        assert int(np.abs(slabbed.confidence.astype(int) - inv.confidence).max()) <= 1, name
        assert slabbed.lesion is not None and slabbed.lesion[0] == pytest.approx(inv.lesion[0], abs=1e-5)
        assert slabbed.lesion[1] == inv.lesion[1], name
        assert seg.invert(logits, pre, slabs=True, readout=False).confidence is None
