"""The one-page comparison (PNG or PDF): each finding's axial slice on the prior and, aligned to it, on the
current (the current CT and lesions carried into the prior's grid), the lesion table and both response categories.

Drawn headless with matplotlib in the style of the case page (readout.page: window, radiological convention,
literal text).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..core.terminology import LESION_LABEL
from ..readout import geometry as geo
from ..readout.page import CT_WINDOW, PAGE_INCHES, PLAIN_TEXT, canonical_axes, to_canonical
from . import grids
from .cases import Side

ROWS = 3  # findings shown with images (the largest first)
DPI = 100


def _aligned_current(prior: Side, current: Side, extra: dict[str, Any]) -> np.ndarray:
    ref = grids.to_image(np.zeros(prior.labels.shape, np.uint8), prior.affine)
    assert current.ct is not None
    img = grids.to_image(np.asarray(current.ct, dtype=np.float32), current.affine)
    return grids.from_image(grids.resample(img, ref, extra["alignment"].transform, False, -1000.0))[0]


def _slice_of(point_ras: list[float], affine: np.ndarray, order: list[int], flips: list[bool],
              shape: tuple[int, ...]) -> int:
    idx = np.linalg.inv(affine) @ np.array([*point_ras, 1.0])
    j = order[2]
    k = float(idx[j])
    k = shape[j] - 1 - k if flips[2] else k
    return int(np.clip(round(k), 0, shape[j] - 1))


def _panel(ax: Any, ct2d: np.ndarray, lab2d: np.ndarray, spacing: np.ndarray, title: str, centre: np.ndarray
           ) -> None:
    extent = (-0.5 * spacing[0], (ct2d.shape[0] - 0.5) * spacing[0], -0.5 * spacing[1],
              (ct2d.shape[1] - 0.5) * spacing[1])
    ax.imshow(ct2d.T, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], origin="lower", extent=extent)
    if lab2d.any() and min(lab2d.shape) > 1:
        xx, yy = np.arange(lab2d.shape[0]) * spacing[0], np.arange(lab2d.shape[1]) * spacing[1]
        ax.contour(xx, yy, lab2d.T.astype(np.float32), levels=[0.5], colors=["yellow"], linewidths=1.0)
    half = 45.0
    ax.set_xlim(centre[0] * spacing[0] + half, centre[0] * spacing[0] - half)  # patient's right on the left
    ax.set_ylim(centre[1] * spacing[1] - half, centre[1] * spacing[1] + half)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7.5, pad=2)


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v:.1f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def _row_text(rec: dict[str, Any]) -> list[str]:
    def side(items: list[dict[str, Any]]) -> str:
        return " + ".join(f"{x['volume_ml']:.2f} mL, {_fmt(x['longest_axial_diameter_mm'], ' mm')}, "
                          f"{x['location_part'] or '-'}" for x in items) or "-"
    change = rec.get("change") or {}
    pct = change.get("volume_pct")
    return [rec["status"], side(rec["prior"]), side(rec["current"]), "-" if pct is None else f"{pct:+.0f} %",
            str(rec["match"]["confidence"] or "-")]


def render_compare_page(dest: Path, prior: Side, current: Side, result: dict[str, Any], extra: dict[str, Any],
                        fmt: str) -> Path:
    """Draw the comparison page to ``dest`` in ``fmt`` ('png' or 'pdf')."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

    assert prior.ct is not None
    order, flips = canonical_axes(prior.affine)
    sp = geo.spacing(prior.affine)[order]
    pct = to_canonical(prior.ct, order, flips)
    plab = to_canonical(prior.labels == LESION_LABEL, order, flips)
    cct = to_canonical(_aligned_current(prior, current, extra), order, flips)
    clab = to_canonical(np.asarray(extra["warped_lesions"]) > 0, order, flips)
    findings = sorted(result["lesions"], key=lambda r: -max([x["volume_ml"] for x in r["prior"] + r["current"]]))
    with matplotlib.rc_context(PLAIN_TEXT):
        fig = Figure(figsize=PAGE_INCHES, dpi=DPI)
        gs = fig.add_gridspec(ROWS + 2, 2, height_ratios=[0.55] + [1.6] * ROWS + [1.7], hspace=0.18, wspace=0.03,
                              left=0.03, right=0.97, top=0.97, bottom=0.02)
        head = fig.add_subplot(gs[0, :])
        head.axis("off")
        al, rec, vol = result["alignment"], result["response"]["recist"], result["response"]["volumetric"]
        head.text(0, 1, "PancreasDiNTS follow-up comparison: prior (left) and current aligned to it (right)",
                  fontsize=10, fontweight="bold", va="top", transform=head.transAxes)
        head.text(0, 0.62, f"prior: {result['prior']['input']}\ncurrent: {result['current']['input']}\n"
                  f"alignment residual: {al['mean_surface_distance_mm']:.2f} mm mean gland surface distance, "
                  f"Dice {al['gland_dice']:.2f}", fontsize=7, va="top", family="monospace", transform=head.transAxes)
        for row, finding in enumerate(findings[:ROWS]):
            point = (finding["prior"] or finding["current"])[0]["centroid_ras"]
            if not finding["prior"]:
                point = extra["alignment"].current_to_prior_ras(np.array(point))[0].tolist()
            k = _slice_of(point, prior.affine, order, flips, prior.labels.shape)
            c = np.linalg.inv(prior.affine) @ np.array([*point, 1.0])
            centre = np.array([(prior.labels.shape[order[a]] - 1 - c[order[a]]) if flips[a] else c[order[a]]
                               for a in range(2)])
            label = f"{finding['status']} ({finding['tracking_uid'] or 'no tracking UID'})"[:90]
            _panel(fig.add_subplot(gs[1 + row, 0]), pct[:, :, k], plab[:, :, k], sp, f"prior: {label}", centre)
            _panel(fig.add_subplot(gs[1 + row, 1]), cct[:, :, k], clab[:, :, k], sp, "current, aligned", centre)
        tab = fig.add_subplot(gs[ROWS + 1, :])
        tab.axis("off")
        rows = [_row_text(r) for r in result["lesions"]]
        table = tab.table(cellText=rows or [["-"] * 5], colLabels=["status", "prior (volume, long axis, part)",
                                                                    "current", "volume", "match"],
                          cellLoc="left", colLoc="left", colWidths=[0.13, 0.34, 0.34, 0.08, 0.11],
                          bbox=Bbox.from_bounds(0.0, 0.42, 1.0, 0.58))
        table.auto_set_font_size(False)
        table.set_fontsize(6.5)
        lines = [f"RECIST 1.1-style: {rec['category']} ({rec['reason']}); volumetric: {vol['category']} "
                 f"(total lesion volume {vol['prior_total_ml']:.2f} -> {vol['current_total_ml']:.2f} mL)",
                 f"Both {result['response']['label']}.", str(result["notice"])]
        tab.text(0, 0, "\n".join(w for line in lines for w in textwrap.wrap(line, 120)), fontsize=7.5, va="bottom",
                 color="darkred", fontweight="bold", transform=tab.transAxes)
        fig.savefig(dest, format=fmt)
    return dest
