"""PancreasDiNTSLib: the engine of the PancreasDiNTS Slicer extension.

Pure Python (torch, MONAI, nibabel, SimpleITK, slicerio, highdicom); never imports slicer, qt, ctk or vtk.
"""

__version__ = "0.1.0"
