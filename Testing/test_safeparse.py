"""Bounded parsing (issue 11, observation 8): YAML aliases refused, nesting and size bounded, one-line errors.

Unit tests of ``core.safeparse`` (no torch); the CLI-level checks (exit 3, one line, no traceback) are in
test_provenance.py. No test here asserts a wall-clock time: the alias bomb is refused because the loader refuses
the first alias, before any expansion, and the deep documents because depth is checked on the way down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from PancreasDiNTSLib.core.errors import InputError, ModelError
from PancreasDiNTSLib.core.safeparse import (
    MAX_DEPTH,
    YamlRefused,
    bounded_loader,
    json_depth,
    load_data_file,
    parse_json,
    parse_yaml,
    read_text_bounded,
)

DEEP = 100_000


def alias_bomb() -> str:
    """The "billion laughs" YAML of observation 8: nine levels of nine aliases each, used as roi_size."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append("inferer:\n  roi_size: *l9")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_first_alias():
    loader = bounded_loader()(alias_bomb())
    with pytest.raises(YamlRefused, match=r"alias \*l0"):
        loader.get_single_data()
    # refused while composing the second line: only the first list (1 + 9 nodes) and a few keys were built
    assert loader.nodes < 20
    with pytest.raises(ModelError, match="alias") as info:
        parse_yaml(alias_bomb(), "inference.yaml")
    assert "\n" not in str(info.value)


def test_merge_keys_are_aliases_too():
    with pytest.raises(ModelError, match="alias"):
        parse_yaml("base: &b {a: 1}\nother:\n  <<: *b\n  c: 2\n")


def test_anchor_without_alias_is_harmless():
    assert parse_yaml("a: &x [1, 2]\nb: 3\n") == {"a": [1, 2], "b": 3}


@pytest.mark.parametrize("text", [
    "[" * DEEP + "]" * DEEP,
    "{a: " * DEEP + "1" + "}" * DEEP,
    "".join(" " * i + "- \n" for i in range(200)),  # block sequences, 200 deep
])
def test_deep_yaml_is_refused_without_recursion_error(text):
    with pytest.raises(ModelError, match=f"more than the {MAX_DEPTH} levels") as info:
        parse_yaml(text, "large_files.yml")
    assert "\n" not in str(info.value)


def test_yaml_at_the_depth_limit_is_read():
    text = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    value = parse_yaml(text)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == [1]


def test_deep_json_is_refused_before_parsing():
    with pytest.raises(ModelError, match=f"nested {DEEP} levels deep") as info:
        parse_json('{"a": ' * DEEP + "1" + "}" * DEEP, "metadata.json")
    assert "\n" not in str(info.value)


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth('{"a": "[[[[{{", "b": [[1]], "c": "\\"]]"}') == 3
    assert parse_json('{"a": "' + "[" * 1000 + '"}') == {"a": "[" * 1000}


@pytest.mark.parametrize("text", ["x: !!python/object/apply:os.system ['true']", "x: !!python/name:os.system"])
def test_python_tags_are_refused(text):
    with pytest.raises(ModelError, match="not valid YAML"):
        parse_yaml(text)


def test_huge_integer_is_one_line():
    with pytest.raises(ModelError, match="not valid JSON"):
        parse_json("[" + "9" * 10_000 + "]")


def test_size_limit(tmp_path):
    p = tmp_path / "inference.yaml"
    p.write_text("a: 1\n" + "#" * 2000 + "\n")
    with pytest.raises(ModelError, match="more than the 1000 allowed"):
        read_text_bounded(p, max_bytes=1000)
    assert load_data_file(p, max_bytes=4000) == {"a": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "metadata.json"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="not a regular file"):
        load_data_file(fifo)


def test_error_class_is_the_callers(tmp_path):
    p = tmp_path / "dataset_0.json"
    p.write_text("[" * 1000 + "]" * 1000)
    with pytest.raises(InputError, match="levels deep"):
        load_data_file(p, error=InputError)


def test_control_characters_in_names_are_escaped(tmp_path):
    p = tmp_path / "bad\nok 999 mL.json"
    p.write_text("{")
    with pytest.raises(ModelError) as info:
        load_data_file(p)
    assert "\n" not in str(info.value) and "\\n" in str(info.value)


def test_released_configs_read_the_same(reference_bundle):
    """Every config of the released bundle is within the limits and parses exactly as yaml/json would."""
    files = [p for p in Path(reference_bundle).rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    assert len(files) >= 8
    for p in files:
        expected = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        assert load_data_file(p) == expected, p


def test_deep_datalist_is_an_input_error(tmp_path):
    from PancreasDiNTSLib.training.data import read_datalist_json

    p = tmp_path / "dataset_0.json"
    p.write_text('{"training": ' + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(InputError, match="levels deep"):
        read_datalist_json(p)
