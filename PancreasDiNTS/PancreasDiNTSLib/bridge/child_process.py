"""The engine's child process seen from the caller: its output lines read without blocking (also when bytes are
not decodable), and its whole process tree ended on cancel.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any


def output_lines(stream: IO[str]) -> Iterator[str]:
    """The lines of a process's text output until its end; an undecodable line is replaced, never the end.

    A pipe opened in text mode decodes with the locale's encoding and raises on bytes it cannot decode, which
    would stop a reader for good. The engine writes UTF-8 (``PYTHONIOENCODING``), so when the stream has a
    binary buffer the lines are read from it and decoded as UTF-8 with replacement characters."""
    raw = getattr(stream, "buffer", None)
    if raw is not None:
        for data in iter(raw.readline, b""):
            yield data.decode("utf-8", errors="replace")
        return
    while True:
        try:
            line = stream.readline()
        except UnicodeDecodeError:
            continue  # skip the line that cannot be decoded, keep reading
        if not line:
            return
        yield line


class LinePump:
    """Reads a process's stdout on a thread into a queue, so a GUI timer can poll it without blocking.

    Used on Slicer releases whose ``launchConsoleProcess`` has no non-blocking mode (before 5.12).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in output_lines(stream):
                self._queue.put(line)
        except (ValueError, OSError):  # stream closed: stop reading
            pass
        finally:
            self._queue.put(None)

    def drain(self) -> list[str]:
        """Every line read since the last call (never blocks)."""
        lines: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines
            if item is None:
                self._ended = True
            else:
                lines.append(item)

    @property
    def ended(self) -> bool:
        """True once the stream reached its end and every line was drained."""
        return self._ended and self._queue.empty()


def follow(proc: subprocess.Popen, on_line: Callable[[str], Any]) -> int:
    """Blocking: pass each output line of ``proc`` to ``on_line`` until it exits; return its exit code."""
    assert proc.stdout is not None
    for line in output_lines(proc.stdout):
        on_line(line)
    return proc.wait()


def kill_process_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """Kill a process and all its descendants (children first), by process id only; return the killed ids.

    ``proc.kill()`` alone would stop only the launcher (``PythonSlicer`` starts the real interpreter as a
    child), leaving the computation running.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    killed = []
    for proc in [*reversed(children), root]:  # deepest descendants first, the root last
        try:
            proc.kill()
            killed.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([*children, root], timeout=timeout)
    return killed
