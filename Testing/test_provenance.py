"""Model provenance and model-folder safety (issue 11, observations 7 and 8), reproduced first, then held.

Where the exit code and "one line, no traceback" matter, the CLI runs as a real subprocess.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from PancreasDiNTSLib.core.errors import (
    EXIT_DOWNLOAD,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    ModelError,
    UsageError,
)
from PancreasDiNTSLib.model import download as dl
from PancreasDiNTSLib.model.bundle import file_md5
from PancreasDiNTSLib.model.loader import load_bundle
from PancreasDiNTSLib.model.release import RELEASED_OPTIONAL, RELEASED_REQUIRED
from support import REPO

LIB = REPO / "PancreasDiNTS" / "PancreasDiNTSLib"


def run_cli(args: list[str], env: dict[str, str], prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m PancreasDiNTSLib.cli ARGS`` (with optional Python run first in the same process)."""
    code = prelude + "\nimport sys\nfrom PancreasDiNTSLib.cli import entry\nsys.exit(entry(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The error lines on stderr; fails on a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if "error:" in line]


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent))
    return dest


def snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` (except under ``skip``) and its content."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not (skip and p.is_relative_to(skip)):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def write_large_files(bundle: Path, entries: dict[str, str]) -> None:
    items = [{"path": rel, "url": "https://example.invalid/x", "hash_val": md5, "hash_type": "md5"}
             for rel, md5 in entries.items()]
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": items}))


@pytest.fixture
def bundle(tmp_path, tiny_bundle) -> Path:
    """A private copy of the random-weight tiny bundle at tmp_path/m/b."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "m" / "b"))


# ---------------------------------------------------------------------------------------------- what "official" is


def test_official_md5s_are_the_released_ones(reference_bundle):
    """The compiled constants are the released large_files.yml (file names and md5s), nothing else."""
    released = yaml.safe_load((reference_bundle / "large_files.yml").read_text())["large_files"]
    assert {e["path"]: e["hash_val"] for e in released} == {
        rel: md5 for rel, (md5, _url) in {**RELEASED_REQUIRED, **RELEASED_OPTIONAL}.items()}
    assert {e["path"]: e["url"] for e in released} == {
        rel: url for rel, (_md5, url) in {**RELEASED_REQUIRED, **RELEASED_OPTIONAL}.items()}
    assert dl.RELEASED_FILES == RELEASED_REQUIRED


@pytest.mark.slow
def test_other_models_zip_with_its_own_list_is_not_installed_as_official(tmp_path, bundle, cli_env):
    """Observation 7a: a zip of another model whose own large_files.yml matches its own weights."""
    write_large_files(bundle, {rel: file_md5(bundle / rel) for rel in dl.RELEASED_FILES})
    archive = zip_folder(bundle, tmp_path / "other_model.zip")
    cache = tmp_path / "cache"
    official = cache / "pancreas_ct_dints_segmentation" / dl.DEFAULT_VERSION
    official.mkdir(parents=True)
    (official / "marker").write_text("the real one")

    proc = run_cli(["download", "--from", str(archive), "--dest", str(cache)], cli_env)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert error_lines(proc) == []
    local = cache / "local" / "other_model"
    assert proc.stdout.strip() == str(local)
    assert file_md5(local / "models" / "model.pt") == file_md5(bundle / "models" / "model.pt")
    assert sorted(p.name for p in official.iterdir()) == ["marker"]  # the official install is untouched
    said = [line for line in proc.stderr.splitlines() if "NOT the official" in line]
    assert len(said) == 1 and str(local) in said[0] and "md5 of models/" in said[0]
    load_bundle(local)  # a usable local model


def test_local_install_name(tmp_path, bundle, capsys):
    from PancreasDiNTSLib.cli import main

    assert main(["download", "--from", str(bundle), "--dest", str(tmp_path / "c"), "--name", "my-model.v2"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "local" / "my-model.v2")
    with pytest.raises(SystemExit) as info:
        main(["download", "--from", str(bundle), "--dest", str(tmp_path / "c"), "--name", "../evil"])
    assert info.value.code == EXIT_USAGE


# ---------------------------------------------------------------------------------------------- --version


@pytest.mark.slow
def test_version_that_is_a_path_is_a_usage_error(tmp_path, bundle, cli_env):
    """Observation 7b: `--version ../../victim` replaced a folder outside the cache."""
    archive = zip_folder(bundle, tmp_path / "bundle.zip")
    victim = tmp_path / "a" / "victim"  # cache/pancreas_ct_dints_segmentation/../../victim
    victim.mkdir(parents=True)
    (victim / "patient.dcm").write_bytes(b"precious")
    cache = tmp_path / "a" / "cache"
    before = snapshot(tmp_path)
    for extra in ([], ["--print-path"]):
        proc = run_cli(["download", "--from", str(archive), "--dest", str(cache), "--version", "../../victim", *extra],
                       cli_env)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert len(error_lines(proc)) == 1 and "not a version" in proc.stderr
    assert snapshot(tmp_path) == before and not cache.exists()


@pytest.mark.parametrize("version", ["../../victim", "0.5.0/../..", "", "0.5.0\n", "/tmp/x", "1.2.3.4.5"])
def test_version_strings_are_checked_in_the_engine(version):
    with pytest.raises(UsageError):
        dl.installed_path(version)
    with pytest.raises(UsageError):
        dl.resolve_model(f"official:{version}")


def test_real_versions_are_accepted(tmp_path):
    for version in ("0.5.0", "0.3.7", "1", "10.2.3.4"):
        assert dl.installed_path(version, tmp_path).name == version


# ---------------------------------------------------------------------------------------------- paths inside the folder


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_large_files_path_outside_is_refused_without_its_md5(tmp_path, bundle, example_ct_sm, cli_env, how):
    """Observation 7c: a large_files.yml path `../../etc/passwd` printed that file's md5."""
    secret = tmp_path / "secret.txt"  # bundle is tmp_path/m/b, so ../../secret.txt is this file
    secret.write_text("patient list\n")
    digests = {hashlib.md5(secret.read_bytes()).hexdigest()}
    if Path("/etc/passwd").is_file():
        digests.add(hashlib.md5(Path("/etc/passwd").read_bytes()).hexdigest())
    rel = {"dotdot": "../../secret.txt", "absolute": str(secret), "symlink": "models/extra.pt"}[how]
    if how == "symlink":
        (bundle / "models" / "extra.pt").symlink_to(secret)
    write_large_files(bundle, {rel: "0" * 32, "../../etc/passwd": "0" * 32} if how == "dotdot" else {rel: "0" * 32})

    proc = run_cli(["segment", str(example_ct_sm), "-o", str(tmp_path / "out"), "--model", str(bundle),
                    "--device", "cpu", "--progress", "none"], cli_env)
    assert proc.returncode == EXIT_MODEL, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "outside the model folder" in lines[0]
    assert not any(d in proc.stdout + proc.stderr for d in digests)


def _cfg(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "configs" / "inference.yaml").read_text())


def _write_cfg(bundle: Path, cfg: dict) -> None:
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.mark.parametrize("case", ["load_path_dotdot", "load_path_absolute", "weights_symlink", "arch_symlink",
                                  "arch_ckpt_path", "metadata_symlink", "config_symlink", "large_files_symlink"])
def test_every_path_read_from_a_model_folder_stays_inside(tmp_path, bundle, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("model.pt", "search_code_18590.pt"):
        shutil.copy(bundle / "models" / name, outside / name)
    shutil.copy(bundle / "configs" / "metadata.json", outside / "metadata.json")
    shutil.copy(bundle / "configs" / "inference.yaml", outside / "inference.yaml")
    cfg = _cfg(bundle)
    if case == "load_path_dotdot":
        cfg["checkpointloader"]["load_path"] = "$@bundle_root + '/../../outside/model.pt'"
        _write_cfg(bundle, cfg)
    elif case == "load_path_absolute":
        cfg["checkpointloader"]["load_path"] = str(outside / "model.pt")
        _write_cfg(bundle, cfg)
    elif case == "arch_ckpt_path":
        cfg["arch_ckpt_path"] = "$@bundle_root + '/../../outside/search_code_18590.pt'"
        _write_cfg(bundle, cfg)
    else:
        rel, target = {
            "weights_symlink": ("models/model.pt", "model.pt"),
            "arch_symlink": ("models/search_code_18590.pt", "search_code_18590.pt"),
            "metadata_symlink": ("configs/metadata.json", "metadata.json"),
            "config_symlink": ("configs/inference.yaml", "inference.yaml"),
            "large_files_symlink": ("large_files.yml", "metadata.json"),
        }[case]
        (bundle / rel).unlink(missing_ok=True)
        (bundle / rel).symlink_to(outside / target)
    with pytest.raises(ModelError, match="outside the model folder") as info:
        load_bundle(bundle)
    assert "\n" not in str(info.value)


def test_symlinks_inside_the_folder_are_fine(bundle):
    os.replace(bundle / "models" / "model.pt", bundle / "models" / "weights.bin")
    (bundle / "models" / "model.pt").symlink_to("weights.bin")
    assert load_bundle(bundle).weights_path == (bundle / "models" / "weights.bin").resolve()


# ---------------------------------------------------------------------------------------------- bounded parsing (CLI)


@pytest.mark.slow
def test_alias_bomb_in_inference_yaml_is_exit_3(tmp_path, bundle, example_ct_sm, cli_env):
    """Observation 8a: `roi_size: *l9` ran 64 s and 3.4 GB before a MemoryError traceback."""
    from test_safeparse import alias_bomb

    cfg = _cfg(bundle)
    cfg["inferer"]["roi_size"] = "BOMB"
    text = yaml.safe_dump(cfg, sort_keys=False).replace("roi_size: BOMB", "roi_size: *l9")
    (bundle / "configs" / "inference.yaml").write_text(alias_bomb().rsplit("inferer:", 1)[0] + text)
    proc = run_cli(["segment", str(example_ct_sm), "-o", str(tmp_path / "out"), "--model", str(bundle),
                    "--device", "cpu", "--progress", "none"], cli_env)
    assert proc.returncode == EXIT_MODEL, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "alias" in lines[0] and "inference.yaml" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["configs/metadata.json", "large_files.yml", "large_files.json"])
def test_deeply_nested_model_files_are_exit_3(tmp_path, bundle, example_ct_sm, cli_env, name):
    """Observation 8b: metadata.json / large_files.yml nested 100 000 deep -> RecursionError traceback."""
    deep = 100_000
    (bundle / name).write_text('{"large_files": ' + "[" * deep + "]" * deep + "}")
    proc = run_cli(["segment", str(example_ct_sm), "-o", str(tmp_path / "out"), "--model", str(bundle),
                    "--device", "cpu", "--progress", "none"], cli_env)
    assert proc.returncode == EXIT_MODEL, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "levels" in lines[0] and "RecursionError" not in proc.stderr


def test_alias_bomb_memory_stays_small():
    """Refused at the first alias: a few kilobytes, not gigabytes (memory, not time, is asserted)."""
    import tracemalloc

    from PancreasDiNTSLib.core.safeparse import parse_yaml
    from test_safeparse import alias_bomb

    tracemalloc.start()
    try:
        with pytest.raises(ModelError):
            parse_yaml(alias_bomb())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20


# ---------------------------------------------------------------------------------------------- installing


@pytest.mark.slow
def test_disk_full_during_extraction_is_exit_6_and_leaves_nothing(tmp_path, bundle, cli_env):
    """Observation 8c: ENOSPC during `download --from` extraction -> traceback (not 6)."""
    archive = zip_folder(bundle, tmp_path / "bundle.zip")
    cache = tmp_path / "cache"
    prelude = (
        "import errno\nimport PancreasDiNTSLib.model.download as d\n"
        "def full(*a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "d._copy_stream = full\n"
    )
    proc = run_cli(["download", "--from", str(archive), "--dest", str(cache)], cli_env, prelude)
    assert proc.returncode == EXIT_DOWNLOAD, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "nothing was installed" in lines[0]
    assert [p for p in cache.rglob("*")] == []  # no install, no hidden .part folder


def test_disk_full_while_moving_into_place_is_exit_6(tmp_path, bundle, capsys, monkeypatch):
    from PancreasDiNTSLib.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl.shutil, "move", full)
    cache = tmp_path / "cache"
    assert main(["download", "--from", str(bundle), "--dest", str(cache)]) == EXIT_DOWNLOAD
    assert "No space left" in capsys.readouterr().err
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert not any(p.name.endswith(".part") for p in cache.rglob("*"))


def _evil_zip(path: Path, kind: str, bundle: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(bundle.rglob("*")):
            if p.is_file():
                zf.write(p, "b/" + str(p.relative_to(bundle)))
        if kind == "dotdot":
            zf.writestr("b/../../escaped.txt", "x")
        elif kind == "absolute":
            zf.writestr(str(path.parent / "escaped.txt"), "x")
        elif kind == "backslash":
            zf.writestr("b\\..\\..\\escaped.txt", "x")
        elif kind == "symlink":
            info = zipfile.ZipInfo("b/models/link.pt")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, str(path.parent / "escaped.txt"))
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "backslash", "symlink"])
def test_zip_members_that_escape_are_refused(tmp_path, bundle, capsys, kind):
    from PancreasDiNTSLib.cli import main

    (tmp_path / "zips").mkdir()
    archive = _evil_zip(tmp_path / "zips" / "evil.zip", kind, bundle)
    cache = tmp_path / "cache"
    assert main(["download", "--from", str(archive), "--dest", str(cache)]) == EXIT_DOWNLOAD
    err = capsys.readouterr().err
    assert "refused" in err
    assert not list(tmp_path.rglob("escaped.txt")) and not list(cache.rglob("*.pt"))


def test_zip_bomb_limits(tmp_path, bundle, capsys, monkeypatch):
    from PancreasDiNTSLib.cli import main

    archive = zip_folder(bundle, tmp_path / "bundle.zip")
    monkeypatch.setattr(dl, "MAX_INSTALL_BYTES", 1000)
    assert main(["download", "--from", str(archive), "--dest", str(tmp_path / "c")]) == EXIT_DOWNLOAD
    assert "zip bomb" in capsys.readouterr().err
    monkeypatch.setattr(dl, "MAX_INSTALL_BYTES", 1 << 30)
    monkeypatch.setattr(dl, "MAX_MEMBERS", 3)
    assert main(["download", "--from", str(archive), "--dest", str(tmp_path / "c")]) == EXIT_DOWNLOAD
    assert "members" in capsys.readouterr().err
    assert [p for p in (tmp_path / "c").rglob("*")] == []


def test_folder_with_symlink_out_is_refused(tmp_path, bundle, capsys):
    from PancreasDiNTSLib.cli import main

    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"not yours")
    (bundle / "models" / "extra.pt").symlink_to(secret)
    assert main(["download", "--from", str(bundle), "--dest", str(tmp_path / "c")]) == EXIT_DOWNLOAD
    assert "symbolic link" in capsys.readouterr().err
    assert not list((tmp_path / "c").rglob("*.pt"))


# ---------------------------------------------------------------------------------------------- unpickling


def test_torch_load_is_weights_only_everywhere():
    """Every torch.load in the engine passes weights_only=True (a literal), so no pickled code can run."""
    calls = []
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                calls.append((f"{path.relative_to(LIB)}:{node.lineno}", ok))
    assert calls, "no torch.load found: the scan is broken"
    assert [c for c, ok in calls if not ok] == []
