"""Shared fixtures: paths to ../shared material and small random-weight bundles built from the reference configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PancreasDiNTSLib.core.startup import skip_unused_imports
from support import EXAMPLE_CT_SM, REFERENCE_BUNDLE, REPO, TINY_CHANNEL_MUL, TINY_NUM_BLOCKS, require

HEAVY_MARKERS = ("slow", "subprocess", "server", "browser")

# The suite's processes start as the engine's own do (core.startup): MONAI, imported by many test modules, leaves
# out the packages it loads only for code nobody here runs (about 2 s of each pytest-xdist worker's collection).
skip_unused_imports()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the most heavy tests run first (order kept within a file): with ``-n 2 --dist loadfile`` the
    long files start at once instead of leaving one worker alone with them at the end. A test marked skip (the docs'
    blocks not run here) weighs nothing."""
    weight: dict[str, int] = {}
    for item in items:
        heavy = any(item.get_closest_marker(m) for m in HEAVY_MARKERS) and not item.get_closest_marker("skip")
        weight[item.nodeid.split("::")[0]] = weight.get(item.nodeid.split("::")[0], 0) + int(heavy)
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-weight[item.nodeid.split("::")[0]], order[id(item)]))


@pytest.fixture(scope="session")
def example_ct_sm() -> Path:
    return require(EXAMPLE_CT_SM)


@pytest.fixture(scope="session")
def ct_piece(tmp_path_factory, example_ct_sm) -> Path:
    """A 40x40x30-voxel piece of the real CT (120x120x90 mm: 4 windows of 96^3 at the released overlap instead of
    the whole CT's 63), for tests that run the engine on a real CT whose size is not the point."""
    from image_files import crop_nifti

    return crop_nifti(example_ct_sm, tmp_path_factory.mktemp("ct_piece") / "ct_piece.nii.gz",
                      (slice(40, 80), slice(30, 70), slice(0, 30)))


@pytest.fixture(scope="session")
def reference_bundle() -> Path:
    return require(REFERENCE_BUNDLE)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, reference_bundle) -> Path:
    """A random-weight bundle from the released configs (channel_mul 0.0625, 4 blocks), made once per run and
    shared by the pytest-xdist workers (read only): decoding its random architecture (MONAI's
    ``TopologySearch.decode`` at 4 depths) takes about 10 s."""
    from filelock import FileLock
    from PancreasDiNTSLib.model.random_bundle import make_random_bundle

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's
    dest = root / "shared-bundles" / "tiny"
    with FileLock(str(root / "shared-bundles.lock")):
        if not dest.is_dir():
            partial = dest.with_name("tiny.partial")
            shutil.rmtree(partial, ignore_errors=True)
            make_random_bundle(reference_bundle, partial, channel_mul=TINY_CHANNEL_MUL, num_blocks=TINY_NUM_BLOCKS,
                               seed=3)
            partial.rename(dest)
    return dest


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for running the CLI as a real subprocess (`python -m PancreasDiNTSLib.cli`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "PancreasDiNTS") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env

