"""Torch-free foundations: errors and exit codes, progress, atomic files, the label table."""
