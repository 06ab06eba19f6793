"""Planar contours of a binary image slice, as RT structure sets carry them (io.rtstruct uses this).

Each contour follows the pixels' own edges (a staircase through pixel corners), so a planning system that fills
the polygon and keeps the pixels whose centres lie inside gets back exactly the labelled pixels, and the area
enclosed equals the pixel count times the pixel area. Components are 8-connected (the background, holes
included, 4-connected); every component is one closed contour. A hole is joined to its component's outline by
the "keyhole" technique of DICOM PS3.3 C.8.8.6.3: a zero-width channel along a pixel edge (no pixel centre lies
on it), so the one contour reads correctly whether a system combines several contours by union or by XOR.

Coordinates are (x, y) = (column, row) in pixel-corner units: pixel (r, c) covers x in [c, c+1], y in [r, r+1];
its centre is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Point = tuple[int, int]
EIGHT = np.ones((3, 3), dtype=bool)


def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every exposed pixel side as a directed edge (start, end) with the pixel on a fixed side, and the
    (row, col) of that pixel."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inside = m[1:-1, 1:-1]
    starts, ends, pixels = [], [], []
    # (neighbour offset, start corner, end corner) relative to the pixel's top-left corner (x=c, y=r)
    sides = (((-1, 0), (1, 0), (0, 0)), ((0, -1), (0, 0), (0, 1)),
             ((1, 0), (0, 1), (1, 1)), ((0, 1), (1, 1), (1, 0)))
    for (dr, dc), s, e in sides:
        nb = m[1 + dr:m.shape[0] - 1 + dr, 1 + dc:m.shape[1] - 1 + dc]
        r, c = np.nonzero(inside & ~nb)
        starts.append(np.stack([c + s[0], r + s[1]], axis=1))
        ends.append(np.stack([c + e[0], r + e[1]], axis=1))
        pixels.append(np.stack([r, c], axis=1))
    return np.concatenate(starts), np.concatenate(ends), np.concatenate(pixels)


def _rings(mask: np.ndarray) -> list[tuple[list[Point], tuple[int, int]]]:
    """Closed rings of pixel edges (corner lists, collinear corners dropped), each with one pixel on its inside
    side. At a corner shared by two diagonal pixels the ring turns so that the diagonal pair stays connected."""
    s_arr, e_arr, p_arr = _edges(mask)
    starts = [(int(x), int(y)) for x, y in s_arr.tolist()]
    ends = [(int(x), int(y)) for x, y in e_arr.tolist()]
    out_edges: dict[Point, list[int]] = {}
    for k, start in enumerate(starts):
        out_edges.setdefault(start, []).append(k)
    used = [False] * len(starts)
    rings = []
    for first in range(len(starts)):
        if used[first]:
            continue
        ring: list[Point] = []
        k = first
        while not used[k]:
            used[k] = True
            (sx, sy), (ex, ey) = starts[k], ends[k]
            ring.append((sx, sy))
            options = [j for j in out_edges[(ex, ey)] if not used[j]]
            if not options:
                break
            if len(options) > 1:  # a corner shared by two diagonal pixels: keep them connected
                dx, dy = ex - sx, ey - sy
                options.sort(key=lambda j: -(dx * (ends[j][1] - starts[j][1]) - dy * (ends[j][0] - starts[j][0])))
            k = options[0]
        rings.append((_drop_collinear(ring), (int(p_arr[first][0]), int(p_arr[first][1]))))
    return rings


def _drop_collinear(ring: list[Point]) -> list[Point]:
    n = len(ring)
    keep = []
    for i in range(n):
        (ax, ay), (bx, by), (cx, cy) = ring[i - 1], ring[i], ring[(i + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append(ring[i])
    return keep or ring


def signed_area(ring: list[Point]) -> float:
    """Shoelace area in (x, y) corner coordinates; outlines are negative here, holes positive."""
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _bridge_target(outline: list[Point], v: Point) -> tuple[int, Point]:
    """The nearest point of ``outline`` to the right of ``v`` on the line y = v.y: (edge index, point)."""
    best: tuple[float, int, Point] | None = None
    vx, vy = v
    n = len(outline)
    for i in range(n):
        (ax, ay), (bx, by) = outline[i], outline[(i + 1) % n]
        hit: Point | None = None
        if ax == bx and min(ay, by) <= vy <= max(ay, by) and ax >= vx:
            hit = (ax, vy)
        elif ay == by == vy and max(ax, bx) >= vx:
            hit = (max(min(ax, bx), vx), vy)
        if hit is not None and (best is None or hit[0] - vx < best[0]):
            best = (hit[0] - vx, i, hit)
    if best is None:
        raise ValueError("a hole outside its component's outline (contour tracing error)")
    return best[1], best[2]


def keyhole(outline: list[Point], holes: list[list[Point]]) -> list[Point]:
    """One contour: ``outline`` with every hole joined through a zero-width channel (holes taken right to left,
    each bridged from its rightmost corner along a pixel edge to the nearest outline edge on its right)."""
    ring = list(outline)
    for hole in sorted(holes, key=lambda h: -max(p[0] for p in h)):
        j = max(range(len(hole)), key=lambda i: (hole[i][0], -hole[i][1]))
        v = hole[j]
        i, hit = _bridge_target(ring, v)
        loop = hole[j:] + hole[:j] + [v]
        ring = ring[:i + 1] + ([hit] if hit != ring[i] else []) + loop + [hit] + ring[i + 1:]
        ring = [p for k, p in enumerate(ring) if p != ring[k - 1]] if len(ring) > 1 else ring
    return ring


def slice_contours(mask: np.ndarray) -> list[list[Point]]:
    """The closed contours of one slice's mask (rows, cols): one per 8-connected component, holes keyholed."""
    full = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if not len(rows):
        return []
    r0, c0 = int(rows[0]), int(cols[0])
    mask = full[r0:int(rows[-1]) + 1, c0:int(cols[-1]) + 1]  # the work is on the bounding box only
    comp, _ = ndimage.label(mask, structure=EIGHT)
    outlines: dict[int, list[Point]] = {}
    holes: dict[int, list[list[Point]]] = {}
    for ring, (r, c) in _rings(mask):
        label = int(comp[r, c])
        if signed_area(ring) < 0:
            outlines[label] = ring
        else:
            holes.setdefault(label, []).append(ring)
    return [[(x + c0, y + r0) for x, y in keyhole(outlines[label], holes.get(label, []))] for label in sorted(outlines)]
