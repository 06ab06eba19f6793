"""atomic_dir replaces a folder as a whole only when everything in it was written by pancreas-dints (demo output,
phantom data sets, model installs): a user's file or folder is never deleted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PancreasDiNTSLib.core.atomic import FOLDER_MANIFEST, LOCK_NAME, atomic_dir, check_replaceable
from PancreasDiNTSLib.core.errors import OutputError


def _write(dest, files: dict[str, str]):
    with atomic_dir(dest) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def test_own_folder_is_replaced(tmp_path):
    dest = tmp_path / "out"
    _write(dest, {"a.txt": "1", "sub/b.txt": "2"})
    assert (dest / FOLDER_MANIFEST).is_file()
    _write(dest, {"c.txt": "3"})
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [FOLDER_MANIFEST,
                                                                                              "c.txt"]


@pytest.mark.parametrize("intruder", ["notes.txt", "sub/notes.txt", "a.txt"])
def test_folder_with_foreign_or_changed_files_is_never_replaced(tmp_path, intruder):
    dest = tmp_path / "out"
    _write(dest, {"a.txt": "1", "sub/b.txt": "2"})
    (dest / intruder).parent.mkdir(parents=True, exist_ok=True)
    (dest / intruder).write_text("the user's")
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="did not write"):
        _write(dest, {"c.txt": "3"})
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    # no temporary folder left behind (the parent's lock file stays: removing it is unsafe)
    assert [p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME] == ["out"]


def test_user_folder_without_manifest_is_refused_and_old_name_is_not_reused(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.nii.gz").write_text("x")
    with pytest.raises(OutputError):
        check_replaceable(dest)
    fresh = tmp_path / "fresh"
    (tmp_path / ".fresh.old").mkdir()  # a user's folder that the old code deleted by name
    (tmp_path / ".fresh.old" / "keep.txt").write_text("keep")
    _write(fresh, {"a": "1"})
    _write(fresh, {"b": "2"})
    assert (tmp_path / ".fresh.old" / "keep.txt").read_text() == "keep"


def test_files_added_during_the_run_stop_the_swap(tmp_path):
    dest = tmp_path / "out"
    _write(dest, {"a.txt": "1"})
    with pytest.raises(OutputError), atomic_dir(dest) as tmp:
        (tmp / "b.txt").write_text("2")
        (dest / "added-meanwhile.txt").write_text("user")
    assert (dest / "added-meanwhile.txt").read_text() == "user" and (dest / "a.txt").read_text() == "1"


@pytest.mark.slow
def test_demo_rerun_keeps_a_users_file(tmp_path, cli_env):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "PancreasDiNTSLib.cli", "demo", "-o", str(out), "--device", "cpu",
           "--progress", "none"]
    assert subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=600).returncode == 0
    (out / "my_notes.txt").write_text("mine")
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=600)
    assert again.returncode == 5 and "my_notes.txt" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "report.json").is_file()
