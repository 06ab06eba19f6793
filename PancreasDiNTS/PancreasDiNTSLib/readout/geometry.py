"""Grid geometry and exact diameters: exposed voxel faces, convex hulls and pairwise distances in mm.

Index coordinates are voxel centres (i, j, k); ``affine_ras`` maps them to RAS millimetres. A segment's surface
is represented by the centres of its exposed voxel faces (a face whose neighbour across it is outside the mask,
or outside the volume): these are exactly the vertices that marching cubes at iso-level 0.5 puts on the
inside-outside voxel edges, i.e. the surface a 3D viewer draws. Diameters are distances between such points.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

BRUTE_FORCE_MAX = 64  # below this many points, all pairs are compared directly (no hull)
PAIR_BLOCK = 4_000_000  # pair distances computed per block (memory bound)
PERPENDICULAR_TOLERANCES_DEG = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0)


def check_affine(affine_ras: np.ndarray) -> np.ndarray:
    """The affine as a float64 4x4 array; ValueError when it is not an invertible 4x4 matrix."""
    a = np.asarray(affine_ras, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"affine_ras must be an invertible 4x4 matrix, got shape {a.shape}")
    return a


def spacing(affine_ras: np.ndarray) -> np.ndarray:
    """Voxel spacing in mm along each array axis (column norms of the affine)."""
    return np.linalg.norm(np.asarray(affine_ras, dtype=np.float64)[:3, :3], axis=0)


def voxel_volume_ml(affine_ras: np.ndarray) -> float:
    """Volume of one voxel in mL (|det| of the 3x3 part, mm^3 / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine_ras, dtype=np.float64)[:3, :3]))) / 1000.0


def axial_axis(affine_ras: np.ndarray) -> int:
    """The array axis whose direction is closest to the patient's S axis (the slice axis of axial images)."""
    a = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    return int(np.argmax(np.abs(a[2]) / np.linalg.norm(a, axis=0)))


def axial_obliquity_deg(affine_ras: np.ndarray) -> float:
    """Angle (degrees) between the axial array axis and the S axis: 0 for an axis-aligned grid."""
    a = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    k = axial_axis(affine_ras)
    c = abs(a[2, k]) / float(np.linalg.norm(a[:, k]))
    return float(np.degrees(np.arccos(min(1.0, c))))


def to_ras(affine_ras: np.ndarray, index: np.ndarray) -> np.ndarray:
    """RAS mm of (N, 3) (fractional) voxel indices."""
    a = np.asarray(affine_ras, dtype=np.float64)
    return np.asarray(index, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def exposed_faces(mask: np.ndarray) -> np.ndarray:
    """(N, D) index coordinates of the centres of the exposed faces of a D-dimensional boolean mask."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    out = []
    for ax in range(m.ndim):
        for step in (-1, 1):
            nb = np.roll(m, -step, axis=ax)  # nb[p] = m[p + step e_ax]; the wrap-around reads the False padding
            idx = np.argwhere(m & ~nb).astype(np.float64) - 1.0
            idx[:, ax] += 0.5 * step
            out.append(idx)
    return np.concatenate(out) if out else np.zeros((0, m.ndim))


def _ends(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every line along the last axis holding a True: its index (N, D-1), first and last True position."""
    hit = m.any(axis=-1)
    first = np.argmax(m, axis=-1)[hit]
    last = m.shape[-1] - 1 - np.argmax(m[..., ::-1], axis=-1)[hit]
    return np.argwhere(hit).astype(np.float64), first.astype(np.float64), last.astype(np.float64)


def hull_candidates(mask: np.ndarray) -> np.ndarray:
    """(N, D) index coordinates of the exposed face centres that are first or last on their line along the last
    axis: every other face centre lies between two of these on a line, so it is no convex hull vertex, and the
    hull (hence every farthest pair) of these equals that of all :func:`exposed_faces`. O(voxels), and at most
    two points per line instead of every face (a noisy lesion has millions)."""
    m = np.asarray(mask, dtype=bool)
    out = []
    idx, first, last = _ends(m)  # faces across the last axis: (c, first - 0.5) and (c, last + 0.5)
    out += [np.c_[idx, first - 0.5], np.c_[idx, last + 0.5]]
    for ax in range(m.ndim - 1):  # faces across axis ax: between voxels t-1 and t where exactly one is inside
        pad = [(1, 1) if a == ax else (0, 0) for a in range(m.ndim)]
        p = np.pad(m, pad)
        lead = (slice(None),) * ax
        across = p[lead + (slice(1, None),)] ^ p[lead + (slice(None, -1),)]
        idx, first, last = _ends(across)
        idx[:, ax] -= 0.5
        out += [np.c_[idx, first], np.c_[idx, last]]
    return np.concatenate(out)


def farthest_pair(points: np.ndarray) -> tuple[float, int, int]:
    """Largest distance between two of ``points`` (N, D) and the indices of the pair (exact).

    The farthest pair of a point set is a pair of its convex hull vertices, so only hull vertices are compared
    (all pairs, in blocks); below ``BRUTE_FORCE_MAX`` points, or for a degenerate (flat) set, all points are.
    """
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return 0.0, 0, 0
    cand = np.arange(len(p))
    if len(p) > BRUTE_FORCE_MAX:
        try:
            cand = np.asarray(ConvexHull(p).vertices)
        except (QhullError, ValueError):
            cand = np.arange(len(p))
    q = p[cand]
    sq = (q * q).sum(axis=1)
    best, bi, bj = -1.0, 0, 0
    block = max(1, PAIR_BLOCK // len(q))
    for s in range(0, len(q), block):
        d2 = sq[s:s + block, None] + sq[None, :] - 2.0 * (q[s:s + block] @ q.T)
        flat = int(np.argmax(d2))
        r, c = divmod(flat, d2.shape[1])
        if d2[r, c] > best:
            best, bi, bj = float(d2[r, c]), s + r, c
    i, j = int(cand[bi]), int(cand[bj])
    return float(np.linalg.norm(p[i] - p[j])), i, j


def _staircases(s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the Pareto-minimal and Pareto-maximal points of (s1, s2): every point is >= some minimal one and
    <= some maximal one in both coordinates (one point kept per duplicate)."""

    def maxima(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        order = np.lexsort((-y, -x))  # x descending, ties y descending
        ys = y[order]
        before = np.maximum.accumulate(np.concatenate([[-np.inf], ys[:-1]]))
        return order[ys > before]

    return maxima(-s1, -s2), maxima(s1, s2)


def longest_perpendicular(points2d: np.ndarray, axis: np.ndarray,
                          tolerances_deg: tuple[float, ...] = PERPENDICULAR_TOLERANCES_DEG,
                          ) -> tuple[float, int, int, float, float] | None:
    """Longest segment between two of ``points2d`` (N, 2, mm) whose direction is within a tolerance of the
    perpendicular to ``axis``; ``(length, i, j, deviation_deg, tolerance_deg)``, or None if no pair exists.

    The first tolerance of ``tolerances_deg`` that admits a pair is used (tiny lesions have few directions).
    Exact without comparing all pairs: with a = along the axis, b = across it and t = tan(tolerance), a pair is
    admitted when q - p lies in the cone |da| <= t db, i.e. when q dominates p in s1 = t b - a and s2 = t b + a.
    In (s1, s2) the squared length is a quadratic form with non-negative coefficients for tolerances up to 45
    degrees, so it grows when q moves up or p moves down the dominance order: the longest admitted pair joins a
    Pareto-minimal and a Pareto-maximal point. Only those two staircases (O(side) points even on a checkerboard)
    are compared, pair by pair.
    """
    p = np.asarray(points2d, dtype=np.float64)
    u = np.asarray(axis, dtype=np.float64) / float(np.linalg.norm(axis))
    v = np.array([-u[1], u[0]])
    a, b = p @ u, p @ v
    if len(p) < 2:
        return None
    for tol in tolerances_deg:
        t = float(np.tan(np.radians(tol)))
        if tol <= 45.0:
            low, high = _staircases(t * b - a, t * b + a)
        else:  # wider cones: the length is not monotone in the dominance order, compare all pairs
            low = high = np.arange(len(p))
        best, bi, bj = _longest_admitted(a, b, t, low, high)
        if best > 0:
            d = p[bj] - p[bi]
            dev = float(np.degrees(np.arctan2(abs(float(d @ u)), abs(float(d @ v)))))
            return float(np.sqrt(best)), bi, bj, dev, tol
    return None


def _longest_admitted(a: np.ndarray, b: np.ndarray, t: float, low: np.ndarray, high: np.ndarray
                      ) -> tuple[float, int, int]:
    """Largest squared length over pairs (low[r], high[c]) with |da| <= t |db| (and db != 0), with its indices."""
    best, bi, bj = -1.0, 0, 0
    ah, bh = a[high], b[high]
    block = max(1, PAIR_BLOCK // len(high))
    for s in range(0, len(low), block):
        rows = low[s:s + block]
        da = ah[None, :] - a[rows, None]
        db = bh[None, :] - b[rows, None]
        ok = (np.abs(da) <= t * np.abs(db) + 1e-9) & (np.abs(db) > 1e-9)
        if not ok.any():
            continue
        d2 = np.where(ok, da * da + db * db, -1.0)
        flat = int(np.argmax(d2))
        r, c = divmod(flat, d2.shape[1])
        if d2[r, c] > best:
            best, bi, bj = float(d2[r, c]), int(rows[r]), int(high[c])
    return best, bi, bj


def plane_basis(affine_ras: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    """(2, 3) orthonormal basis (RAS) of the plane spanned by two array axes (Gram-Schmidt)."""
    a = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    e1 = a[:, axes[0]] / np.linalg.norm(a[:, axes[0]])
    w = a[:, axes[1]] - (a[:, axes[1]] @ e1) * e1
    return np.stack([e1, w / np.linalg.norm(w)])
