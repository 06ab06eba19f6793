"""Start-up of the engine's own processes (the console script, ``python -m PancreasDiNTSLib.cli``, the server's
workers): what they need not import."""

from __future__ import annotations

import sys


def skip_unused_imports() -> None:
    """For a process of its own (the console script, ``python -m PancreasDiNTSLib.cli``, a server worker): keep
    ``import monai`` from importing pytorch-ignite, which MONAI loads at import time when it is installed
    (monai.engines; about 1.2 s of every start-up, a quarter of MONAI's) and which the engine never uses (only
    ``monai.bundle run``, the ``reference`` extra, does, in its own process). MONAI treats ignite as absent. Not
    for a process that imports the engine as a library: it may want ignite itself."""
    if "monai" not in sys.modules and "ignite" not in sys.modules:
        sys.modules["ignite"] = None  # type: ignore[assignment]  # import ignite -> ImportError
