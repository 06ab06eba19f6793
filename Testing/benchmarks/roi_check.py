"""ROI mode with a trained model: a 10 cm cube against the full exact run, on a large synthetic CT.

    python Testing/benchmarks/roi_check.py [--model PancreasDiNTS/PancreasDiNTSLib/resources/models/demo] [--tiles 5,5,3] [--cube-mm 100]

Agreement of ROI labels with the full run only means something for a trained network: with random weights
every voxel's label hangs on rounding-level logit differences, so any change of window positions flips many
of them. The trained model available offline is the demo model, trained on small phantoms (about 10 cm
across, thin slices), so the large CT here is a mosaic of such phantoms (``--tiles`` in x, y, z; each drawn with
its own seed, RAS, 0.8 x 0.8 x 1 mm, 128 x 128 x 56 voxels): 5 x 5 x 3 tiles make a 51 x 51 x 17 cm volume, the
size of an abdominal CT. The cube sits at the volume's centre (the middle tile).

It runs ``pancreas-dints benchmark --skip-bundle --modes exact --roi-cube-mm CUBE`` on that volume (our exact
MONAI path for the full run, then ROI ``grid`` and ``local`` on the same process and input) and prints, as its
last line, JSON with the ROI speed-ups over the full exact run and the label agreement inside the cube.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

TILE_SHAPE = (128, 128, 56)
TILE_SPACING = (0.8, 0.8, 1.0)
FIRST_SEED = 700001  # not a training or held-out seed of the demo model (seed sets 1 and 2)


def make_mosaic(dest: Path, tiles: tuple[int, int, int]) -> tuple[Path, Path]:
    """Write the mosaic CT and its truth labels as NIfTI (RAS, the tile spacing)."""
    import nibabel as nib
    import numpy as np
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    shape = tuple(t * s for t, s in zip(tiles, TILE_SHAPE, strict=True))
    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    seed = FIRST_SEED
    for i in range(tiles[0]):
        for j in range(tiles[1]):
            for k in range(tiles[2]):
                hu, lab, _ = make_phantom(seed, shape=TILE_SHAPE, spacing=TILE_SPACING, orientation="RAS")
                sl = tuple(slice(n * s, (n + 1) * s) for n, s in zip((i, j, k), TILE_SHAPE, strict=True))
                image[sl], label[sl] = hu, lab
                seed += 1
    affine = np.diag([*TILE_SPACING, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(TILE_SPACING)
    ct, truth = dest / "mosaic_ct.nii.gz", dest / "mosaic_truth.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), ct)
    nib.save(nib.Nifti1Image(label, affine), truth)
    return ct, truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "PancreasDiNTS" / "PancreasDiNTSLib" / "resources" / "models" / "demo")
    p.add_argument("--tiles", default="5,5,3", help="phantoms along x,y,z (default 5,5,3)")
    p.add_argument("--cube-mm", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args(argv)
    tiles = tuple(int(t) for t in args.tiles.split(","))
    if len(tiles) != 3 or min(tiles) < 1:
        p.error("--tiles needs three positive integers, e.g. 5,5,3")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pdints-roi-"))
    work.mkdir(parents=True, exist_ok=True)
    ct, _ = make_mosaic(work, tiles)  # type: ignore[arg-type]
    cmd = [sys.executable, str(ROOT / "Testing" / "benchmarks" / "benchmark.py"), "--device", "cpu", "--skip-bundle",
           "--model", str(args.model), "--input", str(ct), "--modes", "exact", "--roi-cube-mm", str(args.cube_mm),
           "--threads", str(args.threads), "--workdir", str(work / "bench")]
    print("running: " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        print(f"roi_check: the benchmark failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    run = result["runs"]["ours-exact"]
    roi = result["roi"]
    summary = {
        "model": str(args.model), "input": str(ct), "tiles": tiles, "cube_mm": args.cube_mm,
        "full_exact_s": run["pipeline_s"], "full_windows": run.get("windows"),
        "grid_speedup": round(roi["grid"]["speedup_vs_full"], 2),
        "grid_agreement_in_box": roi["grid"]["agreement_in_box"],
        "local_speedup": round(roi["local"]["speedup_vs_full"], 2),
        "local_agreement_in_box": roi["local"]["agreement_in_box"],
        "outside_box_zero": roi["grid"]["outside_box_zero"] and roi["local"]["outside_box_zero"],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
