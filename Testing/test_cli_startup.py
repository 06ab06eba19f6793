"""Start-up of the engine's own processes: the console script, ``python -m PancreasDiNTSLib.cli`` and the server's
workers keep MONAI from importing pytorch-ignite (installed here by the test extra, as in any environment that
runs ``monai.bundle run``), which the engine never uses, and, while MONAI is imported, Matplotlib, scikit-learn,
SciPy's signal and stats, TensorBoard and huggingface_hub, which the engine then imports itself where it uses them;
a process that imports the engine as a library keeps MONAI as it is."""

from __future__ import annotations

import importlib.machinery
import re
import subprocess

import pytest
import tomllib
from support import PYTHON, REPO


def import_times(args: list[str]) -> dict[str, int]:
    """Module -> microseconds spent importing it (self, summed) in a real process (``python -X importtime``), stdin
    closed. A refused import (None in sys.modules) is listed too, at a few microseconds."""
    done = subprocess.run([PYTHON, "-X", "importtime", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    times: dict[str, int] = {}
    for us, name in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \|\s+(\S+)$", done.stderr, re.MULTILINE):
        times[name] = times.get(name, 0) + int(us)
    return times


def _require_ignite() -> None:
    """Skip unless pytorch-ignite is installed (looked up on the path: this test process refuses its import too,
    conftest)."""
    if importlib.machinery.PathFinder.find_spec("ignite") is None:
        pytest.skip("pytorch-ignite is not installed")


@pytest.mark.subprocess
@pytest.mark.parametrize("process", ["cli", "server-worker"])
def test_an_engine_process_imports_monai_without_ignite(process: str) -> None:
    _require_ignite()  # the case being tested: ignite installed
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    args = {"cli": ["-m", "PancreasDiNTSLib.cli", "train", "--show-settings", "--preset", "tiny"],
            "server-worker": ["-m", "PancreasDiNTSLib.server.worker", "--model", str(PACKAGED_DEMO_MODEL),
                              "--device", "cpu"]}[process]
    times = import_times(args)
    assert "monai.networks.nets.dints" in times  # the case: MONAI was imported
    # only MONAI's refused attempts (ignite, ignite.engine, ...): loading it brings its engine module and 120 more
    assert "ignite.engine.engine" not in times and "ignite.distributed" not in times
    # nor, while MONAI was imported, the packages it loads only for code the engine never runs
    for loaded_by_monai in ("matplotlib.figure", "sklearn.base", "scipy.signal._signaltools", "scipy.stats._stats_py",
                            "tensorboard.lazy", "huggingface_hub.constants"):
        assert loaded_by_monai not in times, loaded_by_monai


@pytest.mark.subprocess
def test_after_monai_the_engine_imports_what_it_uses() -> None:
    """Refused only during ``import monai``: then the search's Matplotlib picture, prepare-datalist's scikit-learn
    split and training's TensorBoard log import as usual, and MONAI's own imports of SciPy (DiNTS's decode) work."""
    probe = ("import sys\n"
             "from PancreasDiNTSLib.core.startup import skip_unused_imports\n"
             "skip_unused_imports()\n"
             "import monai.networks.nets\n"
             "assert 'matplotlib' not in sys.modules and 'sklearn' not in sys.modules\n"
             "import matplotlib.pyplot, sklearn.model_selection, scipy.signal, scipy.stats\n"
             "from torch.utils.tensorboard import SummaryWriter\n"
             "from monai.networks.nets.dints import csr_matrix, dijkstra\n"
             "import monai, importlib.resources\n"
             "print(csr_matrix.__name__, dijkstra.__name__, sys.modules.get('ignite'), type(monai.__loader__).__name__,\n"
             "      importlib.resources.files('monai').name)\n")
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # and MONAI is a package as any other: its own loader, its resources
    assert out.stdout.split() == ["csr_matrix", "dijkstra", "None", "SourceFileLoader", "monai"]


@pytest.mark.subprocess
def test_a_library_user_that_imported_monai_first_keeps_ignite() -> None:
    _require_ignite()
    probe = ("import sys, monai\n"
             "from PancreasDiNTSLib.core.startup import skip_unused_imports\n"
             "skip_unused_imports()\n"
             "import ignite.engine\n"
             "print(sys.modules['ignite'] is not None)\n")
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "True", out.stderr[-2000:]


def test_the_console_script_and_python_m_start_through_entry() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"pancreas-dints": "PancreasDiNTSLib.cli:entry"}
    main_py = (REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "cli" / "__main__.py").read_text()
    assert "sys.exit(entry())" in main_py
