"""The benchmark command end to end, as CLI.md's example runs it (the docs runner, Testing/docs_runner.py; the block
is marked to run here only): the bundle's own monai.bundle run vs ours on a tiny phantom with the demo model."""

from __future__ import annotations

import json

import pytest
from docs_runner import BlockRun, all_blocks, make_fixtures


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_md_benchmark_example_bundle_vs_ours_same_labels(tmp_path):
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    block = next(b for b in all_blocks()[0] if b.doc == "docs/CLI.md" and "pancreas-dints benchmark --" in b.text
                 and "synopsis" not in b.markers)
    assert "test_fastpath_benchmark" in block.markers["skip"]  # not run twice: test_docs skips it
    work = make_fixtures(tmp_path / "work", PACKAGED_DEMO_MODEL)
    run = BlockRun(block, work)
    run.run()
    out = run.stdout[-1]
    last = json.loads(out.strip().splitlines()[-1])
    assert last["agreement"] == 1.0  # the same labels as `monai.bundle run` of the model's own config
    assert last["speedup"] > 0 and last["speedup_cpu_time"] > 0
    runs = last["runs"]
    assert set(runs) == {"bundle", "ours-fast"}
    assert runs["bundle"]["stages"]["infer"] > 0 and runs["ours-fast"]["windows"] > 0
    header = next(line for line in out.splitlines() if line.startswith("run (seconds)"))
    assert header.split()[2:8] == ["read+prep", "read", "prep", "infer", "invert", "write"] and "nan" not in out
