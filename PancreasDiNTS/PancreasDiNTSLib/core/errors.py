"""Errors that reach the user as one clear line, and the CLI's documented exit codes."""

from __future__ import annotations

# Exit codes of `pancreas-dints` (documented in docs/CLI.md, summarised in README.md).
EXIT_OK = 0  # every case succeeded (or was skipped because its outputs exist)
EXIT_CASE_FAILED = 1  # at least one case failed; the others were processed
EXIT_USAGE = 2  # bad command line (argparse) or no input found
EXIT_MODEL = 3  # the model folder/file is invalid, incomplete or fails its checksum
EXIT_DEVICE = 4  # the requested device is not available (e.g. --device cuda without a GPU)
EXIT_OUTPUT = 5  # the output folder cannot be written
EXIT_DOWNLOAD = 6  # the model could not be downloaded or installed (no network, bad zip, checksum)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class PancreasDiNTSError(Exception):
    """An expected failure with a message meant for the user (what, which file, how to fix)."""

    exit_code = EXIT_CASE_FAILED


class InputError(PancreasDiNTSError):
    """A case's input image cannot be used."""


class ModelError(PancreasDiNTSError):
    """A model folder or file is invalid."""

    exit_code = EXIT_MODEL


class DeviceError(PancreasDiNTSError):
    """The requested compute device is unavailable or ran out of memory."""

    exit_code = EXIT_DEVICE


class OutputError(PancreasDiNTSError):
    """An output cannot be written."""

    exit_code = EXIT_OUTPUT


class UsageError(PancreasDiNTSError):
    """A command-line value that argparse cannot check (a range, a combination)."""

    exit_code = EXIT_USAGE
