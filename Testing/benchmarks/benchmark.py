"""Run the side-by-side benchmark from a source checkout: ``python Testing/benchmarks/benchmark.py [options]``.

The same as ``pancreas-dints benchmark [options]`` (see PancreasDiNTSLib/benchmark/workers.py for what is timed);
this wrapper only puts the checkout's engine on the path first, so it works without ``pip install -e .``.
Examples (the last line printed is JSON with ``speedup`` and ``agreement``)::

    python Testing/benchmarks/benchmark.py --device cpu --quick            # CI-sized, < 10 min on 2 cores
    python Testing/benchmarks/benchmark.py --device cuda                   # released size, random weights
    python Testing/benchmarks/benchmark.py --device cuda --model /path/to/pancreas_ct_dints_segmentation
"""

from __future__ import annotations

import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

from PancreasDiNTSLib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
