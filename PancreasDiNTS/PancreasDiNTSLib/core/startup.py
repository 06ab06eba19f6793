"""Start-up of the engine's own processes (the console script, ``python -m PancreasDiNTSLib.cli``, the server's
workers): what ``import monai`` need not import.

MONAI imports all its sub-packages at ``import monai``, and with them every optional package it finds installed:
pytorch-ignite (monai.engines), Matplotlib (monai.visualize), scikit-learn (monai.metrics), SciPy's signal and
stats (monai.data's ultrasound map), TensorBoard, huggingface_hub: about 2.3 s of a 4 s start-up, for code the
engine never runs. MONAI imports each of them through ``optional_import``, which treats a refused import as "not
installed". So while MONAI itself is being imported those imports are refused (None in ``sys.modules``); right
after it they are allowed again, and the engine imports what it does use itself (Matplotlib for the search's
picture, scikit-learn for ``prepare-datalist``, TensorBoard for training's logs), as usual. pytorch-ignite stays
refused for the whole process: the engine never uses it (only ``monai.bundle run``, in its own process, does).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

# refused for the process (MONAI loads ignite's engines at import; nothing of the engine uses them)
NEVER_USED = ("ignite",)
# refused only while MONAI is imported: MONAI's module-level optional imports of them find nothing
UNUSED_BY_MONAI_HERE = ("matplotlib", "sklearn", "scipy.signal", "scipy.stats", "tensorboard",
                        "torch.utils.tensorboard", "huggingface_hub")


class _MonaiLoader(importlib.abc.Loader):
    """The real loader of the ``monai`` package, run with the imports above refused and then allowed again."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        refused = [name for name in UNUSED_BY_MONAI_HERE if name not in sys.modules]
        for name in refused:
            sys.modules[name] = None  # type: ignore[assignment]  # import name -> ImportError
        try:
            self.real.exec_module(module)
        finally:
            for name in refused:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
            module.__loader__ = self.real  # from now on MONAI is a package like any other
            if module.__spec__ is not None:
                module.__spec__.loader = self.real

    def __getattr__(self, name: str) -> object:  # anything else a loader offers (resources, source), while loading
        return getattr(self.real, name)


class _MonaiFinder(importlib.abc.MetaPathFinder):
    """Finds ``monai`` as the path finder does, once, and hands it to :class:`_MonaiLoader`."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "monai":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _MonaiLoader(spec.loader)
        return spec


def skip_unused_imports() -> None:
    """For a process of its own (the console script, ``python -m PancreasDiNTSLib.cli``, a server worker): MONAI,
    when it is imported, imports none of the packages above. Not for a process that imports the engine as a
    library (it may want them from MONAI), and nothing is changed once MONAI is imported."""
    if "monai" in sys.modules:
        return
    for name in NEVER_USED:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
    if not any(isinstance(finder, _MonaiFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MonaiFinder())
