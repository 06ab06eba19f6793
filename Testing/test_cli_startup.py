"""Start-up of the engine's own processes: the console script, ``python -m PancreasDiNTSLib.cli`` and the server's
workers keep MONAI from importing pytorch-ignite (installed here by the test extra, as in any environment that
runs ``monai.bundle run``), which the engine never uses; a process that imports the engine as a library keeps it."""

from __future__ import annotations

import re
import subprocess
import sys

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


@pytest.mark.subprocess
@pytest.mark.parametrize("process", ["cli", "server-worker"])
def test_an_engine_process_imports_monai_without_ignite(process: str) -> None:
    pytest.importorskip("ignite")  # the case being tested: ignite installed
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    args = {"cli": ["-m", "PancreasDiNTSLib.cli", "train", "--show-settings", "--preset", "tiny"],
            "server-worker": ["-m", "PancreasDiNTSLib.server.worker", "--model", str(PACKAGED_DEMO_MODEL),
                              "--device", "cpu"]}[process]
    times = import_times(args)
    assert "monai.networks.nets.dints" in times  # the case: MONAI was imported
    # only MONAI's refused attempts (ignite, ignite.engine, ...): loading it brings its engine module and 120 more
    assert "ignite.engine.engine" not in times and "ignite.distributed" not in times


@pytest.mark.subprocess
def test_a_library_user_that_imported_monai_first_keeps_ignite() -> None:
    pytest.importorskip("ignite")
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
    assert sys.modules.get("ignite", 0) is not None  # this test process (a library user) was left alone
