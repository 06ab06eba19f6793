"""`download --from` installs a bundle zip/folder into the versioned cache after checking the released md5s.

The online path (MONAI's downloader) cannot reach the internet here; its failure must still be one clear
message that says where to put the files by hand.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from PancreasDiNTSLib.cli import main
from PancreasDiNTSLib.core.errors import EXIT_DOWNLOAD, EXIT_OK
from PancreasDiNTSLib.model import download as dl
from PancreasDiNTSLib.model.bundle import file_md5


@pytest.fixture
def fake_release(tmp_path, tiny_bundle, monkeypatch):
    """A bundle folder whose files stand in for the released ones (their md5s become 'the released' ones)."""
    src = shutil.copytree(tiny_bundle, tmp_path / "pancreas_ct_dints_segmentation")
    released = {rel: (file_md5(src / rel), url) for rel, (_md5, url) in dl.RELEASED_FILES.items()}
    monkeypatch.setattr(dl, "RELEASED_FILES", released)
    # as in the real release, the bundle carries its own large_files.yml (with the released md5s)
    entries = [{"path": rel, "url": url, "hash_val": md5, "hash_type": "md5"} for rel, (md5, url) in released.items()]
    (src / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    return src


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in folder.rglob("*"):
            zf.write(p, p.relative_to(folder.parent))
    return dest


def test_install_from_zip_and_folder(tmp_path, fake_release, capsys):
    archive = zip_folder(fake_release, tmp_path / "bundle.zip")
    cache = tmp_path / "cache"
    assert main(["download", "--from", str(archive), "--dest", str(cache)]) == EXIT_OK
    target = cache / "pancreas_ct_dints_segmentation" / dl.DEFAULT_VERSION
    assert capsys.readouterr().out.strip() == str(target)
    assert file_md5(target / "models" / "model.pt") == file_md5(fake_release / "models" / "model.pt")
    shutil.rmtree(target)
    assert main(["download", "--from", str(fake_release), "--dest", str(cache)]) == EXIT_OK
    assert (target / "configs" / "inference.yaml").is_file()


def test_corrupt_weights_are_refused_and_nothing_installed(tmp_path, fake_release, capsys):
    with open(fake_release / "models" / "model.pt", "ab") as fh:
        fh.write(b"junk")
    cache = tmp_path / "cache"
    assert main(["download", "--from", str(fake_release), "--dest", str(cache)]) == EXIT_DOWNLOAD
    err = capsys.readouterr().err
    assert "md5" in err and "model.pt" in err
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_copy_without_list_and_other_weights_is_only_a_local_model(tmp_path, fake_release, capsys):
    """Weights that are not the released ones never become `official`, whatever the copy says about itself."""
    (fake_release / "large_files.yml").unlink()
    with open(fake_release / "models" / "model.pt", "ab") as fh:
        fh.write(b"junk")
    cache = tmp_path / "cache"
    assert main(["download", "--from", str(fake_release), "--dest", str(cache)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.strip() == str(cache / "local" / fake_release.name)
    assert "NOT the official" in err
    assert not (cache / "pancreas_ct_dints_segmentation").exists()


def test_zip_slip_is_refused(tmp_path, fake_release, capsys):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    assert main(["download", "--from", str(archive), "--dest", str(tmp_path / "c")]) == EXIT_DOWNLOAD
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path.parent / "outside.txt").exists()


def test_offline_download_explains_manual_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["download", "--dest", str(tmp_path / "cache"), "--source", "github"])
    err = capsys.readouterr().err
    assert code == EXIT_DOWNLOAD
    assert "download failed" in err and "md5 ce8531b5143b417f65d5b481f72bc911" in err and "--from" in err


def test_official_model_shortcut(tmp_path, fake_release, monkeypatch):
    monkeypatch.setenv("PANCREAS_DINTS_HOME", str(tmp_path / "home"))
    with pytest.raises(Exception, match="pancreas-dints download"):
        dl.resolve_model("official")
    dl.install_from(fake_release, log=lambda m: None)
    assert dl.resolve_model("official") == dl.installed_path()
