"""Memory of the review server over case switches on full-size cases, driven in a real browser.

    python Testing/benchmarks/review_memory.py [--switches 20] [--workdir DIR] [--limit-mb 150]

Three 448 x 448 x 300 CTs (the real ``example_ct.nii.gz`` resampled trilinearly over its field of view; the second
with two axes flipped, the third a DICOM-free copy shifted by 1 HU) are segmented by the engine with a random-weight
bundle inside a small ROI (``--roi-mode local``: seconds; the labels, confidence map and .seg.nrrd are still on the
full grid), then `pancreas-dints review` serves them and Playwright (Debian chromium) switches cases with
Previous/Next, waiting for each case's rendered frame. Prints the front end's RSS after the first switch and its
growth after ``--switches`` more (last line JSON); exit 1 when the growth is over ``--limit-mb``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTING = HERE.parent
ROOT = TESTING.parent
for path in (ROOT / "PancreasDiNTS", TESTING):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

SHAPE = (448, 448, 300)
TOKEN = "review-memory-benchmark"


def make_cts(source: Path, folder: Path) -> list[Path]:
    """Three full-size CTs from ``source`` (see the module docstring)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    image = nib.load(str(source))
    data = np.asarray(image.dataobj, dtype=np.float32)
    zoom = [n / s for n, s in zip(SHAPE, data.shape, strict=True)]
    big = ndimage.zoom(data, zoom, order=1).astype(np.int16)
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0 / z for z in zoom])
    flipped = affine.copy()
    for axis in (0, 1):
        flipped[:3, 3] += flipped[:3, axis] * (SHAPE[axis] - 1)
        flipped[:3, axis] = -flipped[:3, axis]
    paths = []
    for name, array, aff in (("big_a", big, affine), ("big_b", np.flip(big, (0, 1)), flipped),
                             ("big_c", big + 1, affine)):
        paths.append(folder / f"{name}.nii")
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), aff), str(paths[-1]))
    return paths


def make_batch(work: Path) -> Path:
    from PancreasDiNTSLib.cli import main
    from PancreasDiNTSLib.model.random_bundle import make_random_bundle
    from support import EXAMPLE_CT, REFERENCE_BUNDLE, TINY_CHANNEL_MUL, TINY_NUM_BLOCKS

    bundle = work / "bundle"
    if not bundle.exists():
        make_random_bundle(REFERENCE_BUNDLE, bundle, channel_mul=TINY_CHANNEL_MUL, num_blocks=TINY_NUM_BLOCKS, seed=3)
    cts = make_cts(EXAMPLE_CT, work / "cts")
    out = work / "out"
    roi = ",".join(str(v) for v in (150, 150, 100, 300, 300, 200))
    rc = main(["segment", *map(str, cts), "-o", str(out), "--model", str(bundle), "--device", "cpu",
               "--format", "nifti,seg.nrrd,confidence", "--roi", roi, "--roi-space", "voxel", "--roi-mode", "local"])
    if rc != 0:
        raise SystemExit(f"segment failed (exit {rc})")
    return out


def main(argv: list[str] | None = None) -> int:
    import review_support as rs
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--switches", type=int, default=20)
    p.add_argument("--limit-mb", type=float, default=150.0)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--chromium", default=os.environ.get("PANCREAS_DINTS_CHROMIUM", "/usr/bin/chromium"))
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pdints-review-mem-"))
    out = work / "out" if (work / "out" / "summary.json").is_file() else make_batch(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "PancreasDiNTS") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = rs.start_review(out, env, TOKEN, "benchmark")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = rs.open_page(browser, server.url, 3)
            process = server.front_end()
            frame = rs.switch_case(page, 3, rs.wait_frame(page))
            first = process.memory_info().rss
            peak = first
            for _ in range(args.switches):
                frame = rs.switch_case(page, 3, frame)
                peak = max(peak, process.memory_info().rss)
            growth = (process.memory_info().rss - first) / 2**20
            browser.close()
    finally:
        server.stop()
    result = {"shape": list(SHAPE), "switches": args.switches, "rss_after_first_switch_mb": round(first / 2**20, 1),
              "growth_mb": round(growth, 1), "peak_mb": round(peak / 2**20, 1), "limit_mb": args.limit_mb}
    print(f"review server on {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} cases: {result['rss_after_first_switch_mb']} MB after "
          f"the first switch, {growth:+.1f} MB after {args.switches} more (limit {args.limit_mb:.0f} MB)")
    print(json.dumps(result))
    return 0 if growth < args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
