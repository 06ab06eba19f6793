"""Which acquired CT image a measured line lies on, and where in its pixels (DICOM image coordinates).

A RECIST line is measured on one axial slice of the label grid. When that slice is an acquired image (an axial,
oblique or gantry-tilted series: the grid's slices are the images' planes) both endpoints lie in the image's
plane, and the line can be shown on that image as a 2D SCOORD (IHE AIR) or burned into a key image. Image
coordinates are DICOM's (PS3.3 C.18.6.1.1): column, row with (0, 0) at the top-left corner of the top-left
pixel, so the first pixel's centre is (0.5, 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
PLANE_TOLERANCE_MM = 0.05  # endpoints are reported to 0.01 mm per coordinate


@dataclass(frozen=True)
class ImagePlane:
    """One image's geometry: position (LPS mm), row and column directions, spacing (between rows, columns)."""

    index: int
    position: np.ndarray
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    spacing: tuple[float, float]  # PixelSpacing: (row spacing, column spacing) mm
    size: tuple[int, int]  # (rows, columns)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)

    def distance(self, lps: np.ndarray) -> np.ndarray:
        return (np.asarray(lps, float) - self.position) @ self.normal

    def to_image(self, lps: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) -> image coordinates (N, 2: column, row; pixel centres at +0.5)."""
        d = np.asarray(lps, float) - self.position
        return np.stack([d @ self.row_dir / self.spacing[1] + 0.5, d @ self.col_dir / self.spacing[0] + 0.5], 1)

    def to_patient(self, image: np.ndarray) -> np.ndarray:
        """Image coordinates (N, 2) -> LPS points in the image's plane."""
        xy = np.asarray(image, float) - 0.5
        return (self.position + xy[:, :1] * self.spacing[1] * self.row_dir
                + xy[:, 1:2] * self.spacing[0] * self.col_dir)


def plane_of(ds: Any, index: int = 0) -> ImagePlane:
    """The ImagePlane of a single-frame image dataset."""
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    spacing = tuple(float(v) for v in ds.PixelSpacing)
    return ImagePlane(index, np.asarray([float(v) for v in ds.ImagePositionPatient]), iop[:3] / np.linalg.norm(iop[:3]),
                      iop[3:] / np.linalg.norm(iop[3:]), (spacing[0], spacing[1]), (int(ds.Rows), int(ds.Columns)))


def lps(points_ras: Sequence[Sequence[float]]) -> np.ndarray:
    """RAS points (mm) -> LPS (the DICOM patient coordinate system)."""
    return np.asarray(points_ras, dtype=np.float64) * RAS_TO_LPS


def image_with(planes: Sequence[ImagePlane], points_ras: Sequence[Sequence[float]],
               tolerance_mm: float = PLANE_TOLERANCE_MM) -> tuple[ImagePlane, np.ndarray] | None:
    """The image whose plane holds every point (the closest within ``tolerance_mm``) and the points' image
    coordinates; None when no acquired image holds them all (a line measured on a resampled slice)."""
    pts = lps(points_ras)
    best: tuple[float, ImagePlane] | None = None
    for plane in planes:
        off = float(np.abs(plane.distance(pts)).max())
        if off <= tolerance_mm and (best is None or off < best[0]):
            best = (off, plane)
    return None if best is None else (best[1], best[1].to_image(pts))
