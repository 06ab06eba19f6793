"""Bounded reading of JSON and YAML files that come from outside (model folders, sidecars, datalists).

A model folder is data from whoever made it. Reading its configs must cost at most a few milliseconds and a few
megabytes whatever they hold, and every problem must be one line (a :class:`PancreasDiNTSError`), never a
traceback. The rules:

* only regular files are read (a FIFO or a device is refused without blocking), at most ``max_bytes`` of them;
* YAML aliases (``*name``, including ``<<: *base`` merges) are refused: they are what makes a "billion laughs"
  document expand exponentially; anchors without aliases are harmless and allowed;
* nesting deeper than ``max_depth`` mappings/lists is refused *while* parsing (YAML) or by a bracket pre-scan
  before parsing (JSON), so a document nested 100 000 deep never reaches a recursive parser;
* YAML is read with PyYAML's safe constructors only (no ``!!python/...`` tags).

Torch-free and Slicer-free (the ``core`` layer).
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from PancreasDiNTSLib.core.errors import ModelError, PancreasDiNTSError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: inference.yaml, metadata.json, large_files.yml, export sidecars
MAX_DATALIST_BYTES = 64 << 20  # 64 MiB: a datalist lists every case of a data set
MAX_DEPTH = 64  # nested mappings/lists; the released configs need 8

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _escape(text: object) -> str:
    """``text`` with control characters escaped, so a hostile name cannot break a message into lines."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def one_line(exc: BaseException) -> str:
    """The first meaningful line of a parser's message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return _escape("; ".join(lines[:3])[:240]) if lines else type(exc).__name__


def read_text_bounded(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES,
                      error: type[PancreasDiNTSError] = ModelError) -> str:
    """The UTF-8 text of the regular file ``path`` if it is at most ``max_bytes`` long; else ``error``."""
    path = Path(path)
    shown = _escape(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise error(f"{shown}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{shown}: not a regular file (a FIFO, device or folder); refused")
        if info.st_size > max_bytes:
            raise error(f"{shown}: {info.st_size} bytes, more than the {max_bytes} allowed for this file; refused")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{shown}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # the file grew after fstat
        raise error(f"{shown}: more than the {max_bytes} bytes allowed for this file; refused")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{shown}: not UTF-8 text (byte {exc.start}); refused") from None


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json(text: str, source: str | Path = "<json>", max_depth: int = MAX_DEPTH,
               error: type[PancreasDiNTSError] = ModelError) -> Any:
    """``json.loads(text)`` after checking that it nests at most ``max_depth`` deep."""
    shown = _escape(source)
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{shown}: nested {depth} levels deep, more than the {max_depth} allowed; refused")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is an over-long integer
        raise error(f"{shown}: not valid JSON ({one_line(exc)})") from None


class YamlRefused(Exception):
    """A limit of the bounded YAML loader was hit (an alias, or nesting too deep)."""


class BoundedLoader(Protocol):
    """What :func:`bounded_loader` builds: a PyYAML SafeLoader with a depth limit and a node count."""

    max_depth: int
    nodes: int

    def get_single_data(self) -> Any: ...

    def dispose(self) -> None: ...


@functools.lru_cache(maxsize=1)
def bounded_loader() -> Callable[[str], BoundedLoader]:
    """PyYAML's SafeLoader that refuses aliases and nesting deeper than ``max_depth`` while composing.

    Depth is checked when a node is entered, before the composer recurses into it, so a deeply nested document
    is refused at level ``max_depth + 1`` without a RecursionError. With aliases refused, the number of nodes
    built is bounded by the size of the text. Built on first use so that importing this module (the Slicer
    modules do, through the bridge) needs no PyYAML.
    """
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        max_depth = MAX_DEPTH

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._depth = 0
            self.nodes = 0

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise YamlRefused(f"line {event.start_mark.line + 1}: YAML alias *{_escape(event.anchor)[:40]} "
                                  "refused (aliases can expand exponentially); write the value out in full")
            self.nodes += 1
            if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
                return super().compose_node(parent, index)
            self._depth += 1
            if self._depth > self.max_depth:
                event = self.peek_event()
                raise YamlRefused(f"line {event.start_mark.line + 1}: nested more than the {self.max_depth} "
                                  "levels allowed")
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedSafeLoader


def parse_yaml(text: str, source: str | Path = "<yaml>", max_depth: int = MAX_DEPTH,
               error: type[PancreasDiNTSError] = ModelError) -> Any:
    """Safe-load one YAML document with aliases refused and nesting bounded (see :func:`bounded_loader`)."""
    import yaml

    shown = _escape(source)
    loader_class = bounded_loader()
    loader = loader_class(text)
    loader.max_depth = max_depth
    try:
        return loader.get_single_data()
    except YamlRefused as exc:
        raise error(f"{shown}: {exc}; refused") from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise error(f"{shown}: not valid YAML ({one_line(exc)})") from None
    finally:
        loader.dispose()


def load_data_file(path: str | Path, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_DEPTH,
                   error: type[PancreasDiNTSError] = ModelError) -> Any:
    """Read and parse a ``.json`` (JSON) or any other (YAML) file within the limits; problems raise ``error``."""
    path = Path(path)
    text = read_text_bounded(path, max_bytes, error)
    if path.suffix.lower() == ".json":
        return parse_json(text, path, max_depth, error)
    return parse_yaml(text, path, max_depth, error)
