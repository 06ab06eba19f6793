"""Key images (``--format key-images``): per lesion the acquired CT image its longest axial diameter was measured
on, with the segment outlines, the long axis (yellow) and its perpendicular (cyan) and their lengths burned in; one
image of the gland when no lesion was found. Every viewer shows them, with or without SEG/SR support.

One Multi-frame True Color Secondary Capture object (one frame per lesion, largest first; Frame Label Vector
names each frame), a new series in the input's study: one file fits the case folder's one-file-per-output rule,
and true colour carries the coloured outlines every viewer draws as pixels (a grayscale CT copy with overlay
planes or a presentation state is drawn by fewer viewers). Marked as derived and as an AI result: Image Type
DERIVED\\SECONDARY, Burned In Annotation YES, "AI RESULT ... not for clinical use" burned into every frame,
Contributing Equipment (the AI, DCM 109102), Derivation Description, and a Source Image Sequence naming each
frame's CT image. Window: level 50 HU, width 350 HU (a pancreas window). Small images are enlarged by a whole
factor (nearest neighbour) to at least 512 pixels so the text stays legible; Pixel Spacing says the new size.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import InputError, first_line
from PancreasDiNTSLib.core.terminology import SEGMENTS
from PancreasDiNTSLib.io.dicom import slice_hu
from PancreasDiNTSLib.io.dicom_derived import NOT_CLINICAL, base_dataset, image_reference
from PancreasDiNTSLib.io.dicom_seg import clean_text, encode, frames_on_sources, prepare_sources
from PancreasDiNTSLib.io.image_plane import ImagePlane, image_with, lps, plane_of

MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
WINDOW = (50.0, 350.0)  # level, width (HU)
MIN_SIZE = 512
LONG_COLOUR, PERP_COLOUR = (255, 255, 0), (0, 255, 255)
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


class KeyImagesError(InputError):
    """No key images can be made for this case (one line; the other outputs are unaffected)."""


@dataclass
class KeyView:
    """One frame: which source image, its label, the lines to draw (image coordinates) and the text."""

    index: int
    label: str  # the finding's tracking identifier (burned in)
    frame: str  # the frame's short label (Frame Label Vector, SH)
    lines: list[tuple[np.ndarray, tuple[int, int, int]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def _nearest(planes: Sequence[ImagePlane], point_ras: Sequence[float]) -> ImagePlane:
    p = lps([point_ras])
    return min(planes, key=lambda pl: float(abs(pl.distance(p)[0])))


def _lesion_view(planes: Sequence[ImagePlane], comp: dict[str, Any], ident: str, size: str | None) -> KeyView:
    frame = f"Lesion {int(comp['rank'])}"
    long, perp = comp.get("longest_axial_diameter"), comp.get("perpendicular_diameter")
    text = [f"{ident}: volume {comp['volume_ml']:.2f} mL"]
    if not long:
        view = KeyView(_nearest(planes, comp["centroid_ras"]).index, ident, frame)
        view.text = text + ["no diameter (a single voxel)"]
        return view
    found = image_with(planes, long["endpoints_ras"])
    plane = found[0] if found else _nearest(planes, np.mean(long["endpoints_ras"], axis=0))
    view = KeyView(plane.index, ident, frame)
    view.lines.append((plane.to_image(lps(long["endpoints_ras"])), LONG_COLOUR))
    measured = f"long axis {long['mm']:.1f} mm (yellow)"
    if perp:
        view.lines.append((plane.to_image(lps(perp["endpoints_ras"])), PERP_COLOUR))
        measured += f", perpendicular {perp['mm']:.1f} mm (cyan)"
    view.text = [text[0] + ("" if found else " - lines projected onto the nearest acquired image"),
                 measured + ", RECIST 1.1 / WHO on this image"]
    part = (comp.get("location") or {}).get("part")
    if part or size:
        view.text.append(", ".join(x for x in (f"part of gland: {part}" if part else "",
                                                f"{size} by size only, not a stage" if size else "") if x))
    return view


def plan_views(planes: Sequence[ImagePlane], readout: dict[str, Any], tracking: dict[str, Any]) -> list[KeyView]:
    """One view per listed lesion component (largest first), else one of the gland."""
    lesion = readout.get("lesion") or {}
    ids = {int(e["rank"]): str(e["identifier"]) for e in (tracking.get("lesions") or [])}
    views = []
    for comp in lesion.get("components") or []:
        rank = int(comp["rank"])
        size = (lesion.get("size_category") or {}).get("category") if rank == 1 else None
        views.append(_lesion_view(planes, comp, ids.get(rank, f"Lesion {rank}"), size))
    if views:
        return views
    pancreas = (readout.get("segments") or {}).get("pancreas") or {}
    box = pancreas.get("bounding_box")
    centre = np.mean([box["min_ras"], box["max_ras"]], axis=0) if box else None
    plane = _nearest(planes, centre) if centre is not None else planes[len(planes) // 2]
    view = KeyView(plane.index, "Pancreas", "Pancreas")
    view.text = ["No lesion segmented" + (f"; pancreas {pancreas.get('volume_ml', 0):.1f} mL" if box else
                                          "; no pancreas segmented either")]
    return [view]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _outlined(hu: np.ndarray, labels: np.ndarray, zoom: int) -> np.ndarray:
    """The windowed CT (RGB, enlarged) with each segment's outline in its colour."""
    from scipy.ndimage import binary_erosion

    level, width = WINDOW
    gray = np.clip((hu - (level - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
    up = np.repeat(np.repeat(gray, zoom, 0), zoom, 1)
    rgb = np.repeat(up[..., None], 3, axis=2)
    big = np.repeat(np.repeat(labels, zoom, 0), zoom, 1)
    for seg in SEGMENTS:
        mask = big == seg.label
        rgb[mask & ~binary_erosion(mask, iterations=max(1, zoom // 4))] = seg.color
    return rgb


def render(hu: np.ndarray, labels: np.ndarray, view: KeyView, zoom: int, header: str, bands: tuple[int, int]
           ) -> np.ndarray:
    """One frame (rows, cols, 3) uint8: a text band, the image with outlines and lines, a text band."""
    from PIL import Image, ImageDraw

    body = Image.fromarray(_outlined(hu, labels, zoom))
    draw = ImageDraw.Draw(body)
    for coords, colour in view.lines:
        pts = [(float(c) * zoom - 0.5, float(r) * zoom - 0.5) for c, r in coords]
        draw.line(pts, fill=colour, width=max(1, zoom // 2 + 1))
    size = _text_size(body.width)
    top, bottom = bands
    frame = Image.new("RGB", (body.width, body.height + (top + bottom) * (size + 4)), (0, 0, 0))
    frame.paste(body, (0, top * (size + 4)))
    draw = ImageDraw.Draw(frame)
    font = _font(size)
    chars = _chars(body.width)
    for i, line in enumerate(textwrap.wrap(header, chars)[:top]):
        draw.text((4, 2 + i * (size + 4)), line, fill=(255, 140, 0), font=font)
    lines = [w for t in view.text for w in textwrap.wrap(t, chars)][:bottom]
    y0 = (top * (size + 4)) + body.height
    for i, line in enumerate(lines):
        draw.text((4, y0 + 2 + i * (size + 4)), line, fill=(255, 255, 255), font=font)
    return np.asarray(frame, dtype=np.uint8)


def _text_size(width: int) -> int:
    return max(12, width // 42)


def _chars(width: int) -> int:
    """Characters per line of burned-in text on an image ``width`` pixels wide."""
    return max(20, int(width / (0.6 * _text_size(width))))


def zoom_for(rows: int, cols: int) -> int:
    """The whole enlargement factor that makes the image at least MIN_SIZE pixels on its longer side."""
    return max(1, math.ceil(MIN_SIZE / max(rows, cols)))


def _orientation(v: np.ndarray) -> str:
    """Patient Orientation letters of an LPS direction (strongest first, components over 0.25)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(v))
    return "".join(letters[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 0.25) or "L"


def build(sources: Sequence[Any], frames: np.ndarray, views: Sequence[KeyView], zoom: int, model_name: str,
          model_version: str) -> Any:
    """The Multi-frame True Color SC dataset of ``frames`` (N, rows, cols, 3) in the study of ``sources``."""
    first = sources[views[0].index]
    ds = base_dataset(sources[0], MULTIFRAME_TRUE_COLOR_SC, "OT", "key-images", "Pancreas DiNTS key images (AI)",
                      model_name, model_version)
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = clean_text(sources[0].get("BodyPartExamined", "") or "ABDOMEN", "CS")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    plane = plane_of(first)
    ds.PatientOrientation = [_orientation(plane.row_dir), _orientation(plane.col_dir)]
    ds.DerivationDescription = clean_text(
        f"AI result: CT image(s) windowed (level {WINDOW[0]:g}, width {WINDOW[1]:g} HU), enlarged x{zoom}, "
        f"segment outlines, RECIST long axis and perpendicular with lengths burned in; {NOT_CLINICAL}", "ST")
    ds.SourceImageSequence = [image_reference(sources[v.index], SOURCE_PURPOSE) for v in views]
    ds.ImageComments = clean_text(f"AI RESULT by PancreasDiNTS {model_name} ({NOT_CLINICAL})", "LT")
    spacing = [float(v) / zoom for v in first.PixelSpacing]
    ds.PixelSpacing = [f"{s:.6g}" for s in spacing]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.FrameIncrementPointer = 0x00182002  # Frame Label Vector
    ds.FrameLabelVector = [clean_text(v.frame, "SH") for v in views]
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    return ds


def make(labels: np.ndarray, affine_ras: np.ndarray, readout: dict[str, Any], tracking: dict[str, Any],
         files: Sequence[Path], model_name: str, model_version: str) -> tuple[Any, list[KeyView], list[str]]:
    """The key-images dataset of a case, its views and the notes."""
    sources = prepare_sources(files)
    planes = [plane_of(ds, i) for i, ds in enumerate(sources.datasets)]
    views = plan_views(planes, readout, tracking)
    first = sources.datasets[0]
    zoom = zoom_for(int(first.Rows), int(first.Columns))
    header = f"AI RESULT - PancreasDiNTS {model_name} - {NOT_CLINICAL}"
    chars = _chars(int(first.Columns) * zoom)
    bands = (min(2, len(textwrap.wrap(header, chars))),
             max(len([w for t in v.text for w in textwrap.wrap(t, chars)]) for v in views) + 1)
    frames = []
    for view in views:
        src = sources.datasets[view.index]
        on_image = frames_on_sources(labels, affine_ras, [src])[0]
        frames.append(render(slice_hu(sources.files[view.index]), on_image, view, zoom, header, bands))
    return build(sources.datasets, np.stack(frames), views, zoom, model_name, model_version), views, sources.notes


def write(dest: Path, labels: np.ndarray, affine_ras: np.ndarray, readout: dict[str, Any], tracking: dict[str, Any],
          files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Write the key images of a case (``readout``: report.json's, ``tracking``: its tracking entries)."""
    if not readout or "segments" not in readout:
        raise KeyImagesError("no read-out to show (the read-out was turned off)")
    ds, _, notes = make(labels, affine_ras, readout, tracking, files, model_name, model_version)
    data = encode(ds)
    with atomic_path(Path(dest)) as tmp:
        Path(tmp).write_bytes(data)
    return notes


def check_preconditions(files: Sequence[Path], model_name: str, model_version: str) -> list[str]:
    """Before inference: a one-frame trial object in this series' study, in memory (pixels not decoded)."""
    sources = prepare_sources(files)
    try:
        view = KeyView(0, "trial", "trial")
        encode(build(sources.datasets, np.zeros((1, 2, 2, 3), np.uint8), [view], 1, model_name, model_version))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; the user gets one line
        raise KeyImagesError(f"{sources.files[0].parent}: DICOM key images cannot be made for this series "
                             f"({first_line(exc)}); leave key-images out of --format"
                             ) from None
    return sources.notes
