"""Torch-free helpers the Slicer modules import: command lines, progress parsing, process handling."""
