"""`pancreas-dints COMMAND --help` and docs/CLI.md agree: every option of every command's real parser (the
``add_arguments`` of each ``cli`` module, through ``cli.build_parser``) is in CLI.md's synopsis of that command, every
option the synopsis or the command's option tables name exists, and the choices written ``--opt a|b|c`` are the
parser's. SERVER.md's Options section is held to the same rule for ``serve``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from docs_runner import REPO, doc_pages, parse_blocks

CLI_MD = REPO / "docs" / "CLI.md"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from PancreasDiNTSLib.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of a parser (help and hidden options aside) -> its action."""
    return {s: a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction) for s in a.option_strings}


def _synopses(page: Path = CLI_MD) -> dict[str, str]:
    """command -> its synopsis text in a page (a marked block may hold several commands, each from its
    `pancreas-dints COMMAND` line to the next)."""
    blocks, _ = parse_blocks(page, REPO)
    found: dict[str, str] = {}
    for block in blocks:
        if "synopsis" not in block.markers:
            continue
        current = None
        for line in block.text.splitlines():
            start = re.match(r"\s*pancreas-dints ([a-z-]+)", line)
            if start:
                current = start.group(1)
                line = line[start.end():]
            if current:
                found[current] = found.get(current, "") + " " + line
    return found


def _section(text: str, command: str) -> str:
    """The part of a page under the heading `## command` (up to the next heading of that level)."""
    match = re.search(rf"^## {re.escape(command)}\b.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else ""


def _table_options(section: str) -> set[str]:
    """Options named in the first cell of the section's table rows."""
    return {o for row in re.findall(r"^\|([^|\n]*)\|", section, flags=re.M) for o in OPTION.findall(row)
            if o.startswith("--") or re.fullmatch(r"-[a-zA-Z]", o)}


def _choices(synopsis: str) -> list[tuple[str, str]]:
    """(option, "a|b|c") for each option the synopsis writes with its alternatives."""
    return re.findall(r"(--[\w-]+)[ =]([\w.-]+(?:\|[\w.:-]+)+)", synopsis)


def _undocumented(options: dict[str, argparse.Action], named: set[str]) -> list[str]:
    """The parser's options none of whose spellings (``-o`` or ``--output``) the text names."""
    return sorted({a.option_strings[-1] for a in options.values() if not set(a.option_strings) & named})


PARSERS = _parsers()
SYNOPSES = _synopses()


def test_cli_md_has_a_synopsis_for_every_command() -> None:
    assert sorted(set(PARSERS) - set(SYNOPSES)) == []
    assert sorted(set(SYNOPSES) - set(PARSERS)) == []


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_synopsis_and_tables_name_exactly_the_parsers_options(command: str) -> None:
    options = _options(PARSERS[command])
    synopsis = SYNOPSES.get(command, "")
    named = set(OPTION.findall(synopsis))
    missing = _undocumented(options, named)
    assert missing == [], f"CLI.md's `{command}` synopsis lacks {missing}"
    unknown = sorted(named - set(options))
    assert unknown == [], f"CLI.md's `{command}` synopsis names {unknown}, which `{command} --help` does not have"
    tables = _table_options(_section(CLI_MD.read_text(encoding="utf-8"), command))
    assert sorted(tables - set(options)) == [], f"CLI.md's `{command}` tables name options it does not have"


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_choices_in_the_synopsis_are_the_parsers(command: str) -> None:
    options = _options(PARSERS[command])
    for option, values in _choices(SYNOPSES.get(command, "")):
        action = options.get(option)
        if action is not None and action.choices:
            assert set(values.split("|")) == set(map(str, action.choices)), (command, option)


@pytest.mark.parametrize("page", [p for p in doc_pages() if p != CLI_MD], ids=lambda p: p.name)
def test_synopses_on_other_pages_name_real_options_and_choices(page: Path) -> None:
    """TRAINING.md and PERFORMANCE.md repeat parts of CLI.md's synopses: what they name must exist."""
    for command, synopsis in _synopses(page).items():
        assert command in PARSERS, f"{page.name}: a synopsis of an unknown command {command}"
        options = _options(PARSERS[command])
        assert sorted(set(OPTION.findall(synopsis)) - set(options)) == [], (page.name, command)
        for option, values in _choices(synopsis):
            if options.get(option) is not None and options[option].choices:
                assert set(values.split("|")) <= set(map(str, options[option].choices)), (page.name, option)


def test_server_md_options_section_is_serves_parser() -> None:
    """Its table names only real options, and the section (table and text) names every one."""
    page = (REPO / "docs" / "SERVER.md").read_text(encoding="utf-8")
    section = page[page.index("## Options"):page.index("## API")]
    options = _options(PARSERS["serve"])
    assert sorted(_table_options(section) - set(options)) == []
    assert _undocumented(options, set(OPTION.findall(section))) == []


def test_the_comparison_sees_a_missing_option() -> None:
    """The check can fail: a parser with one more option than its synopsis is caught."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output")
    parser.add_argument("--hidden-new-option")
    assert _undocumented(_options(parser), set(OPTION.findall(" -o OUTDIR [--model X|Y]"))) == ["--hidden-new-option"]


@pytest.mark.slow  # imports the training stack (torch, MONAI): seconds
@pytest.mark.parametrize("command", ["train", "search"])
def test_show_settings_needs_no_output_folder(command: str, capsys) -> None:
    """TRAINING.md: "`--set` overrides any setting (`--show-settings` lists them)" works as written."""
    import json

    from PancreasDiNTSLib.cli import main

    assert main([command, "--show-settings", "--preset", "tiny", "--set", "epochs=7"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["epochs"] == 7 and shown["precision"] == "auto"  # issue 36: bf16 autocast is a setting
    assert main([command, "--show-settings", "--preset", "tiny", "--set", "precision=fp16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision 'fp16': use auto, fp32, bf16" in err
    assert main([command, "--show-settings", "--preset", "tiny", "--set", "precision=bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"
    assert main([command, "--preset", "tiny"]) == 2
    assert "-o/--output is required" in capsys.readouterr().err
