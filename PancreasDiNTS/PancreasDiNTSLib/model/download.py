"""Getting the official bundle into a versioned cache: online with MONAI's downloader, or offline from a zip/folder.

Cache layout: ``<cache>/pancreas_ct_dints_segmentation/<version>/`` (a complete bundle folder). The cache root is
``$PANCREAS_DINTS_HOME/models`` if set, else ``~/.cache/pancreas-dints/models``. Every weight file is checked
against the released md5 before the folder appears under its final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from PancreasDiNTSLib.core.atomic import atomic_dir
from PancreasDiNTSLib.core.errors import EXIT_DOWNLOAD, ModelError, PancreasDiNTSError
from PancreasDiNTSLib.core.paths import model_cache_root
from PancreasDiNTSLib.model.bundle import OFFICIAL_BUNDLE_NAME, file_md5, read_large_files

DEFAULT_VERSION = "0.5.0"
# The released weights (bundle versions 0.3.7 - 0.5.x): path -> (md5, url). Used when a copy lacks large_files.yml.
RELEASED_FILES = {
    "models/search_code_18590.pt": (
        "2ff53724aa9d80d9025034d36785cdb8",
        "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
        "model_pancreas_ct_dints_segmentation_search_code.pt",
    ),
    "models/model.pt": (
        "ce8531b5143b417f65d5b481f72bc911",
        "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
        "model_pancreas_ct_dints_segmentation.pt",
    ),
}
REQUIRED = ("configs/inference.yaml", "models/model.pt", "models/search_code_18590.pt")


class DownloadError(PancreasDiNTSError):
    """The bundle could not be fetched or installed."""

    exit_code = EXIT_DOWNLOAD


cache_root = model_cache_root


def installed_path(version: str = DEFAULT_VERSION, dest: Path | None = None) -> Path:
    """Where the official bundle of ``version`` lives (whether or not it is there yet)."""
    return (Path(dest) if dest else cache_root()) / OFFICIAL_BUNDLE_NAME / version


def manual_instructions(target: Path) -> str:
    lines = [f"Without network access, put the released files into {target}:"]
    for rel, (md5, url) in RELEASED_FILES.items():
        lines.append(f"  {target / rel}  <- {url}  (md5 {md5})")
    lines.append(f"  {target / 'configs'}/  <- the bundle's configs folder ({OFFICIAL_BUNDLE_NAME} in the MONAI model zoo)")
    lines.append("or download the bundle zip on another machine and run: pancreas-dints download --from BUNDLE.zip")
    return "\n".join(lines)


def _bundle_root_in(folder: Path) -> Path:
    """The folder inside ``folder`` that holds configs/inference.yaml."""
    hits = sorted(p.parent.parent for p in folder.rglob("configs/inference.yaml"))
    if not hits:
        raise DownloadError(f"{folder}: no configs/inference.yaml inside; is this the {OFFICIAL_BUNDLE_NAME} bundle?")
    return min(hits, key=lambda p: len(p.parts))


def _safe_extract(zip_path: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if not str(target).startswith(str(dest.resolve()) + os.sep) and target != dest.resolve():
                    raise DownloadError(f"{zip_path}: member {member.filename!r} would be written outside the folder")
            zf.extractall(dest)
    except zipfile.BadZipFile:
        raise DownloadError(f"{zip_path}: not a valid zip file; download it again") from None


def verify_release(root: Path) -> dict[str, str]:
    """Check that ``root`` has the released files with the released md5s; return {path: md5}."""
    expected = {e["path"]: e["hash_val"] for e in read_large_files(root) if e.get("path") in RELEASED_FILES}
    checked = {}
    for rel in REQUIRED:
        if not (root / rel).is_file():
            raise DownloadError(f"{root / rel}: missing from the bundle; {manual_instructions(root)}")
    for rel, (md5, _url) in RELEASED_FILES.items():
        want = expected.get(rel, md5)
        got = file_md5(root / rel)
        if got != want:
            raise DownloadError(f"{root / rel}: md5 {got} is not the released {want}; the file is corrupt or "
                                "not the official one. Download it again.")
        checked[rel] = got
    return checked


def install_from(source: Path, version: str = DEFAULT_VERSION, dest: Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Install the bundle from a zip or an unpacked folder the user downloaded elsewhere."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DownloadError(f"{source}: no such zip file or folder")
    target = installed_path(version, dest)
    with tempfile.TemporaryDirectory(prefix="pancreas-dints-") as tmp:
        if source.is_file():
            log(f"extracting {source}")
            _safe_extract(source, Path(tmp))
            root = _bundle_root_in(Path(tmp))
        else:
            root = _bundle_root_in(source)
        log("verifying md5 checksums")
        verify_release(root)
        with atomic_dir(target) as staging:
            shutil.copytree(root, staging, dirs_exist_ok=True)
    log(f"installed {OFFICIAL_BUNDLE_NAME} {version} in {target}")
    return target


def download(version: str = DEFAULT_VERSION, dest: Path | None = None, source: str = "monaihosting",
             log: Callable[[str], None] = print) -> Path:
    """Fetch the official bundle with ``monai.bundle.download`` into the cache, verify it, return its folder."""
    target = installed_path(version, dest)
    if target.is_dir():
        try:
            verify_release(target)
            log(f"{OFFICIAL_BUNDLE_NAME} {version} is already installed in {target}")
            return target
        except DownloadError as exc:
            log(f"re-downloading: {exc}")
    from monai.bundle import download as monai_download

    with tempfile.TemporaryDirectory(prefix="pancreas-dints-") as tmp:
        log(f"downloading {OFFICIAL_BUNDLE_NAME} {version} from {source}")
        try:
            monai_download(name=OFFICIAL_BUNDLE_NAME, version=version, bundle_dir=tmp, source=source, progress=True)
        except Exception as exc:  # URLError, HTTPError, timeouts, hub errors
            raise DownloadError(
                f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}).\n"
                + manual_instructions(target)
            ) from None
        root = _bundle_root_in(Path(tmp))
        for rel, (_md5, url) in RELEASED_FILES.items():  # older zips leave weights to large_files.yml
            if not (root / rel).is_file():
                from monai.apps import download_url

                log(f"fetching {rel}")
                try:
                    download_url(url, str(root / rel), hash_val=RELEASED_FILES[rel][0], hash_type="md5")
                except Exception as exc:
                    raise DownloadError(f"{url}: {type(exc).__name__}.\n" + manual_instructions(target)) from None
        verify_release(root)
        with atomic_dir(target) as staging:
            shutil.copytree(root, staging, dirs_exist_ok=True)
    log(f"installed in {target}")
    return target


def resolve_model(arg: str | Path) -> Path:
    """``official`` (or ``official:VERSION``) -> the cached official bundle; anything else is a path."""
    text = str(arg)
    if text == "official" or text.startswith("official:"):
        version = text.split(":", 1)[1] if ":" in text else DEFAULT_VERSION
        path = installed_path(version)
        if not path.is_dir():
            raise ModelError(f"{path}: the official model {version} is not installed; run `pancreas-dints download`")
        return path
    return Path(text).expanduser()
