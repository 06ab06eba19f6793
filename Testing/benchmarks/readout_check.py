"""Read-out time on adversarial label maps (issue 26 item 9), and the perpendicular search against all pairs.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/readout_check.py``. Prints the seconds of
``readout.measure.measure`` on a 128^2 and a 256^2 checkerboard lesion, noisy 200x200x40 and 400x400x80
lesions, a ball and a lesion filling a 512x512x200 volume, and, on a 64^2 checkerboard slice, the staircase search against every pair (same length, time ratio).
"""

from __future__ import annotations

import time

import numpy as np
from PancreasDiNTSLib.readout import geometry as geo
from PancreasDiNTSLib.readout.measure import measure


def checkerboard(n: int) -> np.ndarray:
    lab = np.zeros((n + 4, n + 4, 3), np.uint8)
    ii, jj = np.indices((n, n))
    lab[2:-2, 2:-2, 1] = np.where((ii + jj) % 2 == 0, 2, 0)
    return lab


def all_pairs(points: np.ndarray, axis: np.ndarray, tol: float = 5.0) -> float:
    u = axis / np.linalg.norm(axis)
    a, b = points @ u, points @ np.array([-u[1], u[0]])
    best = 0.0
    for s in range(0, len(a), 512):
        da, db = a[None, :] - a[s:s + 512, None], b[None, :] - b[s:s + 512, None]
        ok = (np.abs(da) <= np.tan(np.radians(tol)) * np.abs(db) + 1e-9) & (np.abs(db) > 1e-9)
        best = max(best, float(np.where(ok, da * da + db * db, 0.0).max()))
    return float(np.sqrt(best))


def main() -> None:
    rng = np.random.default_rng(0)
    i, j, k = np.indices((160, 160, 160)) - 80
    cases = {"checkerboard 128^2": checkerboard(128), "checkerboard 256^2": checkerboard(256),
             "noisy 200x200x40": (rng.random((200, 200, 40)) < 0.5).astype(np.uint8) * 2,
             "ball r=75 voxels": ((i * i + j * j + k * k) <= 75 * 75).astype(np.uint8) * 2,
             "noisy 400x400x80": (rng.random((400, 400, 80)) < 0.5).astype(np.uint8) * 2,
             "full 512x512x200": np.full((512, 512, 200), 2, np.uint8)}
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    for name, lab in cases.items():
        t0 = time.perf_counter()
        les = measure(lab, aff)["lesion"]["largest"]
        print(f"{name:22s} measure {time.perf_counter() - t0:6.2f} s  perpendicular "
              f"{les['perpendicular_diameter']['mm']} mm")
    pts = geo.exposed_faces(checkerboard(64)[:, :, 1] == 2) * 0.8
    axis = np.array([1.0, 1.0])
    t0 = time.perf_counter()
    fast = geo.longest_perpendicular(pts, axis, (5.0,))
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = all_pairs(pts, axis)
    t_ref = time.perf_counter() - t0
    assert fast is not None
    print(f"64^2 checkerboard slice, {len(pts)} points: staircases {fast[0]:.4f} mm in {t_fast:.4f} s, all pairs "
          f"{ref:.4f} mm in {t_ref:.2f} s (ratio {t_ref / max(t_fast, 1e-9):.0f}x)")


if __name__ == "__main__":
    main()
