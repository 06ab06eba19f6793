"""readout.measure: every number against an independent computation (brute force or analytic shapes)."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from PancreasDiNTSLib.readout import geometry as geo
from PancreasDiNTSLib.readout.measure import ajcc_size_category, measure
from scipy.spatial.distance import pdist

IDENTITY = np.eye(3)


def rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def make_affine(spacing, r=IDENTITY, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = r @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def centred_grid(shape, spacing, r=IDENTITY):
    """Affine with the volume centre at RAS 0, and the RAS coordinates of every voxel centre (3, X, Y, Z)."""
    sp = np.asarray(spacing, float)
    origin = -(r @ np.diag(sp)) @ ((np.array(shape) - 1) / 2.0)
    aff = make_affine(sp, r, origin)
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    ras = (idx @ aff[:3, :3].T + aff[:3, 3]).T.reshape(3, *shape)
    return aff, ras


def ellipsoid_labels(shape, spacing, semi_mm, r=IDENTITY, rz_shape=0.0, centre=(0.0, 0.0, 0.0)):
    """Lesion (2) = voxels whose RAS centre is in an ellipsoid (axes along R, A, S turned by rz_shape degrees about S)."""
    aff, ras = centred_grid(shape, spacing, r)
    q = rot("z", rz_shape).T @ (ras.reshape(3, -1) - np.array(centre)[:, None])
    inside = ((q / np.array(semi_mm)[:, None]) ** 2).sum(0) <= 1.0
    lab = np.zeros(shape, np.uint8)
    lab[inside.reshape(shape)] = 2
    return lab, aff


# ------------------------------------------------------------------ brute-force references


def brute_faces(mask: np.ndarray) -> np.ndarray:
    """Exposed face centres by looping over voxels and their 2*D faces."""
    pts = []
    shape = mask.shape
    for p in zip(*np.nonzero(mask), strict=True):
        for ax in range(mask.ndim):
            for step in (-1, 1):
                q = list(p)
                q[ax] += step
                outside = q[ax] < 0 or q[ax] >= shape[ax] or not mask[tuple(q)]
                if outside:
                    c = [float(v) for v in p]
                    c[ax] += 0.5 * step
                    pts.append(c)
    return np.array(pts)


def brute_axial(mask: np.ndarray, aff: np.ndarray):
    """Longest in-plane distance per slice of axis 2 (all pairs), the best slice (ties: larger area) and its
    boundary points in RAS."""
    best = (-1.0, -1, None, None)
    for k in range(mask.shape[2]):
        if not mask[:, :, k].any():
            continue
        f2 = brute_faces(mask[:, :, k])
        idx = np.column_stack([f2, np.full(len(f2), k)])
        ras = idx @ aff[:3, :3].T + aff[:3, 3]
        d = pdist(ras).max() if len(ras) > 1 else 0.0
        area = int(mask[:, :, k].sum())
        if d > best[0] + 1e-6 or (abs(d - best[0]) <= 1e-6 and area > best[1]):
            best = (d, area, k, ras)
    return best[0], best[2], best[3]


def brute_perpendicular(ras: np.ndarray, u: np.ndarray, tol_deg: float = 5.0) -> float:
    """Longest pair of points whose direction is within tol_deg of the perpendicular to u (all pairs)."""
    perp = 0.0
    for a, b in itertools.combinations(range(len(ras)), 2):
        v = ras[b] - ras[a]
        n = np.linalg.norm(v)
        if n > 0 and abs(v @ u) / n <= np.sin(np.radians(tol_deg)) + 1e-9:
            perp = max(perp, n)
    return perp


@pytest.mark.parametrize("seed", range(6))
def test_diameters_match_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 8, 5)
    blob = rng.random(shape) < 0.45
    blob[4, 4, 2] = True
    lab = np.zeros(shape, np.uint8)
    # keep one 26-connected component (the one holding the seed voxel)
    from scipy import ndimage

    comp, _ = ndimage.label(blob, structure=np.ones((3, 3, 3)))
    lab[comp == comp[4, 4, 2]] = 2
    spacing = (0.7 + 0.1 * seed, 0.9, 2.0 + 0.3 * seed)
    aff = make_affine(spacing, rot("z", 10.0 * seed), (3.0, -4.0, 7.0))
    m = measure(lab, aff)["lesion"]["largest"]
    faces = brute_faces(lab == 2) @ aff[:3, :3].T + aff[:3, 3]
    assert np.allclose(np.sort(geo.to_ras(aff, geo.exposed_faces(lab == 2)), axis=0), np.sort(faces, axis=0))
    assert m["longest_3d_diameter"]["mm"] == pytest.approx(pdist(faces).max(), abs=0.006)
    e = np.array(m["longest_3d_diameter"]["endpoints_ras"])
    assert np.linalg.norm(e[1] - e[0]) == pytest.approx(m["longest_3d_diameter"]["mm"], abs=0.02)
    d, k, ras = brute_axial(lab == 2, aff)
    ax = m["longest_axial_diameter"]
    assert ax["mm"] == pytest.approx(d, abs=0.006)
    assert ax["slice_index"] == k
    e = np.array(ax["endpoints_ras"])  # a farthest pair of that slice's boundary points
    assert np.linalg.norm(e[1] - e[0]) == pytest.approx(d, abs=0.02)
    assert np.abs(ras[:, None, :] - e[None]).max(axis=2).min(axis=0).max() < 0.006
    u = (e[1] - e[0]) / np.linalg.norm(e[1] - e[0])
    assert m["perpendicular_diameter"]["tolerance_deg"] == 5.0
    assert m["perpendicular_diameter"]["mm"] == pytest.approx(brute_perpendicular(ras, u), abs=0.03)
    assert m["voxels"] == int((lab == 2).sum())
    assert m["volume_ml"] == pytest.approx(m["voxels"] * abs(np.linalg.det(aff[:3, :3])) / 1000, abs=1e-3)


def test_sphere_diameters_and_volume():
    r_mm, sp = 12.0, 0.8
    lab, aff = ellipsoid_labels((48, 48, 48), (sp, sp, sp), (r_mm, r_mm, r_mm), centre=(0.13, -0.21, 0.07))
    lab[(lab == 0) & (np.indices(lab.shape)[0] == 2)] = 1  # a slab of "pancreas" (not touching the lesion)
    m = measure(lab, aff)
    les = m["lesion"]["largest"]
    for key in ("longest_3d_diameter", "longest_axial_diameter", "perpendicular_diameter"):
        assert abs(les[key]["mm"] - 2 * r_mm) <= sp, (key, les[key]["mm"])
    assert les["volume_ml"] == pytest.approx(4 / 3 * np.pi * r_mm**3 / 1000, rel=0.03)
    assert m["lesion"]["count"] == 1 and not les["touches_volume_border"]
    assert m["lesion"]["size_category"]["category"] == "T2"  # ~24 mm
    # the box of a sphere: centre +/- r, to within a voxel
    box = m["segments"]["pancreatic_tumor"]["bounding_box"]
    assert np.allclose(box["min_ras"], np.array([0.13, -0.21, 0.07]) - r_mm, atol=sp)
    assert np.allclose(box["max_ras"], np.array([0.13, -0.21, 0.07]) + r_mm, atol=sp)


def test_ellipsoid_on_anisotropic_grid():
    sp = (0.7, 0.7, 2.5)
    semi = (15.0, 9.0, 11.0)  # R, A, S semi-axes in mm
    lab, aff = ellipsoid_labels((56, 40, 16), sp, semi)
    les = measure(lab, aff)["lesion"]["largest"]
    assert abs(les["longest_3d_diameter"]["mm"] - 30.0) <= 0.7
    assert abs(les["longest_axial_diameter"]["mm"] - 30.0) <= 0.7
    assert abs(les["perpendicular_diameter"]["mm"] - 18.0) <= 0.7
    assert les["longest_axial_diameter"]["slice_index"] in (7, 8)  # the central slice(s)
    e = np.array(les["longest_axial_diameter"]["endpoints_ras"])
    u = (e[1] - e[0]) / np.linalg.norm(e[1] - e[0])
    assert abs(u[0]) > 0.99  # long axis along R
    assert e[0][2] == e[1][2]  # both endpoints on the same axial slice
    p = np.array(les["perpendicular_diameter"]["endpoints_ras"])
    v = (p[1] - p[0]) / np.linalg.norm(p[1] - p[0])
    assert abs(v @ u) <= np.sin(np.radians(5.0)) + 1e-6
    assert les["volume_ml"] == pytest.approx(4 / 3 * np.pi * np.prod(semi) / 1000, rel=0.04)


def test_oblique_grid_gives_the_axis_aligned_millimetres():
    sp = (0.8, 0.8, 1.5)
    semi = (14.0, 8.0, 9.0)
    straight, aff0 = ellipsoid_labels((48, 48, 24), sp, semi, rz_shape=25.0)
    turned, aff1 = ellipsoid_labels((48, 48, 24), sp, semi, r=rot("z", 25.0), rz_shape=25.0)
    a = measure(straight, aff0)["lesion"]["largest"]
    b = measure(turned, aff1)["lesion"]["largest"]
    for key in ("longest_3d_diameter", "longest_axial_diameter", "perpendicular_diameter"):
        assert abs(a[key]["mm"] - b[key]["mm"]) <= 0.8, key
    assert abs(b["longest_axial_diameter"]["mm"] - 28.0) <= 0.8
    assert abs(b["perpendicular_diameter"]["mm"] - 16.0) <= 0.8
    assert b["volume_ml"] == pytest.approx(a["volume_ml"], rel=0.03)
    # long axis of the turned grid's lesion along its own (25 degree) axis
    e = np.array(b["longest_axial_diameter"]["endpoints_ras"])
    u = (e[1] - e[0]) / np.linalg.norm(e[1] - e[0])
    # (the direction of a longest chord is ill-conditioned: the length is flat near the axis)
    assert abs(u @ np.array([np.cos(np.radians(25)), np.sin(np.radians(25)), 0])) > 0.97


def test_tilted_grid_measures_in_the_slice_plane():
    r_mm = 10.0
    lab, aff = ellipsoid_labels((40, 40, 40), (0.8, 0.8, 0.8), (r_mm, r_mm, r_mm), r=rot("x", 20.0))
    m = measure(lab, aff)
    assert m["grid"]["axial_axis"] == 2 and m["grid"]["axial_obliquity_deg"] == pytest.approx(20.0, abs=0.01)
    les = m["lesion"]["largest"]
    for key in ("longest_3d_diameter", "longest_axial_diameter", "perpendicular_diameter"):
        assert abs(les[key]["mm"] - 2 * r_mm) <= 0.8, key
    e = np.array(les["longest_axial_diameter"]["endpoints_ras"])
    normal = aff[:3, 2] / np.linalg.norm(aff[:3, 2])
    assert abs((e[1] - e[0]) @ normal) < 0.02  # in the tilted slice plane


def test_axial_axis_follows_the_direction_closest_to_s():
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    aff[2, 0], aff[0, 1], aff[1, 2] = 3.0, 0.7, 0.7  # array axis 0 runs along S
    lab = np.zeros((6, 20, 20), np.uint8)
    lab[2:4, 5:15, 8:12] = 2
    m = measure(lab, aff)
    les = m["lesion"]["largest"]
    assert m["grid"]["axial_axis"] == 0
    assert les["longest_axial_diameter"]["slice_axis"] == 0
    # 10 x 4 pixels: exposed edge midpoints (-0.5, 0) .. (9.5, 3) in pixels are the farthest pair
    assert les["longest_axial_diameter"]["mm"] == pytest.approx(np.hypot(10 * 0.7, 3 * 0.7), abs=0.01)


def test_two_blobs_two_components_with_their_volumes():
    lab = np.zeros((40, 30, 20), np.uint8)
    lab[2:10, 2:10, 2:10] = 2  # 512 voxels
    lab[20:25, 20:25, 12:15] = 2  # 75 voxels
    lab[30:31, 1:2, 1:2] = 1
    lab[32:33, 2:3, 2:3] = 1  # diagonal neighbour of nothing -> its own pancreas component
    aff = make_affine((0.5, 1.0, 2.0))
    m = measure(lab, aff)
    les = m["lesion"]
    assert les["count"] == 2 and m["segments"]["pancreatic_tumor"]["components"] == 2
    assert [c["voxels"] for c in les["components"]] == [512, 75]
    assert [c["volume_ml"] for c in les["components"]] == [pytest.approx(0.512), pytest.approx(0.075)]
    assert m["segments"]["pancreatic_tumor"]["component_volumes_ml"] == [0.512, 0.075]
    assert les["largest"]["rank"] == 1 and les["largest"]["voxels"] == 512
    # 8x8x8 voxels of 0.5 x 1 x 2 mm; surface points are face centres (marching-cubes vertices), so the corners
    # are cut: farthest pair (0, 0, -0.5) .. (7, 7, 7.5) in voxels; in-plane (0, -0.5) .. (7, 7.5)
    assert les["largest"]["longest_3d_diameter"]["mm"] == pytest.approx(np.sqrt(3.5**2 + 7**2 + 16**2), abs=0.01)
    assert les["largest"]["longest_axial_diameter"]["mm"] == pytest.approx(np.hypot(3.5, 8), abs=0.01)
    assert les["largest"]["centroid_ras"] == pytest.approx([5.5 * 0.5, 5.5, 11.0])
    assert m["segments"]["pancreas"]["components"] == 2  # 26-connectivity: (30,1,1) and (32,2,2) do not touch
    lab[31, 1, 1] = 1
    assert measure(lab, aff)["segments"]["pancreas"]["components"] == 1  # now diagonal neighbours: joined


def test_lesion_touching_the_border_is_flagged():
    r_mm = 6.0
    lab, aff = ellipsoid_labels((30, 30, 30), (1.0, 1.0, 1.0), (r_mm, r_mm, r_mm), centre=(12.5, 0.0, 0.0))
    m = measure(lab, aff)
    les = m["lesion"]["largest"]
    assert les["touches_volume_border"] and "underestimated" in les["border_note"]
    assert m["segments"]["pancreatic_tumor"]["touches_volume_border"]
    assert "underestimated" in m["lesion"]["size_category"]["note"]
    inside, aff2 = ellipsoid_labels((30, 30, 30), (1.0, 1.0, 1.0), (r_mm, r_mm, r_mm))
    assert not measure(inside, aff2)["lesion"]["largest"]["touches_volume_border"]


@pytest.mark.parametrize("d, cat", [(0.5, "T1a"), (5.0, "T1a"), (5.01, "T1b"), (9.99, "T1b"), (10.0, "T1c"),
                                    (20.0, "T1c"), (20.01, "T2"), (40.0, "T2"), (40.01, "T3"), (120.0, "T3")])
def test_ajcc_size_thresholds(d, cat):
    out = ajcc_size_category(d)
    assert out["category"] == cat and out["label"] == "by size only, not a stage" and out["reason"] is None


def test_ajcc_without_a_diameter():
    for d in (None, 0.0, float("nan")):
        out = ajcc_size_category(d)
        assert out["category"] is None and out["reason"]


def test_bad_cases_give_null_with_a_reason():
    aff = make_affine((0.8, 0.8, 2.0))
    empty = measure(np.zeros((10, 10, 5), np.uint8), aff)
    assert empty["lesion"]["found"] is False and "no lesion" in empty["lesion"]["reason"]
    assert empty["lesion"]["largest"] is None and empty["lesion"]["size_category"]["category"] is None
    assert empty["lesion"]["size_category"]["reason"]
    assert empty["segments"]["pancreas"]["voxels"] == 0 and empty["segments"]["pancreas"]["reason"]
    assert empty["segments"]["pancreas"]["bounding_box"] is None
    one = np.zeros((10, 10, 5), np.uint8)
    one[5, 5, 2] = 2
    m = measure(one, aff)
    les = m["lesion"]["largest"]
    assert les["voxels"] == 1 and les["volume_ml"] == pytest.approx(0.00128, abs=1e-4)
    assert les["longest_3d_diameter"] is None and les["longest_axial_diameter"] is None
    assert "single voxel" in les["reason"]
    assert m["lesion"]["size_category"]["category"] is None and "single voxel" in m["lesion"]["size_category"]["reason"]
    assert m["segments"]["pancreas"]["reason"]  # empty pancreas, lesion present: still measured
    two = one.copy()
    two[5, 5, 3] = 2  # two voxels stacked along S: one pixel in each slice
    les2 = measure(two, aff)["lesion"]["largest"]
    assert les2["longest_axial_diameter"]["mm"] == pytest.approx(0.8)
    assert les2["longest_3d_diameter"]["mm"] == pytest.approx(4.0)
    for m in (empty, measure(one, aff), measure(two, aff)):
        json.dumps(m, allow_nan=False)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        measure(np.zeros((4, 4), np.uint8), np.eye(4))
    with pytest.raises(ValueError):
        measure(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4)))


def test_large_lesion_is_fast():
    r_mm = 25.0  # a 5 cm lesion at 0.7 mm in-plane, 1 mm slices
    lab, aff = ellipsoid_labels((96, 96, 64), (0.7, 0.7, 1.0), (r_mm, r_mm * 0.8, r_mm * 0.9))
    t0 = time.perf_counter()
    les = measure(lab, aff)["lesion"]["largest"]
    elapsed = time.perf_counter() - t0
    assert abs(les["longest_3d_diameter"]["mm"] - 50.0) <= 1.0
    assert elapsed < 3.0, elapsed


def all_pairs_perpendicular(points: np.ndarray, axis: np.ndarray, tolerances=geo.PERPENDICULAR_TOLERANCES_DEG):
    """The reference: every pair compared, the first tolerance that admits one (length, tolerance)."""
    u = axis / np.linalg.norm(axis)
    a, b = points @ u, points @ np.array([-u[1], u[0]])
    da, db = a[None, :] - a[:, None], b[None, :] - b[:, None]
    for tol in tolerances:
        ok = (np.abs(da) <= np.tan(np.radians(tol)) * np.abs(db) + 1e-9) & (np.abs(db) > 1e-9)
        if ok.any():
            return float(np.sqrt(np.where(ok, da * da + db * db, -1.0).max())), tol
    return None


def checkerboard(n: int) -> np.ndarray:
    lab = np.zeros((n + 4, n + 4, 3), np.uint8)
    ii, jj = np.indices((n, n))
    lab[2:-2, 2:-2, 1] = np.where((ii + jj) % 2 == 0, 2, 0)
    return lab


def slice_points(mask2d: np.ndarray, spacing=(0.8, 0.7), deg: float = 0.0) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return geo.exposed_faces(mask2d) * np.array(spacing) @ np.array([[c, -s], [s, c]]).T


@pytest.mark.parametrize("seed", range(8))
def test_perpendicular_search_equals_all_pairs(seed):
    """Issue 26 item 9: the perpendicular compares only two Pareto staircases; the same length as every pair on
    random, convex (rotated digital ellipses), checkerboard and sparse point sets, at every tolerance step."""
    rng = np.random.default_rng(seed)
    ii, jj = np.indices((40, 34)) - np.array([20, 17])[:, None, None]
    rx, ry, deg = rng.uniform(4, 16), rng.uniform(3, 15), rng.uniform(0, 180)
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    ellipse = ((c * ii + s * jj) / rx) ** 2 + ((-s * ii + c * jj) / ry) ** 2 <= 1.0
    sets = {"convex": slice_points(ellipse, deg=7.0 * seed), "random": rng.normal(size=(300, 2)) * [9, 3],
            "noisy": slice_points(rng.random((30, 30)) < 0.5), "checker": slice_points(checkerboard(24)[:, :, 1] == 2),
            "sparse": rng.normal(size=(5, 2))}
    for name, pts in sets.items():
        axis = rng.normal(size=2)
        for tolerances in (geo.PERPENDICULAR_TOLERANCES_DEG, (1.0, 2.0, 45.0), (0.05, 60.0)):
            got = geo.longest_perpendicular(pts, axis, tolerances)
            want = all_pairs_perpendicular(pts, axis, tolerances)
            assert (got is None) == (want is None), name
            if got is not None:
                length, i, j, dev, tol = got
                assert (round(length, 9), tol) == (round(want[0], 9), want[1]), (name, tolerances)
                assert np.linalg.norm(pts[j] - pts[i]) == pytest.approx(length) and dev <= tol + 1e-6


@pytest.mark.parametrize("n", [128, 256])
def test_checkerboard_lesion_is_measured_in_seconds(n):
    """Issue 26 item 9: a 128^2 checkerboard lesion took 48 s, 256^2 over 120 s (all pairs of ~n^2 boundary
    points). Now the staircases have O(n) points and the whole read-out stays under the 5 s target."""
    lab = checkerboard(n)
    aff = make_affine((0.8, 0.8, 2.0))
    t0 = time.process_time()
    les = measure(lab, aff)["lesion"]["largest"]
    elapsed = time.process_time() - t0
    assert elapsed < 5.0, elapsed
    pts = slice_points(lab[:, :, 1] == 2, spacing=(0.8, 0.8))
    e = np.array(les["longest_axial_diameter"]["endpoints_ras"])[:, :2]
    axis = e[1] - e[0]
    u = axis / np.linalg.norm(axis)
    t = np.tan(np.radians(5.0))
    low, high = geo._staircases(t * (pts @ [-u[1], u[0]]) - pts @ u, t * (pts @ [-u[1], u[0]]) + pts @ u)
    assert len(pts) == 2 * n * n and len(low) + len(high) <= 16 * n  # what is compared: O(n), not O(n^2)
    perp = les["perpendicular_diameter"]
    # the checkerboard spans the square: its diagonals are the long axis and (within 5 degrees) its perpendicular
    assert les["longest_axial_diameter"]["mm"] == pytest.approx(0.8 * n * np.sqrt(2), abs=2.0)
    assert perp["tolerance_deg"] == 5.0 and perp["mm"] == pytest.approx(0.8 * n * np.sqrt(2), abs=3.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_hull_candidates_keep_every_hull_vertex(ndim):
    """The 3D and per-slice diameters hull only the face centres first or last on their grid line: a subset of
    the exposed faces that holds every convex hull vertex, so the farthest pair is the same (exact)."""
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(ndim)
    for _ in range(25):
        mask = rng.random(tuple(rng.integers(2, 10, ndim))) < rng.uniform(0.05, 0.9)
        if mask.sum() < 2:
            continue
        faces, cand = geo.exposed_faces(mask), geo.hull_candidates(mask)
        keep = {tuple(p) for p in cand}
        assert keep <= {tuple(p) for p in faces}
        assert {tuple(faces[i]) for i in ConvexHull(faces).vertices} <= keep
        assert geo.farthest_pair(cand)[0] == pytest.approx(geo.farthest_pair(faces)[0], abs=1e-12)
        assert len(cand) <= 2 * ndim * int(np.prod(np.array(mask.shape[:-1]) + 1))  # two per grid line
