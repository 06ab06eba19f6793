"""PancreasDiNTSSlicerLib: the Slicer-side helpers both modules share (Qt and ``slicer.util``; no MRML work).

- ``process``: :class:`EngineProcess`, one engine command in a background process, its output parsed into
  progress events; never blocks the GUI thread (a blocking call keeps processing events).
- ``remote``: :class:`RemoteTask`, a Segment run on a ``pancreas-dints serve`` server read like an EngineProcess.
- ``packages``: what the engine needs installed in Slicer's Python, checked with ``importlib.metadata`` and
  ``packaging`` (torch is never imported), installed through the PyTorch extension and pip with a constraints
  file that pins every package Slicer ships.
- ``devices``: the device combo box and the non-blocking GPU list.
- ``resources``: the modules' resource files (module-specific names: every module's ``Resources/`` is merged
  into one ``qt-scripted-modules/Resources/`` folder when the extension is built).
- ``reloading``: what a module's ``onReload`` reloads besides the module file itself.

Torch, MONAI and the engine's heavy packages are never imported here; command lines and progress parsing come
from the engine's torch-free ``PancreasDiNTSLib.bridge``.
"""
