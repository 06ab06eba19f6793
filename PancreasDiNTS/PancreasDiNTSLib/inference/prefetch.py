"""Batch mode's overlap of reading and computing: the next case loads in a background thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def prefetched(items: Sequence[Any], load: Callable[[Any], Any], depth: int = 1):
    """Yield ``(item, load(item))`` in order while the next ``depth`` items load in a background thread.

    For batch mode: reading and preprocessing case i+1 (nibabel/zlib and torch release the GIL) overlaps the
    inference of case i. An exception raised by ``load`` is yielded in place of the result (not raised), so
    one bad case does not stop the others.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def worker() -> None:
        for item in items:
            if stop.is_set():
                return
            try:
                result: Any = load(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                result = exc
            q.put((item, result))
        q.put(_DONE)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


_DONE = object()
