"""Docs as tests: every shell block of README.md and docs/*.md runs as written (Testing/docs_runner.py), in a
fresh folder with the documented substitutions; blocks marked ``docs-test: skip`` are listed with their reason
(``pytest -rs``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from docs_runner import (
    REPO,
    SERVERS,
    SUBSTITUTIONS,
    Block,
    BlockRun,
    all_blocks,
    make_fixtures,
    parse_blocks,
    run_plan,
)

BLOCKS, PROBLEMS = all_blocks()
PLAN = run_plan(BLOCKS)


def _param(block: Block):
    marks = [pytest.mark.slow, pytest.mark.subprocess]
    if any(c.split()[:2] in (["pancreas-dints", name] for name in SERVERS) for c in block.commands()):
        marks.append(pytest.mark.server)
    if PLAN[block.id]:
        marks.append(pytest.mark.skip(reason=f"{block.id}: {PLAN[block.id]}"))
    return pytest.param(block, id=block.id, marks=marks)


def test_markers_are_known_and_command_blocks_labelled() -> None:
    assert PROBLEMS == []
    assert any(b.doc == "README.md" for b in BLOCKS) and any(b.doc == "docs/CLI.md" for b in BLOCKS)


def test_substitutions_are_documented_in_testing_readme() -> None:
    readme = (REPO / "Testing" / "README.md").read_text(encoding="utf-8")
    for what in SUBSTITUTIONS:
        assert what in readme, f"Testing/README.md does not list the substitution for {what}"


def test_the_parser_reads_markers_fences_and_continuations(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("text\n<!-- docs-test: skip needs a GPU -->\n\n```bash\npancreas-dints segment a \\\n"
                    "  -o b   # comment\n# only a comment\n```\n<!-- docs-test: expect x/y -->\n```console\n"
                    "$ echo 1\n1\n```\n```python\nprint(1)\n```\n```\npancreas-dints demo -o d\n```\n"
                    "<!-- docs-test: skipp typo -->\n```sh\ntrue\n```\n", encoding="utf-8")
    blocks, problems = parse_blocks(page, tmp_path)
    assert [(b.line, b.lang) for b in blocks] == [(4, "bash"), (10, "console"), (21, "sh")]
    assert blocks[0].skip_reason == "needs a GPU"
    assert blocks[0].commands() == ["pancreas-dints segment a    -o b   # comment"]
    assert blocks[1].markers == {"expect": "x/y"} and blocks[1].commands() == ["echo 1"]
    assert len(problems) == 2 and "docs/page.md:17: a block of pancreas-dints commands" in problems[0]
    assert "unknown marker docs-test: skipp" in problems[1]


def test_a_block_with_the_commands_of_an_earlier_one_is_run_once(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "p.md"
    page.parent.mkdir()
    page.write_text("```bash\npip install x\na  b # one\n```\n```bash\na b   # two\n```\n```bash\na c\n```\n",
                    encoding="utf-8")
    blocks, _ = parse_blocks(page, tmp_path)
    assert run_plan(blocks) == {"docs/p.md:1": None, "docs/p.md:5": "the same commands as docs/p.md:1, which runs",
                                "docs/p.md:8": None}


def test_variables_set_by_one_line_reach_the_next(tmp_path: Path) -> None:
    """Each command runs in its own shell: `export` and `NAME=value` lines are carried to the later commands."""
    page = tmp_path / "docs" / "v.md"
    page.parent.mkdir()
    page.write_text("```bash\nexport GREETING=hello   # a comment\nN=$(echo 3)\nmkdir -p out\n"
                    "echo \"$GREETING $N\" > out/said.txt\n```\n", encoding="utf-8")
    (block,), _ = parse_blocks(page, tmp_path)
    BlockRun(block, tmp_path).run()
    assert (tmp_path / "out" / "said.txt").read_text() == "hello 3\n"


@pytest.fixture(scope="session")
def doc_fixtures(tmp_path_factory) -> Path:
    from PancreasDiNTSLib.core.paths import PACKAGED_DEMO_MODEL

    return make_fixtures(tmp_path_factory.mktemp("docs") / "fixtures", PACKAGED_DEMO_MODEL)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_doc_block_runs_as_written(block: Block, doc_fixtures: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(doc_fixtures, work, symlinks=True)
    BlockRun(block, work).run()
