"""Getting the official bundle into a versioned cache: online with MONAI's downloader, or offline from a zip/folder.

Cache layout: ``<cache>/pancreas_ct_dints_segmentation/<version>/`` (the official bundle) and ``<cache>/local/<name>/``
(any other model installed with ``--from``). The cache root is ``$PANCREAS_DINTS_HOME/models`` if set, else
``~/.cache/pancreas-dints/models``.

Provenance: a folder is installed as the official release only when its weights have the md5s compiled into the
package (:mod:`PancreasDiNTSLib.model.release`); the ``large_files.yml`` that comes with a zip only checks that the zip
is internally intact. Any other model that reads as a valid bundle (the packaged demo model too: its architecture file
is ``search_code_256.pt``) installs as a local model. Installing is atomic: files are unpacked into a hidden ``.part``
folder inside the cache, checked, and renamed into place under the cache folder's lock (core.atomic.atomic_dir), so
concurrent installs of one target replace it one after the other; a failure (bad zip, checksum, full disk) leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from PancreasDiNTSLib.core.atomic import atomic_dir
from PancreasDiNTSLib.core.errors import (
    EXIT_DOWNLOAD,
    ModelError,
    OutputError,
    PancreasDiNTSError,
    UsageError,
)
from PancreasDiNTSLib.core.paths import OFFICIAL_BUNDLE_NAME, model_cache_root
from PancreasDiNTSLib.model.bundle import ChecksumError, file_md5, read_bundle_folder
from PancreasDiNTSLib.model.release import DEFAULT_VERSION, RELEASED_OPTIONAL, RELEASED_REQUIRED

# The released weights: path -> (md5, url). Every official install has exactly these digests.
RELEASED_FILES = dict(RELEASED_REQUIRED)
REQUIRED = ("configs/inference.yaml", "models/model.pt", "models/search_code_18590.pt")  # the official release
LOCAL_REQUIRED = ("configs/inference.yaml", "models/model.pt")  # any model (its search_code_*.pt: read_bundle_folder)
LOCAL_DIR = "local"

VERSION_RE = re.compile(r"\d+(\.\d+){0,3}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Zip bombs and runaway folders: at most this many files and bytes are unpacked/copied for one install.
MAX_MEMBERS = 10_000
MAX_INSTALL_BYTES = 4 << 30  # 4 GiB (the released bundle with model.ts is well under 1 GiB)
_CHUNK = 1 << 20


class DownloadError(PancreasDiNTSError):
    """The bundle could not be fetched or installed."""

    exit_code = EXIT_DOWNLOAD


cache_root = model_cache_root


def check_version(version: str) -> str:
    """``version`` if it is a version string (``0.5.0``: up to four dot-separated numbers); else a UsageError."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise UsageError(f"--version {str(version)[:40]!r}: not a version (expected digits and dots, e.g. "
                         f"{DEFAULT_VERSION})")
    return version


def check_name(name: str) -> str:
    """``name`` if it is a safe local model name (letters, digits, ``._-``; 64 characters); else a UsageError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UsageError(f"--name {str(name)[:40]!r}: use 1-64 letters, digits, '.', '_' or '-' (not first)")
    return name


def installed_path(version: str = DEFAULT_VERSION, dest: Path | None = None) -> Path:
    """Where the official bundle of ``version`` lives (whether or not it is there yet)."""
    return (Path(dest) if dest else cache_root()) / OFFICIAL_BUNDLE_NAME / check_version(version)


def local_path(name: str, dest: Path | None = None) -> Path:
    """Where a non-official model installed with ``--from`` under ``name`` lives."""
    return (Path(dest) if dest else cache_root()) / LOCAL_DIR / check_name(name)


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


# ---------------------------------------------------------------------------------------------- unpacking


class _Budget:
    """Counts files and bytes of one install against MAX_MEMBERS / MAX_INSTALL_BYTES."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.files = 0
        self.bytes = 0

    def add_file(self) -> None:
        self.files += 1
        if self.files > MAX_MEMBERS:
            raise DownloadError(f"{self.source}: more than {MAX_MEMBERS} files; not a model bundle, refused")

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > MAX_INSTALL_BYTES:
            raise _too_big(self.source)


def _too_big(source: Path) -> DownloadError:
    limit = f"{MAX_INSTALL_BYTES >> 20} MiB" if MAX_INSTALL_BYTES >= 1 << 20 else f"{MAX_INSTALL_BYTES} bytes"
    return DownloadError(f"{source}: unpacks to more than {limit}; refused (not a model bundle, or a zip bomb)")


def _copy_stream(src: IO[bytes], dst: IO[bytes], budget: _Budget) -> None:
    """Copy ``src`` to ``dst`` in chunks, counting every byte against ``budget``."""
    while chunk := src.read(_CHUNK):
        budget.add_bytes(len(chunk))
        dst.write(chunk)


def _member_parts(name: str) -> list[str] | None:
    """The path parts of a zip member name, or None if it is absolute, has ``..`` or a drive/backslash."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name or re.match(r"[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return None if any(p == ".." for p in parts) else parts


def _safe_extract(zip_path: Path, dest: Path) -> None:
    """Unpack ``zip_path`` into ``dest``: no member outside it, no symlinks, bounded count and size."""
    budget = _Budget(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise DownloadError(f"{zip_path}: {len(members)} members, more than {MAX_MEMBERS}; refused")
            if sum(m.file_size for m in members) > MAX_INSTALL_BYTES:
                raise _too_big(zip_path)
            for member in members:
                parts = _member_parts(member.filename)
                if parts is None:
                    raise DownloadError(f"{zip_path}: member {member.filename[:120]!r} would be written outside the "
                                        "folder; refused")
                mode = member.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DownloadError(f"{zip_path}: member {member.filename[:120]!r} is a symbolic link; refused")
                target = dest.joinpath(*parts) if parts else dest
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                budget.add_file()
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "xb") as dst:
                    _copy_stream(src, dst, budget)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise DownloadError(f"{zip_path}: not a valid bundle zip ({str(exc)[:120] or type(exc).__name__}); "
                            "download it again") from None
    except FileExistsError:
        raise DownloadError(f"{zip_path}: a member appears twice; refused") from None


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy the bundle folder ``src`` into ``dest``: regular files only, symlinks only to files inside ``src``."""
    base = src.resolve()
    budget = _Budget(src)
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        for name in dirnames + filenames:
            p = here / name
            if p.is_symlink():
                real = p.resolve()
                if not real.is_relative_to(base) or real.is_dir():
                    where = "a folder" if real.is_dir() else "outside the folder"
                    raise DownloadError(f"{p}: a symbolic link to {where}; copy the real files in, then install again")
        for name in filenames:
            p = here / name
            if not p.resolve().is_file():
                raise DownloadError(f"{p}: not a regular file; refused")
            budget.add_file()
            out = dest / p.relative_to(base)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "rb") as fin, open(out, "xb") as fout:
                _copy_stream(fin, fout, budget)


# ---------------------------------------------------------------------------------------------- provenance


def release_mismatch(root: Path) -> str | None:
    """Why ``root`` is not the official release (first differing or missing weight file), or None if it is.

    Compares with the md5s compiled into the package only; ``root``'s own ``large_files.yml`` plays no part.
    """
    for rel, (md5, _url) in RELEASED_FILES.items():
        p = root / rel
        if not p.is_file():
            return f"{rel} is missing"
        got = file_md5(p)
        if got != md5:
            return f"md5 of {rel} is {got}, the released one is {md5}"
    for rel, (md5, _url) in RELEASED_OPTIONAL.items():
        p = root / rel
        if p.is_file() and file_md5(p) != md5:
            return f"{rel} is not the released file"
    return None


def verify_release(root: Path) -> dict[str, str]:
    """Check that ``root`` has the released files with the released md5s; return {path: md5}."""
    for rel in REQUIRED:
        if not (root / rel).is_file():
            raise DownloadError(f"{root / rel}: missing from the bundle; {manual_instructions(root)}")
    reason = release_mismatch(root)
    if reason:
        raise DownloadError(f"{root}: {reason}; the files are corrupt or not the official release. Download again.")
    return {rel: md5 for rel, (md5, _url) in RELEASED_FILES.items()}


def _local_name(source: Path) -> str:
    stem = source.name[:-4] if source.name.lower().endswith(".zip") else source.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:64]
    return name or "model"


def _install_tree(root: Path, target: Path) -> None:
    """Move the checked folder ``root`` to ``target`` atomically (replacing an earlier install there)."""
    with atomic_dir(target) as staging:
        for child in root.iterdir():
            shutil.move(str(child), str(staging / child.name))


def _work_dir(cache: Path) -> Path:
    """A hidden scratch folder inside the cache (same file system as the install, so the final move is a rename)."""
    cache.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".incoming-", suffix=".part", dir=cache))


def _io_failure(what: str, exc: OSError | OutputError) -> DownloadError:
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:160] or type(exc).__name__
    return DownloadError(f"{what}: installing failed ({reason}); nothing was installed. Free space (or choose "
                         "another --dest) and try again.")


@contextlib.contextmanager
def _scratch_in(cache: Path) -> Iterator[Path]:
    """A scratch folder in the cache for one install, removed afterwards whatever happens; an OSError or
    OutputError on the way (full disk, no permission) becomes one DownloadError line: nothing was installed."""
    work: Path | None = None
    try:
        work = _work_dir(cache)
        yield work
    except (OSError, OutputError) as exc:
        raise _io_failure(str(cache), exc) from None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def install_from(source: Path, version: str = DEFAULT_VERSION, dest: Path | None = None,
                 log: Callable[[str], None] = print, name: str | None = None) -> Path:
    """Install a bundle from a zip or an unpacked folder the user downloaded elsewhere; return where it went.

    Official (weights with the released md5s) -> ``<cache>/pancreas_ct_dints_segmentation/<version>``; anything else
    that reads as a valid, internally consistent model -> ``<cache>/local/<name>`` with a line saying so.
    """
    check_version(version)
    if name is not None:
        check_name(name)
    source = Path(source).expanduser()
    if not source.exists():
        raise DownloadError(f"{source}: no such zip file or folder")
    with _scratch_in(Path(dest) if dest else cache_root()) as work:
        unpacked = work / "bundle"
        unpacked.mkdir()
        if source.is_file():
            log(f"extracting {source}")
            _safe_extract(source, unpacked)
        else:
            log(f"copying {source}")
            _copy_folder(source, unpacked)
        root = _bundle_root_in(unpacked)
        for rel in LOCAL_REQUIRED:
            if not (root / rel).is_file():
                raise DownloadError(f"{source}: {rel} is missing; {manual_instructions(installed_path(version, dest))}")
        log("verifying md5 checksums")
        try:
            read_bundle_folder(root, verify=True)  # reads as data, within limits, and matches its own list
        except ModelError as exc:  # name the user's zip/folder, not the scratch folder
            msg = str(exc).replace(str(root.resolve()), str(source)).replace(str(root), str(source))
            raise (DownloadError if isinstance(exc, ChecksumError) else ModelError)(msg) from None
        reason = release_mismatch(root)
        target = installed_path(version, dest) if reason is None else local_path(name or _local_name(source), dest)
        _install_tree(root, target)
    if reason is None:
        log(f"installed the official {OFFICIAL_BUNDLE_NAME} {version} in {target}")
    else:
        log(f"installed {target} as a local model named {target.name!r}; it is NOT the official {OFFICIAL_BUNDLE_NAME}"
            f" release ({reason}); use it with --model {target}")
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
            log(f"re-downloading: {str(exc).splitlines()[0]}")
    from monai.bundle import download as monai_download

    with _scratch_in(Path(dest) if dest else cache_root()) as work:
        log(f"downloading {OFFICIAL_BUNDLE_NAME} {version} from {source}")
        try:
            monai_download(name=OFFICIAL_BUNDLE_NAME, version=version, bundle_dir=str(work), source=source,
                           progress=True)
        except Exception as exc:  # URLError, HTTPError, timeouts, hub errors
            raise DownloadError(
                f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}).\n"
                + manual_instructions(target)
            ) from None
        root = _bundle_root_in(work)
        for rel, (md5, url) in RELEASED_FILES.items():  # older zips leave weights to large_files.yml
            if not (root / rel).is_file():
                from monai.apps import download_url

                log(f"fetching {rel}")
                try:
                    download_url(url, str(root / rel), hash_val=md5, hash_type="md5")
                except Exception as exc:
                    raise DownloadError(f"{url}: {type(exc).__name__}.\n" + manual_instructions(target)) from None
        verify_release(root)
        read_bundle_folder(root, verify=False)
        _install_tree(root, target)
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
