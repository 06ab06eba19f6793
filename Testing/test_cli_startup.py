"""A command's start-up: the console script and ``python -m PancreasDiNTSLib.cli`` keep MONAI from importing
pytorch-ignite (installed here by the test extra, as in any environment that runs ``monai.bundle run``), which no
command uses; a process that imports the engine as a library keeps it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tomllib
from support import PYTHON, REPO

PROBE = ("import sys\n"
         "from PancreasDiNTSLib.cli import skip_unused_imports\n"
         "{before}skip_unused_imports()\n"
         "from monai.networks.nets import DiNTS\n"
         "from monai.bundle import download\n"
         "print(sys.modules.get('ignite') is not None)\n")


@pytest.mark.subprocess
@pytest.mark.parametrize("before, loaded", [("", "False"), ("import monai\n", "True")])
def test_ignite_is_not_imported_by_a_command_unless_monai_already_was(before: str, loaded: str) -> None:
    pytest.importorskip("ignite")  # the case being tested: ignite installed
    out = subprocess.run([PYTHON, "-c", PROBE.format(before=before)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == loaded


def test_the_console_script_and_python_m_start_through_entry() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"pancreas-dints": "PancreasDiNTSLib.cli:entry"}
    main_py = (REPO / "PancreasDiNTS" / "PancreasDiNTSLib" / "cli" / "__main__.py").read_text()
    assert "sys.exit(entry())" in main_py
    assert sys.modules.get("ignite", 0) is not None  # this test process (a library user) was left alone
