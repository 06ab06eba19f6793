"""Errors that reach the user as one clear line, and the CLI's documented exit codes."""

from __future__ import annotations

import errno as _errno
import unicodedata as _unicodedata

# Exit codes of `pancreas-dints` (documented in docs/CLI.md, summarised in README.md).
EXIT_OK = 0  # every case succeeded (or was skipped because its outputs exist)
EXIT_CASE_FAILED = 1  # at least one case failed; the others were processed
EXIT_USAGE = 2  # bad command line (argparse, option values) or outputs that would overlap inputs
EXIT_MODEL = 3  # the model folder/file is invalid, incomplete or fails its checksum
EXIT_DEVICE = 4  # the requested device is not available (e.g. --device cuda without a GPU)
EXIT_OUTPUT = 5  # the output folder cannot be written, or the disk is full
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


class MissingPackageError(UsageError):
    """A Python package a feature needs is not installed: refused before any work with the pip command, exit 2."""


def require_modules(what: str, modules: tuple[str, ...] | list[str], install: str) -> None:
    """MissingPackageError ``<what> needs the Python package <m>: <install>`` when a module cannot be found
    (found by ``importlib.util.find_spec``, nothing is imported)."""
    import importlib.util

    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise MissingPackageError(f"{what} needs the Python package{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(missing)}: {install}")


class DiskFullError(OutputError):
    """The output file system is full (or a size/quota limit was hit): the run stops, exit 5."""


class PlacementError(UsageError):
    """An output folder would overlap an input or lie outside OUTDIR: refused before any work, exit 2."""


# errno values that mean "the disk (or a quota / file-size limit) is full"
DISK_FULL_ERRNOS = frozenset(e for e in (getattr(_errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG"))
                             if e is not None)


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError saying that no more data can be written (ENOSPC, EDQUOT, EFBIG)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(path: object, exc: OSError) -> DiskFullError:
    """The one-line DiskFullError for ``exc`` raised while writing ``path``."""
    reason = exc.strerror or "no space left on device"
    return DiskFullError(f"{printable(str(path))}: {reason.lower()} while writing; free space (or raise the quota) "
                         "or choose another -o, then rerun (finished cases are kept and skipped)")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most ``limit`` characters:
    the part of a library's error that goes into our one-line messages."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def printable(text: object) -> str:
    """``text`` with control, format and line-separator characters escaped (``\\n`` -> ``\\x0a``), so a file
    name cannot break a message or progress line into two (or forge one)."""
    out = []
    for ch in str(text):
        cat = _unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
