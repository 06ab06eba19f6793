"""One-page case report (PNG or PDF) drawn headless with matplotlib: three planes through the lesion (or the
pancreas), segment outlines on the CT, the longest axial diameter, the measurement table and the case facts.

The same drawing serves the demo: pass the phantom's ``truth`` (outlined in white, lesion dashed), a ``title``
and ``notes`` (e.g. Dice) in ``meta``, and ``fill=True`` for filled segments as the demo picture had.
Display is in the grid's nearest RAS orientation (an oblique grid is shown unresampled, labelled as such),
radiological convention: the patient's right on the left of the axial and coronal views, anterior on the left
of the sagittal view.
"""

from __future__ import annotations

import datetime as _dt
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import atomic_path
from ..core.terminology import SEGMENTS
from . import geometry as geo
from .combined import NOTICE

CT_WINDOW = (-150.0, 250.0)  # abdomen: level 50, width 400
CLOSE_UP_MARGIN_MM = 12.0
PAGE_INCHES = (8.27, 11.69)  # A4 portrait
DPI = 110
PLAIN_TEXT: dict[Any, Any] = {"text.parse_math": False, "text.usetex": False}  # every string the page draws is literal text
PAGE_TITLE = "PancreasDiNTS case report: pancreas and pancreatic lesion segmentation"


def canonical_axes(affine_ras: np.ndarray) -> tuple[list[int], list[bool]]:
    """For RAS axes 0, 1, 2: the array axis closest to each and whether it runs backwards (greedy match)."""
    a = np.abs(np.asarray(affine_ras, dtype=np.float64)[:3, :3])
    a = a / a.sum(axis=0, keepdims=True)
    order, used_r, used_j = [-1, -1, -1], set(), set()
    for flat in np.argsort(-a, axis=None):
        r, j = divmod(int(flat), 3)
        if r in used_r or j in used_j:
            continue
        order[r] = j
        used_r.add(r)
        used_j.add(j)
    sign = np.asarray(affine_ras, dtype=np.float64)[:3, :3]
    return order, [bool(sign[r, order[r]] < 0) for r in range(3)]


def to_canonical(array: np.ndarray, order: list[int], flips: list[bool]) -> np.ndarray:
    """The array with its axes in R, A, S order, each increasing toward R, A, S (a view, no copy)."""
    out = np.transpose(np.asarray(array), order)
    for r in range(3):
        if flips[r]:
            out = np.flip(out, axis=r)
    return out


def _ras_to_canonical(points_ras: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], order: list[int],
                      flips: list[bool]) -> np.ndarray:
    idx = (np.linalg.inv(affine) @ np.c_[np.atleast_2d(points_ras), np.ones(len(np.atleast_2d(points_ras)))].T)
    idx = idx[:3].T
    out = np.empty_like(idx)
    for r in range(3):
        j = order[r]
        out[:, r] = (shape[j] - 1 - idx[:, j]) if flips[r] else idx[:, j]
    return out


def _centre_voxel(mask: np.ndarray) -> tuple[int, int, int] | None:
    idx = np.argwhere(mask)
    if not len(idx):
        return None
    c = idx.mean(axis=0)
    best = idx[np.argmin(((idx - c) ** 2).sum(axis=1))]
    return int(best[0]), int(best[1]), int(best[2])


def _fit(ax: Any, xr: tuple[float, float], yr: tuple[float, float], fig: Any) -> None:
    """Show [xr] x [yr] (mm) at equal aspect, widened to fill the axes' cell (black around the image)."""
    pos = ax.get_position(original=True)
    cell = (pos.height * fig.get_figheight()) / max(1e-9, pos.width * fig.get_figwidth())
    (x0, x1), (y0, y1) = (float(xr[0]), float(xr[1])), (float(yr[0]), float(yr[1]))
    w, h = x1 - x0, y1 - y0
    if h / w < cell:
        pad = (cell * w - h) / 2
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (h / cell - w) / 2
        x0, x1 = x0 - pad, x1 + pad
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")


def _fmt(x: Any, unit: str = "", nd: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{float(x):.{nd}f}{(' ' + unit) if unit else ''}"


def _rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The measurement table: (item, value) rows from ``case_readout``/``measure`` output."""
    segs = m.get("segments", {})
    panc = segs.get("pancreas", {})
    les = m.get("lesion", {})
    big = les.get("largest") or {}
    rows = [("Pancreas volume", f"{_fmt(panc.get('volume_ml'), 'mL')}  ({panc.get('components', 0)} component(s))")]
    if not les.get("found"):
        rows.append(("Pancreatic lesion", les.get("reason") or "none segmented"))
    else:
        vols = ", ".join(_fmt(c.get("volume_ml"), "", 2) for c in les.get("components", [])[:5])
        more = " ..." if les.get("count", 0) > 5 else ""
        rows.append(("Pancreatic lesion(s)", f"{les.get('count')} component(s); volume(s) {vols}{more} mL"))
        ax, pp, d3 = (big.get(k) for k in ("longest_axial_diameter", "perpendicular_diameter",
                                           "longest_3d_diameter"))
        if ax is None:
            rows.append(("Diameters (largest lesion)", big.get("reason") or "n/a"))
        else:
            rows.append(("Longest axial diameter x perpendicular",
                         f"{_fmt(ax['mm'], 'mm')} x {_fmt(pp['mm'] if pp else None, 'mm')} "
                         f"(slice {ax.get('slice_index')})"))
            rows.append(("Longest 3D diameter", _fmt(d3["mm"] if d3 else None, "mm")))
        size = les.get("size_category") or {}
        rows.append(("Size category (AJCC 8th, by size only, not a stage)",
                     size.get("category") or f"n/a: {size.get('reason')}"))
        loc = big.get("location")
        if loc is not None:
            rows.append(("Location along the gland",
                         f"{loc['part']} (at {loc['fraction']:.3f} of the length from the head)"
                         if loc.get("part") else f"n/a: {loc.get('reason')}"))
        if big.get("touches_volume_border"):
            rows.append(("Warning", "lesion touches the edge of the scan: size may be underestimated"))
    conf = m.get("confidence")
    if conf:
        cs = conf.get("segments", {})
        rows.append(("Mean confidence pancreas / lesion",
                     f"{_fmt(cs.get('pancreas', {}).get('mean_confidence'), '', 3)} / "
                     f"{_fmt(cs.get('pancreatic_tumor', {}).get('mean_confidence'), '', 3)}"))
        rows.append(("Lesion score (max lesion probability, uncalibrated)",
                     _fmt(conf.get("lesion_score", {}).get("value"), "", 3)))
    na = les.get("not_assessed")
    if na:
        rows.append(("Not assessed", "T4 (arterial involvement), vascular contact / resectability, N, M, "
                                     "lesion nature"))
    return rows


@dataclass
class _Scene:
    """What the page draws, in the canonical (R, A, S) display order."""

    ct: np.ndarray
    labels: np.ndarray
    truth: np.ndarray | None
    spacing: np.ndarray  # mm along R, A, S
    point: tuple[int, int, int]  # the voxel the three planes go through
    lines: list[tuple[np.ndarray, str, str]]  # canonical endpoints, line style, length text
    box: list[tuple[float, float]]  # close-up extent (mm) per axis
    slice_numbers: dict[str, int]  # plane -> its slice index on the input grid


def _scene(ct: np.ndarray, labels: np.ndarray, affine: np.ndarray, truth: np.ndarray | None,
           measurements: dict[str, Any]) -> _Scene:
    """Canonical views of the arrays, the planes through the lesion (or pancreas), diameters and close-up box."""
    order, flips = canonical_axes(affine)
    sp = geo.spacing(affine)[order]
    clab = to_canonical(labels, order, flips)
    ctru = None if truth is None else to_canonical(np.asarray(truth), order, flips)
    lesion = (measurements.get("lesion") or {}).get("largest") or {}
    diam, perp = lesion.get("longest_axial_diameter"), lesion.get("perpendicular_diameter")
    point = None
    for lab, test in ((clab, 2), (ctru, 2), (clab, 0), (ctru, 0)):
        if lab is not None and point is None:
            point = _centre_voxel(lab == 2 if test == 2 else lab > 0)
    i, j, k = point if point is not None else tuple(s // 2 for s in clab.shape)
    lines: list[tuple[np.ndarray, str, str]] = []
    if diam:
        e = _ras_to_canonical(np.array(diam["endpoints_ras"]), affine, labels.shape, order, flips)
        k = int(np.clip(round(float(e[:, 2].mean())), 0, clab.shape[2] - 1))
        lines.append((e, "-", f"{diam['mm']:.1f} mm"))
        if perp:
            lines.append((_ras_to_canonical(np.array(perp["endpoints_ras"]), affine, labels.shape, order, flips),
                          "--", f"{perp['mm']:.1f} mm"))
    fg = np.argwhere((clab > 0) | (ctru > 0)) if ctru is not None else np.argwhere(clab > 0)
    lo = fg.min(axis=0) if len(fg) else np.zeros(3, int)
    hi = fg.max(axis=0) if len(fg) else np.array(clab.shape) - 1
    box = [((lo[a] - 0.5) * sp[a] - CLOSE_UP_MARGIN_MM, (hi[a] + 0.5) * sp[a] + CLOSE_UP_MARGIN_MM)
           for a in range(3)]  # mm, display coordinates
    numbers = {}
    for name, r_axis, c_idx in (("axial", 2, k), ("coronal", 1, j), ("sagittal", 0, i)):
        n_ax = labels.shape[order[r_axis]]
        numbers[name] = n_ax - 1 - c_idx if flips[r_axis] else c_idx  # the slice number on the input grid
    return _Scene(to_canonical(ct, order, flips), clab, ctru, sp, (i, j, k), lines, box, numbers)


def _draw_plane(ax: Any, fig: Any, sc: _Scene, view: tuple[str, Any, int, int], close_up: bool, fill: bool) -> None:
    """One plane: CT, (filled) segments, outlines, truth outlines, diameters (axial), framing and title."""
    name, sl, h, v = view
    sp = sc.spacing
    img2d = np.asarray(sc.ct[sl], dtype=np.float32).T
    lab2d = np.asarray(sc.labels[sl]).T
    tru2d = None if sc.truth is None else np.asarray(sc.truth[sl]).T
    extent = (-0.5 * sp[h], (img2d.shape[1] - 0.5) * sp[h], -0.5 * sp[v], (img2d.shape[0] - 0.5) * sp[v])
    xx, yy = np.arange(img2d.shape[1]) * sp[h], np.arange(img2d.shape[0]) * sp[v]
    ax.set_facecolor("black")
    ax.imshow(img2d, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], origin="lower", extent=extent,
              interpolation="nearest" if close_up else "bilinear")
    if fill:
        lut = np.zeros((256, 4), dtype=np.float32)
        for seg in SEGMENTS:
            lut[seg.label] = (*seg.color_float, 0.45)
        ax.imshow(lut[lab2d], origin="lower", extent=extent, interpolation="nearest", aspect="equal")
    for seg in SEGMENTS:
        m2 = lab2d == seg.label
        if m2.any() and min(m2.shape) > 1:
            ax.contour(xx, yy, m2.astype(np.float32), levels=[0.5], colors=[seg.color_float], linewidths=1.3)
    if tru2d is not None and min(tru2d.shape) > 1:
        for lab_value, style in ((1, "solid"), (2, "dashed")):
            t2 = tru2d == lab_value if lab_value == 2 else tru2d > 0
            if t2.any():
                ax.contour(xx, yy, t2.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8,
                           linestyles=style)
    if name == "axial":
        for e, style, _ in sc.lines:
            ax.plot(e[:, 0] * sp[0], e[:, 1] * sp[1], style, color="yellow", lw=1.4)
    _fit(ax, sc.box[h] if close_up else extent[:2], sc.box[v] if close_up else extent[2:], fig)
    ax.invert_xaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name}, close-up" if close_up else f"{name} (slice {sc.slice_numbers[name]})", fontsize=8, pad=2)


def _draw_header(fig: Any, cell: Any, meta: dict[str, Any], measurements: dict[str, Any]) -> None:
    """Title and case facts: input, date, model name/version/md5, oblique-grid note, extra notes."""
    model = meta.get("model") or {}
    date = meta.get("date") or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = fig.add_subplot(cell)
    head.axis("off")
    title = meta.get("title") or PAGE_TITLE
    title_lines = [w for line in str(title).splitlines() for w in (textwrap.wrap(line, 100) or [""])]
    head.text(0.0, 1.0, "\n".join(title_lines), fontsize=10, fontweight="bold", va="top", transform=head.transAxes)
    facts = [f"input: {meta.get('input', 'n/a')}    date: {date}",
             f"model: {model.get('name', 'n/a')} {model.get('version', '')}    weights md5: "
             f"{model.get('weights_md5', 'n/a')}"]
    obl = (measurements.get("grid") or {}).get("axial_obliquity_deg")
    if obl:
        facts.append(f"oblique grid ({obl:.1f} deg): shown in the nearest RAS orientation, measured on the grid")
    facts += [str(n) for n in meta.get("notes", [])]
    head.annotate("\n".join(facts), xy=(0.0, 1.0), xycoords="axes fraction", xytext=(0, -14 * len(title_lines) - 4),
                  textcoords="offset points", fontsize=7.5, va="top", family="monospace")


def _draw_table(fig: Any, cell: Any, sc: _Scene, measurements: dict[str, Any], meta: dict[str, Any]) -> None:
    """Legend, measurement table, lesion wording and the not-for-clinical-use line."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import Bbox

    handles: list[Any] = [Line2D([], [], color=s.color_float, lw=1.5, label=s.name.replace("tumor", "lesion"))
                          for s in SEGMENTS]
    if sc.lines:
        handles.append(Line2D([], [], color="yellow", lw=1.5, label=f"longest axial diameter {sc.lines[0][2]}"))
    if len(sc.lines) > 1:
        handles.append(Line2D([], [], color="yellow", lw=1.5, ls="--", label=f"perpendicular {sc.lines[1][2]}"))
    if sc.truth is not None:
        handles.append(Patch(facecolor="none", edgecolor="grey", label="truth outline (lesion dashed)"))
    tab = fig.add_subplot(cell)
    tab.axis("off")
    tab.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.03), fontsize=7, ncol=len(handles),
               frameon=False, handlelength=1.6, columnspacing=1.2)
    rows = _rows(measurements)
    height = min(0.8, 0.068 * (len(rows) + 1))
    table = tab.table(cellText=[[a, b] for a, b in rows], colLabels=["measurement", "value"], cellLoc="left",
                      colLoc="left", colWidths=[0.42, 0.58], bbox=Bbox.from_bounds(0.0, 0.91 - height, 1.0, height))
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    lesion_term = "Lesion = the Task07 'tumour' label (masses and cysts, e.g. PDAC, IPMN, PNET), not a diagnosis."
    notice = "\n".join(textwrap.wrap(str(meta.get("notice") or NOTICE), 115))
    tab.text(0.0, 0.0, f"{lesion_term}\n{notice}", fontsize=8, va="bottom",
             transform=tab.transAxes, color="darkred", fontweight="bold")


def render_case_page(dest: Path, ct: np.ndarray, labels: np.ndarray, affine_ras: np.ndarray,
                     measurements: dict[str, Any], meta: dict[str, Any], truth: np.ndarray | None = None,
                     fill: bool = False) -> Path:
    """Draw the case page to ``dest`` (.png or .pdf, written atomically); return ``dest``.

    ``ct``/``labels``/``truth`` are (X, Y, Z) arrays on the grid of ``affine_ras``; ``measurements`` is the
    output of ``report.case_readout`` (or ``measure.measure``); ``meta`` may hold ``title``, ``input``,
    ``model`` (a dict with ``name``, ``version``, ``weights_md5``, as ``Bundle.describe()``), ``date``,
    ``notes`` (extra lines) and ``notice`` (default: not for clinical use). The demo passes ``truth`` (outlined
    in white, lesion dashed) and ``fill=True`` (segments filled in their colours).
    """
    import matplotlib

    dest = Path(dest)
    affine = geo.check_affine(affine_ras)
    ct = np.asarray(ct)
    labels = np.asarray(labels)
    if ct.shape != labels.shape or ct.ndim != 3 or (truth is not None and np.shape(truth) != labels.shape):
        raise ValueError(f"ct {ct.shape}, labels {labels.shape} and truth must be 3D arrays on one grid")
    sc = _scene(ct, labels, affine, truth, measurements)
    # Text on the page is text: names like "$\\frac$" are drawn as typed, never parsed as mathtext or TeX.
    with matplotlib.rc_context(PLAIN_TEXT):
        _draw_page(dest, sc, meta, measurements, fill)
    return dest


def _draw_page(dest: Path, sc: _Scene, meta: dict[str, Any], measurements: dict[str, Any], fill: bool) -> None:
    from matplotlib.figure import Figure

    i, j, k = sc.point
    fig = Figure(figsize=PAGE_INCHES, dpi=DPI)
    gs = fig.add_gridspec(4, 3, height_ratios=[0.75, 2.2, 2.2, 2.1], hspace=0.1, wspace=0.03,
                          left=0.03, right=0.97, top=0.97, bottom=0.02)
    views = [("axial", (slice(None), slice(None), k), 0, 1), ("coronal", (slice(None), j, slice(None)), 0, 2),
             ("sagittal", (i, slice(None), slice(None)), 1, 2)]
    for col, view in enumerate(views):
        for row in (1, 2):
            _draw_plane(fig.add_subplot(gs[row, col]), fig, sc, view, close_up=row == 2, fill=fill)
    _draw_header(fig, gs[0, :], meta, measurements)
    _draw_table(fig, gs[3, :], sc, measurements, meta)
    fmt = "pdf" if dest.suffix.lower() == ".pdf" else "png"
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format=fmt)
