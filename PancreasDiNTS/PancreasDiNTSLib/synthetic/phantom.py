"""Synthetic abdominal CT phantoms with pancreas (label 1) and pancreatic tumour (label 2) labels.

A phantom is built in body-relative units (1 unit = half the body width; x toward the patient's left-right as
in RAS+, y anterior, z superior) so that the anatomy fills the field of view whatever the matrix size. It has a
body outline with subcutaneous fat and a muscle wall, visceral fat, spine (cortical shell, cancellous bone,
discs, canal, posterior elements), ribs, psoas and paraspinal muscles, liver, gallbladder, spleen, kidneys
(cortex and sinus), aorta, IVC, the splenic-portal vein along the back of the pancreas, stomach (air cap over
fluid or oral contrast), duodenum around the pancreatic head, bowel loops with air / fluid / contrast, and a
curved pancreas (head near the duodenum, body over the aorta, tail toward the splenic hilum) that usually
holds a hypodense tumour. Values are Hounsfield units (portal venous phase); partial-volume blur and noise
are added; spacing, matrix size and orientation are random but fixed by the seed.

``write_msd_dataset`` writes phantoms in the Medical Segmentation Decathlon Task07 layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.atomic import atomic_dir
from PancreasDiNTSLib.core.errors import OutputError
from PancreasDiNTSLib.io.writers import save_nifti
from PancreasDiNTSLib.readout.location import part_of

Point = Sequence[float]  # a position in body units (x, y, z)
# Orientation codes seen in clinical NIfTI conversions; one is drawn per phantom.
ORIENTATIONS = ("RAS", "LAS", "LPS", "RPS", "LPI", "RAI")
# In-plane matrix sizes per size class (a range drawn from, or a fixed size).
SIZES: dict[str, tuple[int, int]] = {
    "tiny": (48, 64),
    "small": (112, 144),
    "medium": (224, 288),
    "full": (512, 512),
}
LABELS = {0: "background", 1: "pancreas", 2: "cancer"}  # names as in MSD Task07 dataset.json
# tumour_at by name: the middle of each third of the gland's length (readout.location's parts)
TUMOUR_PLACES = {"head": 1.0 / 6.0, "neck": 0.5, "body": 0.5, "neck/body": 0.5, "tail": 5.0 / 6.0}


@dataclass
class PhantomInfo:
    """What was drawn for one phantom (kept in dataset.json's per-case notes and useful in tests)."""

    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    has_tumour: bool
    noise_hu: float
    # where the tumour's centre lies along the gland's drawn centre curve, by arc length from the head (0) to the
    # tail (1), and that position's part (readout.location.PARTS: thirds of the length); None without a tumour
    tumour_fraction: float | None = None
    tumour_part: str | None = None


class _Canvas:
    """A canonical (RAS) voxel grid in body units with HU and label arrays; shapes are painted in bboxes."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], unit_mm: float,
                 centre_mm: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = spacing
        self.axes = [
            ((np.arange(n) - (n - 1) / 2.0) * s + c) / unit_mm for n, s, c in zip(shape, spacing, centre_mm, strict=True)
        ]
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def grid(self, lo: Point, hi: Point) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray]:
        """Index slices and open-grid coordinates (broadcastable X, Y, Z) of the box [lo, hi] in units."""
        slices = []
        coords = []
        for ax, (a, b) in enumerate(zip(lo, hi, strict=True)):
            v = self.axes[ax]
            i0 = int(np.searchsorted(v, a, side="left"))
            i1 = int(np.searchsorted(v, b, side="right"))
            slices.append(slice(i0, max(i0, i1)))
            coords.append(v[i0:max(i0, i1)].astype(np.float32))
        X = coords[0][:, None, None]
        Y = coords[1][None, :, None]
        Z = coords[2][None, None, :]
        return tuple(slices), X, Y, Z

    def paint(self, lo: Point, hi: Point, mask_fn: Callable[..., np.ndarray], hu: float | Callable[..., np.ndarray],
              label: int | None = None, only_label: int | None = None) -> None:
        """Set HU (and label) where ``mask_fn(X, Y, Z)`` is true inside the box [lo, hi]."""
        sl, X, Y, Z = self.grid(lo, hi)
        if any(s.stop <= s.start for s in sl):
            return
        mask = np.broadcast_to(mask_fn(X, Y, Z), (X.shape[0], Y.shape[1], Z.shape[2]))
        if only_label is not None:
            mask = mask & (self.label[sl] == only_label)
        region = self.hu[sl]
        value = hu(X, Y, Z) if callable(hu) else hu
        region[mask] = np.broadcast_to(value, mask.shape)[mask] if callable(hu) else value
        if label is not None:
            self.label[sl][mask] = label


def _ellipsoid(c: Sequence[float], r: Sequence[float], rot_z: float = 0.0) -> Callable[..., np.ndarray]:
    """Mask function of an ellipsoid with centre c, radii r, rotated by rot_z (radians) about z."""
    cz, sz = np.cos(rot_z), np.sin(rot_z)

    def fn(X, Y, Z):
        dx, dy = X - c[0], Y - c[1]
        u = cz * dx + sz * dy
        v = -sz * dx + cz * dy
        return (u / r[0]) ** 2 + (v / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0

    return fn


def _box(c: Sequence[float], r: Sequence[float]) -> tuple[Point, Point]:
    m = max(r) * 1.01
    return (c[0] - m, c[1] - m, c[2] - m), (c[0] + m, c[1] + m, c[2] + m)


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    """Points of a quadratic/cubic Bezier curve through control ``points`` (k x 3), sampled n times."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    if len(points) == 3:
        p0, p1, p2 = points
        return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _tube(canvas: _Canvas, curve: np.ndarray, radius: np.ndarray) -> tuple[Point, Point, Callable[..., np.ndarray]]:
    """Box and mask function of a tube of varying radius around a sampled curve (n x 3, radius n)."""
    lo = tuple(curve.min(0) - radius.max() * 1.05)
    hi = tuple(curve.max(0) + radius.max() * 1.05)

    def fn(X, Y, Z):
        inside = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), dtype=bool)
        for p, r in zip(curve, radius, strict=True):
            inside |= (X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2 <= r * r
        return inside

    return lo, hi, fn


Mask = Callable[..., np.ndarray]
FULL_Z = (-10.0, 10.0)  # z range (units) of structures that run through the whole phantom


@dataclass
class _Scene:
    """What the painting steps share: the random stream, the canvas and the landmarks placed so far (units).

    The steps draw from ``rng`` in a fixed order: a phantom depends only on its seed and arguments."""

    rng: np.random.Generator
    cv: _Canvas
    ay: float = 0.0  # body half-depth / half-width
    ri: float = 0.0  # inner half-width of the body cavity
    bi: float = 0.0  # inner half-depth of the body cavity
    cavity: Mask | None = None
    spine_y: float = 0.0
    vb_r: float = 0.0  # vertebral body radius
    spleen_c: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stomach_c: tuple[float, float, float] = (0.0, 0.0, 0.0)
    aorta_c: tuple[float, float] = (0.0, 0.0)
    panc_hu: float = 0.0
    curve: np.ndarray | None = None  # pancreas centre line (n x 3)
    radius: np.ndarray | None = None  # pancreas radius along the curve
    tumour_at: float | None = None  # forced tumour position (arc-length fraction head -> tail); None: drawn
    tumour_fraction: float | None = None  # where the painted tumour's centre projects on the curve

    full_lo = (-1.05, -1.05, FULL_Z[0])
    full_hi = (1.05, 1.05, FULL_Z[1])

    def j(self, s: float = 0.04) -> float:
        """Small positional jitter in units."""
        return float(self.rng.uniform(-s, s))

    def content_hu(self) -> tuple[float, float]:
        """(fill, air) HU of a hollow organ's content: air, fluid or oral contrast."""
        kind = self.rng.choice(["air", "fluid", "contrast"], p=[0.3, 0.4, 0.3])
        return {"air": (-900.0, -900.0), "fluid": (15.0, -900.0), "contrast": (320.0, -900.0)}[kind]

    def in_cavity(self, mask: Mask) -> Mask:
        cavity = self.cavity
        assert cavity is not None
        return lambda X, Y, Z: mask(X, Y, Z) & cavity(X, Y, Z)


def _draw_grid(rng: np.random.Generator, shape: tuple[int, int, int] | None,
               spacing: tuple[float, float, float] | None, size: str | int,
               slice_mm: tuple[float, float]) -> _Canvas:
    """Spacing, matrix size and the body's scale: the canvas in body units."""
    if spacing is None:
        sxy = float(rng.uniform(0.6, 1.0))
        spacing = (sxy, sxy, float(rng.uniform(float(slice_mm[0]), float(slice_mm[1]))))
    spacing = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    body_fill = float(rng.uniform(0.80, 0.90))  # fraction of the in-plane field of view spanned by the body
    if shape is None:
        if isinstance(size, str):
            if size not in SIZES:
                raise ValueError(f"size must be one of {', '.join(SIZES)} or a number, not {size!r}")
            lo_n, hi_n = SIZES[size]
        else:
            lo_n = hi_n = int(size)
        n = int(rng.integers(lo_n, hi_n + 1))
        n -= n % 2
        fov_xy = n * spacing[0]
        fov_z = fov_xy * body_fill / 2.0 * float(rng.uniform(1.2, 1.7))
        nz = max(8, int(round(fov_z / spacing[2])))
        shape = (n, n, nz)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    unit_mm = body_fill * shape[0] * spacing[0] / 2.0  # half body width in mm
    centre_mm = (0.0, float(rng.uniform(-0.04, 0.04)) * unit_mm, 0.0)
    return _Canvas(shape, spacing, unit_mm, centre_mm)


def _paint_body_wall(sc: _Scene) -> None:
    """Subcutaneous fat, abdominal wall muscle, visceral fat; the cavity inside them."""
    sc.ay = ay = float(sc.rng.uniform(0.66, 0.78))
    fat_t = float(sc.rng.uniform(0.05, 0.13))
    mus_t = float(sc.rng.uniform(0.035, 0.05))

    def body_ellipse(shrink: float) -> Mask:
        return lambda X, Y, Z: (X / (1 - shrink)) ** 2 + (Y / (ay - shrink)) ** 2 <= 1.0

    sc.cv.paint(sc.full_lo, sc.full_hi, body_ellipse(0.0), -100 + sc.j(10) * 10)  # subcutaneous fat
    sc.cv.paint(sc.full_lo, sc.full_hi, body_ellipse(fat_t), 50.0)  # abdominal wall muscle
    sc.cv.paint(sc.full_lo, sc.full_hi, body_ellipse(fat_t + mus_t), -90.0)  # visceral fat
    sc.cavity = body_ellipse(fat_t + mus_t)
    sc.ri = 1 - fat_t - mus_t
    sc.bi = ay - fat_t - mus_t


def _paint_spine(sc: _Scene) -> None:
    """Paraspinal muscles, vertebral bodies with discs, posterior elements, canal, psoas."""
    cv, full_lo, full_hi = sc.cv, sc.full_lo, sc.full_hi
    sc.spine_y = spine_y = -sc.bi + 0.32 + sc.j(0.03)
    sc.vb_r = vb_r = 0.17 + sc.j(0.02)
    for sx in (-1, 1):  # paraspinal muscles
        c = (sx * 0.22, -sc.bi + 0.12, 0.0)
        cv.paint(full_lo, full_hi, lambda X, Y, Z, c=c: ((X - c[0]) / 0.17) ** 2 + ((Y - c[1]) / 0.13) ** 2 <= 1,
                 55.0)
    disc_period = 0.26 + sc.j(0.02)
    disc_phase = float(sc.rng.uniform(0, disc_period))

    def is_disc(Z: np.ndarray) -> np.ndarray:
        return np.abs(((Z - disc_phase) % disc_period) - disc_period / 2) < 0.035

    def vb_hu(X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        d = np.sqrt((X / vb_r) ** 2 + ((Y - spine_y) / (vb_r * 0.9)) ** 2)
        bone = np.where(d > 0.82, 750.0, 230.0).astype(np.float32)
        return np.where(is_disc(Z), 95.0, bone)

    vb_lo, vb_hi = (-vb_r, spine_y - vb_r, FULL_Z[0]), (vb_r, spine_y + vb_r, FULL_Z[1])
    cv.paint(vb_lo, vb_hi, lambda X, Y, Z: (X / vb_r) ** 2 + ((Y - spine_y) / (vb_r * 0.9)) ** 2 <= 1, vb_hu)
    canal_y = spine_y - vb_r * 0.9 - 0.07
    cv.paint((-0.2, canal_y - 0.2, FULL_Z[0]), (0.2, canal_y + 0.1, FULL_Z[1]),
             lambda X, Y, Z: (np.abs(X) < 0.13) & (Y < canal_y + 0.02) & (Y > canal_y - 0.16) & ~is_disc(Z),
             600.0)  # pedicles, laminae and spinous process
    cv.paint((-0.07, canal_y - 0.07, FULL_Z[0]), (0.07, canal_y + 0.07, FULL_Z[1]),
             lambda X, Y, Z: X**2 + (Y - canal_y) ** 2 <= 0.055**2, 15.0)  # spinal canal
    for sx in (-1, 1):  # psoas: grows inferiorly
        c2 = (sx * (vb_r + 0.08), spine_y + 0.02)
        cv.paint(full_lo, full_hi,
                 lambda X, Y, Z, c=c2: ((X - c[0]) / (0.07 + 0.05 * np.clip(-Z, 0, 1))) ** 2
                 + ((Y - c[1]) / (0.07 + 0.04 * np.clip(-Z, 0, 1))) ** 2 <= 1, 48.0)


def _paint_ribs(sc: _Scene) -> None:
    """Ribs of the upper abdomen, sloping down toward the front."""
    ri, bi = sc.ri, sc.bi
    rib_z0 = float(sc.rng.uniform(-0.45, -0.25))
    rib_step = 0.17 + sc.j(0.02)
    for k in range(12):
        zc = rib_z0 + k * rib_step
        if zc > FULL_Z[1]:
            break

        def rib(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, zc: float = zc) -> np.ndarray:
            e = np.sqrt((X / (ri + 0.02)) ** 2 + (Y / (bi + 0.02)) ** 2)
            ang = np.arctan2(Y, np.abs(X))  # -pi/2 (back) .. pi/2 (front)
            zr = zc + 0.12 * (ang + 0.6)  # ribs slope down toward the front
            return (np.abs(e - 1.0) < 0.022 / ri * 1.5) & (np.abs(Z - zr) < 0.025) & (ang > -1.1) & (ang < 0.9)

        sc.cv.paint((-1.05, -1.05, zc - 0.35), (1.05, 1.05, zc + 0.3), rib, 550.0)


def _paint_solid_organs(sc: _Scene) -> None:
    """Liver, gallbladder, spleen, kidneys (cortex and sinus)."""
    cv, j, cavity = sc.cv, sc.j, sc.cavity
    assert cavity is not None
    liver_hu = float(sc.rng.uniform(95, 120))
    c = (0.42 + j(), 0.02 + j(), 0.45 + j(0.08))
    r = (0.5 + j(), 0.52 + j(), 0.6 + j(0.06))
    liver = _ellipsoid(c, r, rot_z=0.3)
    lo, hi = _box(c, r)
    cv.paint(lo, hi, lambda X, Y, Z: liver(X, Y, Z) & cavity(X, Y, Z) & (X > -0.25 - 0.3 * (Y > 0)), liver_hu)
    c = (0.3 + j(), 0.28 + j(0.03), 0.0 + j(0.05))
    r = (0.08, 0.06, 0.13)
    cv.paint(*_box(c, r), _ellipsoid(c, r), 8.0)  # gallbladder
    c = (-0.6 + j(), -0.28 + j(), 0.32 + j(0.05))
    r = (0.16 + j(0.02), 0.27 + j(0.03), 0.3 + j(0.04))
    sc.spleen_c = c
    cv.paint(*_box(c, r), sc.in_cavity(_ellipsoid(c, r, rot_z=-0.6)), float(sc.rng.uniform(110, 130)))
    for sx, dz in ((1, -0.32), (-1, -0.22)):  # right kidney sits lower
        c = (sx * (0.38 + j(0.03)), sc.spine_y + 0.02 + j(0.03), dz + j(0.05))
        r = (0.12, 0.15, 0.27)
        cv.paint(*_box(c, r), _ellipsoid(c, r, rot_z=sx * 0.5), float(sc.rng.uniform(160, 200)))  # cortex
        r2 = (0.06, 0.07, 0.17)
        c2 = (c[0] - sx * 0.03, c[1] + 0.02, c[2])
        cv.paint(*_box(c2, r2), _ellipsoid(c2, r2, rot_z=sx * 0.5), 30.0)  # sinus fat / pelvis


def _paint_hollow_organs(sc: _Scene) -> None:
    """Stomach (air cap over fluid or contrast) and bowel loops of the lower abdomen."""
    cv, j, rng = sc.cv, sc.j, sc.rng
    c = (-0.35 + j(), 0.22 + j(), 0.42 + j(0.06))
    r = (0.28 + j(), 0.2 + j(0.03), 0.27 + j(0.04))
    inner = _ellipsoid(c, tuple(x - 0.035 for x in r), rot_z=0.4)
    fill, air = sc.content_hu()
    cv.paint(*_box(c, r), sc.in_cavity(_ellipsoid(c, r, rot_z=0.4)), 45.0)
    air_level = c[1] + r[1] * float(rng.uniform(0.2, 0.6))
    cv.paint(*_box(c, r), inner, lambda X, Y, Z: np.where(Y > air_level, air, fill).astype(np.float32))
    sc.stomach_c = c
    n_loops = int(rng.integers(4, 9))
    for _ in range(n_loops):  # bowel loops, lower abdomen
        c = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.0, sc.bi - 0.15)), float(rng.uniform(-0.9, -0.25)))
        rr = float(rng.uniform(0.07, 0.12))
        r = (rr, rr * float(rng.uniform(0.8, 1.2)), rr * float(rng.uniform(1.0, 2.0)))
        fill, _ = sc.content_hu()
        cv.paint(*_box(c, r), sc.in_cavity(_ellipsoid(c, r)), 40.0)
        cv.paint(*_box(c, r), _ellipsoid(c, tuple(x - 0.025 for x in r)), fill)


def _paint_vessels(sc: _Scene) -> None:
    """Aorta and IVC in front of the spine."""
    sc.aorta_c = aorta_c = (-0.06 + sc.j(0.02), sc.spine_y + sc.vb_r + 0.07)
    ivc_c = (0.16 + sc.j(0.02), sc.spine_y + sc.vb_r + 0.04)
    sc.cv.paint(sc.full_lo, sc.full_hi, lambda X, Y, Z: (X - aorta_c[0]) ** 2 + (Y - aorta_c[1]) ** 2 <= 0.075**2,
                float(sc.rng.uniform(150, 190)))
    sc.cv.paint(sc.full_lo, sc.full_hi,
                lambda X, Y, Z: ((X - ivc_c[0]) / 0.09) ** 2 + ((Y - ivc_c[1]) / 0.06) ** 2 <= 1, 135.0)


def _paint_pancreas(sc: _Scene) -> None:
    """The curved gland (label 1) from head to tail, the duodenum around its head, the splenic-portal vein."""
    cv, j, rng = sc.cv, sc.j, sc.rng
    sc.panc_hu = panc_hu = float(rng.uniform(95, 125))
    pz = float(rng.uniform(-0.1, 0.1))
    head = np.array([0.2 + j(), sc.aorta_c[1] + 0.16 + j(0.03), pz - 0.05])
    neck = np.array([-0.02 + j(), sc.aorta_c[1] + 0.26 + j(0.03), pz + 0.02])
    tail = np.array([sc.spleen_c[0] + 0.16 + j(0.03), sc.spleen_c[1] + 0.14 + j(0.03), pz + 0.14 + j(0.04)])
    mid = np.array([(neck[0] + tail[0]) / 2, neck[1] + 0.02, (neck[2] + tail[2]) / 2])
    sc.curve = curve = _bezier(np.stack([head, neck, mid, tail]), 48)
    sc.radius = radius = np.linspace(0.105, 0.065, len(curve)) * float(rng.uniform(0.9, 1.15))
    _paint_duodenum(sc, head)
    lo, hi, panc = _tube(cv, curve, radius)
    uncinate_c = (head[0] - 0.02, head[1] - 0.03, head[2] - 0.12)
    uncinate = _ellipsoid(uncinate_c, (0.09, 0.07, 0.1))
    lo = tuple(min(a, b) for a, b in zip(lo, (uncinate_c[0] - 0.1, uncinate_c[1] - 0.1, uncinate_c[2] - 0.11),
                                         strict=True))

    def panc_hu_fn(X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:  # slightly lobulated parenchyma
        return (panc_hu + 8.0 * np.sin(X * 55.0) * np.sin(Y * 47.0) * np.sin(Z * 51.0)).astype(np.float32)

    cv.paint(lo, hi, lambda X, Y, Z: panc(X, Y, Z) | uncinate(X, Y, Z), panc_hu_fn, label=1)
    # splenic vein behind the body/tail, joining the portal vein behind the neck toward the liver
    k0 = int(len(curve) * 0.3)
    vein = curve[k0:].copy()
    vein[:, 1] -= radius[k0:] * 0.95
    portal = _bezier(np.array([vein[0], [vein[0][0] + 0.12, vein[0][1] + 0.02, vein[0][2] + 0.1],
                               [0.3, vein[0][1] + 0.05, pz + 0.35]]), 16)
    vein_all = np.concatenate([portal[::-1], vein])
    lo, hi, vein_fn = _tube(cv, vein_all, np.full(len(vein_all), 0.035))
    cv.paint(lo, hi, vein_fn, float(rng.uniform(150, 175)), label=0)


def _paint_duodenum(sc: _Scene, head: np.ndarray) -> None:
    """A C around the pancreatic head, lateral and below it: wall, then lumen."""
    stomach_c = sc.stomach_c
    duo = _bezier(np.array([[stomach_c[0] + 0.25, stomach_c[1] - 0.05, head[2] + 0.25],
                            [head[0] + 0.32, head[1] + 0.05, head[2] + 0.1],
                            [head[0] + 0.22, head[1], head[2] - 0.28],
                            [head[0] - 0.22, head[1] - 0.05, head[2] - 0.22]]), 40)
    lo, hi, duo_wall = _tube(sc.cv, duo, np.full(len(duo), 0.06))
    sc.cv.paint(lo, hi, duo_wall, 50.0)
    fill, _ = sc.content_hu()
    lo, hi, duo_lumen = _tube(sc.cv, duo, np.full(len(duo), 0.035))
    sc.cv.paint(lo, hi, duo_lumen, fill if fill > -500 else 15.0)


def _paint_tumour(sc: _Scene) -> None:
    """A hypodense tumour (label 2) along the gland, mostly in the head, bulging its outline."""
    curve, radius = sc.curve, sc.radius
    assert curve is not None and radius is not None
    rng = sc.rng
    k = int(rng.choice(len(curve), p=_head_weighted(len(curve))))  # drawn even when forced: same stream after
    if sc.tumour_at is not None:
        k = _index_at(curve, sc.tumour_at)
    tc = curve[k] + rng.normal(0, radius[k] * 0.25, 3)
    sc.tumour_fraction = _arc_fraction(curve, tc)
    tr = radius[k] * rng.uniform(0.75, 1.35, 3)  # 1-3 cm at adult scale, bulging the outline
    tmask = _ellipsoid(tuple(tc), tuple(tr), rot_z=float(rng.uniform(0, np.pi)))
    grow = _tube(sc.cv, curve, radius * 1.6)[2]
    t_hu = sc.panc_hu - float(rng.uniform(40, 70))

    def tumour_hu(X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        d = ((X - tc[0]) / tr[0]) ** 2 + ((Y - tc[1]) / tr[1]) ** 2 + ((Z - tc[2]) / tr[2]) ** 2
        return (t_hu + 15.0 * np.clip(d, 0, 1)).astype(np.float32)  # darker core, softer rim

    m = float(tr.max()) * 1.05
    sc.cv.paint(tuple(tc - m), tuple(tc + m), lambda X, Y, Z: tmask(X, Y, Z) & grow(X, Y, Z), tumour_hu, label=2)


def _blur_and_noise(rng: np.random.Generator, hu: np.ndarray, noise: bool) -> tuple[np.ndarray, float]:
    """Partial-volume blur and mildly correlated noise, clipped to the CT range; (HU, noise level)."""
    from scipy import ndimage

    hu = ndimage.gaussian_filter(hu, sigma=(0.6, 0.6, 0.45), mode="nearest")
    noise_hu = float(rng.uniform(8.0, 20.0)) if noise else 0.0
    if noise:
        n = rng.standard_normal(hu.shape, dtype=np.float32)
        n = ndimage.gaussian_filter(n, sigma=0.6) * 2.2  # mildly correlated, about unit std again
        hu += noise_hu * n
    return np.clip(hu, -1024.0, 3071.0).astype(np.float32), noise_hu


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    size: str | int = "small",
    orientation: str | None = None,
    tumour: bool | None = None,
    noise: bool = True,
    return_info: bool = False,
    slice_mm: tuple[float, float] = (1.0, 5.0),
    tumour_at: str | float | None = None,
) -> Any:
    """One synthetic abdominal CT: ``(image HU float32, label uint8, affine 4x4)`` in the drawn orientation.

    ``shape``/``spacing`` (mm) fix the grid (array order after orientation, which only flips axes);
    otherwise the in-plane matrix size is drawn from ``size`` ("tiny", "small", "medium", "full" or a number),
    in-plane spacing from 0.6-1.0 mm and slice spacing from ``slice_mm`` (default 1-5 mm; the anatomy scales with
    the field of view, so a ``small`` phantom's pancreas is only 1-2 slices of 3-5 mm thick: thinner slices, e.g.
    0.6-1.2 mm, give it the slice count of a real CT). ``orientation`` is an axcode such as "LPS"
    (default: drawn from ORIENTATIONS). ``tumour`` forces a tumour on/off (default: present in ~85 %).
    ``tumour_at`` places the tumour ("head", "body", "tail": the middle of that third of the gland, or a
    fraction 0..1 along its centre curve from the head); the default None draws it (mostly in the head), and
    the random stream is the same either way, so only the tumour moves. With ``return_info=True`` a fourth
    item, a :class:`PhantomInfo` (with the tumour's fraction and part), is returned.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7307]))
    sc = _Scene(rng, _draw_grid(rng, shape, spacing, size, slice_mm), tumour_at=tumour_position(tumour_at))
    for step in (_paint_body_wall, _paint_spine, _paint_ribs, _paint_solid_organs, _paint_hollow_organs,
                 _paint_vessels, _paint_pancreas):
        step(sc)
    has_tumour = bool(rng.random() < 0.85) if tumour is None else bool(tumour)
    if has_tumour:
        _paint_tumour(sc)
    hu, noise_hu = _blur_and_noise(rng, sc.cv.hu, noise)
    shape, spacing = sc.cv.shape, sc.cv.spacing
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    offset = rng.uniform(-60, 60, 3)
    affine[:3, 3] = -(np.array(shape) - 1) / 2.0 * np.array(spacing) + offset
    code = orientation or str(rng.choice(ORIENTATIONS))
    hu, label, affine = _reorient(hu, sc.cv.label, affine, code)
    has = bool((label == 2).any())
    fraction = sc.tumour_fraction if has else None
    info = PhantomInfo(seed=int(seed), shape=tuple(hu.shape), spacing=spacing, orientation=code, has_tumour=has,
                       noise_hu=noise_hu, tumour_fraction=None if fraction is None else round(fraction, 4),
                       tumour_part=None if fraction is None else part_of(fraction))
    return (hu, label, affine, info) if return_info else (hu, label, affine)


def _arc_length(curve: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])


def _index_at(curve: np.ndarray, fraction: float) -> int:
    """The curve sample nearest the arc-length ``fraction`` (0 head .. 1 tail)."""
    s = _arc_length(curve)
    return int(np.argmin(np.abs(s / s[-1] - fraction)))


def _arc_fraction(curve: np.ndarray, point: np.ndarray) -> float:
    """Arc-length fraction (head 0 .. tail 1) of ``point``'s projection on the sampled curve (a polyline)."""
    a, b = curve[:-1], curve[1:]
    d = b - a
    dd = np.maximum((d * d).sum(axis=1), 1e-12)
    t = np.clip(((point - a) * d).sum(axis=1) / dd, 0.0, 1.0)
    k = int(np.argmin(np.linalg.norm(a + t[:, None] * d - point, axis=1)))
    s = _arc_length(curve)
    return float((s[k] + t[k] * np.sqrt(dd[k])) / s[-1])


def tumour_position(tumour_at: str | float | None) -> float | None:
    """``tumour_at`` ("head", "body" / "neck/body", "tail", or a fraction 0..1 along the gland from the head)
    as a fraction; ValueError for anything else."""
    if tumour_at is None:
        return None
    if isinstance(tumour_at, str):
        key = tumour_at.strip().lower()
        if key not in TUMOUR_PLACES:
            raise ValueError(f"tumour_at must be one of {', '.join(TUMOUR_PLACES)} or a fraction 0..1, "
                             f"not {tumour_at!r}")
        return TUMOUR_PLACES[key]
    value = float(tumour_at)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"tumour_at must be a fraction between 0 (head) and 1 (tail), not {tumour_at!r}")
    return value


def _head_weighted(n: int) -> np.ndarray:
    """Tumour position along the gland: about two thirds in the head/neck, as in pancreatic cancer."""
    w = np.where(np.arange(n) < n * 0.35, 2.0, 0.6)
    return w / w.sum()


def _reorient(hu: np.ndarray, label: np.ndarray, affine: np.ndarray, code: str):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    if len(code) != 3 or any(ch not in "RLAPSI" for ch in code):
        raise ValueError(f"orientation must be a 3-letter axcode such as 'LPS', not {code!r}")
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(code)))
    new_affine = affine @ inv_ornt_aff(t, hu.shape)
    return (np.ascontiguousarray(apply_orientation(hu, t)), np.ascontiguousarray(apply_orientation(label, t)),
            new_affine)


# ---------------------------------------------------------------------------------------------- writing


def write_msd_dataset(
    out_dir: Path,
    num_training: int,
    num_test: int = 0,
    seed: int = 0,
    size: str | int = "small",
    progress: Any = None,
    overwrite: bool = False,
    slice_mm: tuple[float, float] = (1.0, 5.0),
    make_case: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] | None = None,
) -> Path:
    """Write phantoms in the MSD Task07 layout (dataset.json, imagesTr/, labelsTr/, imagesTs/); return out_dir.

    Case ``i`` (1-based; training first, then test) uses seed ``seed * 100003 + i``, so a case does not change
    when ``num_training`` changes. The folder is assembled next to ``out_dir`` and renamed into place at the end.
    ``make_case(case_seed) -> (HU, label, affine, notes)`` draws other cases than single phantoms (e.g.
    :func:`.mosaic.mosaic_case`); ``size`` and ``slice_mm`` then do not apply.
    """
    out_dir = Path(out_dir)
    if num_training < 0 or num_test < 0 or num_training + num_test == 0:
        raise OutputError("make-phantoms: the number of cases must be at least 1")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputError(f"{out_dir}: folder exists and is not empty; choose a new folder or pass --overwrite")
    total = num_training + num_test
    training, test, notes = [], [], {}
    with atomic_dir(out_dir) as tmp:
        for i in range(1, total + 1):
            case = f"pancreas_{i:03d}"
            case_seed = int(seed) * 100003 + i
            if progress is not None:
                progress.start_item(i - 1)
                progress.update(case, "generate", 0.0)
            if make_case is None:
                hu, label, affine, info = make_phantom(case_seed, size=size, return_info=True, slice_mm=slice_mm)
                note = {"seed": case_seed, "shape": list(info.shape), "spacing": [round(s, 4) for s in info.spacing],
                        "orientation": info.orientation, "tumour": info.has_tumour}
            else:
                hu, label, affine, note = make_case(case_seed)
                note = {"seed": case_seed, **note}
            hu_i16 = np.round(hu).astype(np.int16)
            if i <= num_training:
                save_nifti(tmp / "imagesTr" / f"{case}.nii.gz", hu_i16, affine, np.int16)
                save_nifti(tmp / "labelsTr" / f"{case}.nii.gz", label, affine, np.uint8)
                training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            else:
                save_nifti(tmp / "imagesTs" / f"{case}.nii.gz", hu_i16, affine, np.int16)
                test.append(f"./imagesTs/{case}.nii.gz")
            notes[case] = note
            if progress is not None:
                progress.update(case, "done", 1.0)
        (tmp / "imagesTs").mkdir(exist_ok=True)
        dataset = {
            "name": "Pancreas",
            "description": "Synthetic pancreas and pancreatic tumour CT phantoms (PancreasDiNTS), MSD Task07 layout",
            "reference": "synthetic, generated by PancreasDiNTSLib.synthetic.phantom",
            "licence": "CC0 (synthetic data)",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {str(k): v for k, v in LABELS.items()},
            "numTraining": num_training,
            "numTest": num_test,
            "training": training,
            "test": test,
            "phantom": {"seed": int(seed), "size": size, "cases": notes},
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return out_dir
