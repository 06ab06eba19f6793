"""Reading a model folder (a MONAI bundle) as data, never as code.

The released bundle's ``configs/inference.yaml`` mixes plain values with ``$`` expressions (arbitrary Python that
``monai.bundle`` would ``eval``). This module reads only literal values and ``@name`` references to literal values,
recognises a few fixed path patterns, and refuses anything else with a clear message. Weights and architecture
files are loaded with ``torch.load(weights_only=True)``; the architecture file may hold numpy arrays, so exactly
the numpy reconstruction types are allowed and nothing else.

Every path read from a model folder (the config, ``metadata.json``, ``large_files.yml`` and the paths it lists, the
weights and architecture files a config names) must resolve, symlinks included, inside the folder; configs are
parsed within the size, depth and no-alias limits of :mod:`PancreasDiNTSLib.core.safeparse`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from PancreasDiNTSLib.core.atomic import atomic_path
from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.core.paths import CONFIG_NAMES
from PancreasDiNTSLib.core.safeparse import MAX_CONFIG_BYTES, load_data_file
from PancreasDiNTSLib.model.network import build_dints
from PancreasDiNTSLib.model.spec import InferenceSpec, NetworkSpec

_N = TypeVar("_N", int, float)
ARCH_KEYS = ("node_a", "arch_code_a", "arch_code_c")
# Transforms the engine knows how to reproduce exactly (keys read as data).
KNOWN_PREPROCESSING = {
    "LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged", "EnsureTyped",
}


@dataclass
class Bundle:
    """A model folder the engine can run."""

    root: Path
    name: str
    version: str
    network: NetworkSpec
    inference: InferenceSpec
    weights_path: Path
    arch_path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "bundle"  # "bundle" (weights + arch), "torchscript" or "onnx" (exported files)

    def describe(self) -> dict[str, Any]:
        """Model facts for report.json."""
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.root),
            "kind": self.kind,
            "weights": self.weights_path.name,
            "weights_md5": file_md5(self.weights_path),
            "arch": self.arch_path.name if self.arch_path else None,
            "arch_md5": file_md5(self.arch_path) if self.arch_path else None,
            "network": asdict(self.network),
        }

    def load_arch(self) -> dict[str, np.ndarray]:
        if self.arch_path is None:
            raise ModelError(f"{self.root}: no architecture file (models/search_code_*.pt)")
        return load_arch_file(self.arch_path)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        return load_weights(self.weights_path)

    def build_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The DiNTS network with the bundle's weights, in eval mode, on ``device``."""
        net = build_dints(self.network, self.load_arch())
        state = self.load_state_dict()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            detail = " ".join(line.strip() for line in first[1:3])[:300]
            raise ModelError(
                f"{self.weights_path}: the weights do not match the architecture in {self.arch_path} "
                f"(channel_mul={self.network.channel_mul}, num_blocks={self.network.num_blocks}): {detail}. "
                "Use the model.pt and search_code_*.pt that were produced together."
            ) from None
        return net.to(device).eval()


# ---------------------------------------------------------------------------------------------- hashing


def file_md5(path: Path, chunk: int = 1 << 22) -> str:
    """md5 hex digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ChecksumError(ModelError):
    """A file differs from the md5 its model folder lists for it."""


LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
_MD5 = re.compile(r"[0-9a-f]{32}")


def _shown(text: object) -> str:
    """``text`` with control characters escaped (names read from a model folder go into messages)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def inside(root: Path, rel: str | Path, what: str) -> Path:
    """``root / rel`` resolved (symlinks followed); a ModelError unless it lies inside the resolved ``root``.

    ``what`` names where the path came from (e.g. "large_files.yml path"). The refused target is never opened.
    """
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and not target.is_relative_to(base):
        raise ModelError(
            f"{_shown(base)}: the {what} {_shown(str(rel))[:160]!r} resolves outside the model folder; refused "
            "(a model folder is data and may only name its own files)"
        )
    return target


def read_large_files(root: Path) -> list[dict[str, str]]:
    """Entries of ``large_files.yml`` (path, url, hash_val, hash_type); empty if absent.

    Every entry must name a relative path inside ``root``; a malformed list is a ModelError.
    """
    for name in LARGE_FILES_NAMES:
        if not (Path(root) / name).is_file() and not (Path(root) / name).is_symlink():
            continue
        p = inside(root, name, "checksum list")
        data = load_data_file(p, MAX_CONFIG_BYTES)
        entries = data.get("large_files", []) if isinstance(data, dict) else None
        if data is None:
            return []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ModelError(f"{p}: expected `large_files:` with a list of entries (path, url, hash_val, hash_type)")
        for entry in entries:
            rel = entry.get("path")
            if not isinstance(rel, str) or not rel:
                raise ModelError(f"{p}: an entry has no `path` string; fix or delete the file")
            inside(root, rel, f"{name} path")
            for key in ("hash_val", "hash_type", "url"):
                if key in entry and not isinstance(entry[key], str):
                    raise ModelError(f"{p}: `{key}` of {_shown(rel)[:160]!r} is not a string")
        return entries
    return []


def verify_checksums(root: Path, only_present: bool = True) -> dict[str, str]:
    """Check every file listed in ``large_files.yml`` against its md5; return {path: md5}.

    Raises ModelError for a path outside ``root`` (before anything is read) and ChecksumError naming the first
    file whose checksum differs (or is missing, unless ``only_present``).
    """
    checked: dict[str, str] = {}
    for entry in read_large_files(root):
        rel = entry["path"]
        target = inside(root, rel, "large_files.yml path")
        if not target.is_file():
            if only_present:
                continue
            raise ModelError(f"{target}: missing; run `pancreas-dints download` or copy it from "
                             f"{_shown(entry.get('url'))[:200]}")
        if str(entry.get("hash_type", "md5")).lower() != "md5":
            continue
        want = str(entry.get("hash_val", "")).lower()
        if not _MD5.fullmatch(want):
            raise ModelError(f"{root}: large_files.yml gives {rel!r} no valid md5 (32 hex digits)")
        digest = file_md5(target)
        if digest != want:
            raise ChecksumError(
                f"{target}: md5 {digest} differs from {want} in large_files.yml; the file is "
                "corrupt or not the released one. Download it again (`pancreas-dints download`), or delete "
                "large_files.yml if you replaced the weights on purpose."
            )
        checked[rel] = digest
    return checked


# ---------------------------------------------------------------------------------------------- safe loading


def _numpy_safe_globals() -> list[Any]:
    """The types a pickled numpy array needs, under numpy 1.x and 2.x names."""
    import numpy.core.multiarray as np1_multiarray  # noqa: F401  (alias kept by numpy 2 for unpickling)

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # numpy 1's name, same function
    allowed: list[Any] = [
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Int64DType", "Int32DType", "Float64DType", "Float32DType", "BoolDType", "UInt8DType",
                     "Int8DType", "Int16DType", "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def _safe_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{path}: file not found") from None
    except Exception as exc:  # pickle errors, zip errors, refused globals
        msg = str(exc).splitlines()[0][:240] if str(exc) else type(exc).__name__
        raise ModelError(
            f"{path}: cannot be loaded safely ({msg}). Only tensors and numpy arrays are accepted; "
            "a file that needs arbitrary code to load is refused."
        ) from None


def monai_arch_ckpt_override(map_location: str = "cpu") -> str:
    """A ``--arch_ckpt`` override that lets ``monai.bundle run`` load a released-format arch file on torch >= 2.6.

    The released config's ``torch.load`` relies on torch's pre-2.6 default (unrestricted unpickling); this expression (run
    by MONAI, not by us) keeps ``weights_only=True`` and first allows exactly numpy's array types.
    """
    types = ("(numpy._core if hasattr(numpy, '_core') else numpy.core).multiarray._reconstruct, numpy.ndarray, "
             "numpy.dtype, type(numpy.dtype('int64')), type(numpy.dtype('float64')), type(numpy.dtype('int32')), "
             "type(numpy.dtype('float32'))")
    return (f"$torch.load(@arch_ckpt_path, map_location=torch.device('{map_location}'), weights_only=True) "
            f"if torch.serialization.add_safe_globals([{types}]) is None else None")


def load_arch_file(path: Path) -> dict[str, np.ndarray]:
    """Load a DiNTS architecture file (dict with numpy/tensor ``node_a``, ``arch_code_a``, ``arch_code_c``)."""
    data = _safe_load(Path(path))
    if not isinstance(data, dict) or not all(k in data for k in ARCH_KEYS):
        raise ModelError(f"{path}: not a DiNTS architecture file (needs keys {', '.join(ARCH_KEYS)})")
    out: dict[str, np.ndarray] = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            value = value.cpu().numpy()
        out[key] = value
    out["node_a"] = np.asarray(out["node_a"]).astype(np.int64)
    out["arch_code_a"] = np.asarray(out["arch_code_a"]).astype(np.float64)
    out["arch_code_c"] = np.asarray(out["arch_code_c"]).astype(np.int64)
    return out


def save_arch_file(path: Path, arch: dict[str, Any]) -> None:
    """Write an architecture file in the released format (numpy arrays), atomically."""
    payload = {k: (v.cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in arch.items()}
    for key in ARCH_KEYS + ("arch_code_a_max",):
        if key in payload:
            payload[key] = np.asarray(payload[key])
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved bare or as ``{"model": state_dict}`` (both occur in MONAI bundles)."""
    data = _safe_load(Path(path))
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path}: not a state dict of tensors (expected a bare state dict or {{'model': ...}})")
    return data


# ---------------------------------------------------------------------------------------------- config reading


def read_config(path: Path) -> dict[str, Any]:
    """A model config as data: at most 1 MiB, 64 levels deep, no YAML aliases (see core.safeparse)."""
    data = load_data_file(path, MAX_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a mapping at the top level")
    return data


class Resolver:
    """Resolves literal values and ``@name`` / ``@a#b`` references; refuses ``$`` expressions."""

    def __init__(self, config: dict[str, Any], source: Path) -> None:
        self.config = config
        self.source = source
        self._budget = self.MAX_STEPS

    MAX_STEPS = 100_000  # values visited while resolving one config (lists of @references can fan out)

    MAX_HOPS = 32  # a chain of @references longer than this (or a cycle) is refused

    def lookup(self, ref: str) -> Any:
        node: Any = self.config
        for part in ref.split("#"):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise ModelError(f"{self.source}: reference @{_shown(ref)[:80]} points nowhere")
        return node

    def value(self, raw: Any, what: str, default: Any = None, _hops: int = 0) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise ModelError(f"{self.source}: {what} expands to more than {self.MAX_STEPS} values; refused")
        if raw is None:
            return default
        if isinstance(raw, str) and raw.startswith("@"):
            if _hops >= self.MAX_HOPS:
                raise ModelError(f"{self.source}: {what} follows more than {self.MAX_HOPS} @references "
                                 "(a cycle?); refused")
            return self.value(self.lookup(raw[1:]), what, default, _hops + 1)
        if isinstance(raw, str) and raw.startswith("$"):
            raise ModelError(
                f"{self.source}: {what} is a Python expression ({raw[:60]!r}); the engine reads model configs "
                "as data and never evaluates them. Replace it by a literal value."
            )
        if isinstance(raw, list):
            return [self.value(v, what, None, _hops) for v in raw]
        return raw


def find_config(root: Path) -> Path:
    for name in CONFIG_NAMES:
        if (root / "configs" / name).is_file():
            return inside(root, Path("configs") / name, "config")
    raise ModelError(f"{root}: no configs/inference.yaml; a model folder is a MONAI bundle (configs/, models/)")


_PATH_EXPR = re.compile(r"""^\$\s*@bundle_root\s*\+\s*['"]/?([^'"]+)['"]\s*$""")


def _bundle_relative_path(root: Path, raw: Any) -> Path | None:
    """Interpret ``"$@bundle_root + '/models/x.pt'"`` (a fixed pattern, not evaluated) or a plain relative path."""
    if not isinstance(raw, str):
        return None
    m = _PATH_EXPR.match(raw)
    if m:
        return inside(root, m.group(1), "config path")
    if not raw.startswith(("$", "@")):
        return inside(root, raw, "config path")  # an absolute path outside the folder is refused too
    return None


def _find_arch(root: Path, config: dict[str, Any]) -> Path | None:
    named = _bundle_relative_path(root, config.get("arch_ckpt_path"))
    if named is not None and named.is_file():
        return named
    candidates = [inside(root, c.relative_to(root), "architecture file")
                  for c in sorted((root / "models").glob("search_code_*.pt"))]
    if len(candidates) > 1:
        raise ModelError(
            f"{root / 'models'}: several architecture files ({', '.join(c.name for c in candidates)}) and "
            "arch_ckpt_path does not name one of them"
        )
    return candidates[0] if candidates else None


def parse_network(res: Resolver, config: dict[str, Any]) -> NetworkSpec:
    space = config.get("dints_space")
    net = config.get("network_def")
    if not isinstance(space, dict) or not isinstance(net, dict):
        raise ModelError(f"{res.source}: needs `dints_space` and `network_def` sections (a DiNTS bundle)")
    target = str(space.get("_target_", ""))
    if not target.endswith("TopologyInstance"):
        raise ModelError(f"{res.source}: dints_space must be a TopologyInstance, found {target!r}")
    if not str(net.get("_target_", "")).endswith("DiNTS"):
        raise ModelError(f"{res.source}: network_def must be monai.networks.nets.DiNTS")
    spec = NetworkSpec(
        in_channels=int(res.value(net.get("in_channels"), "network_def#in_channels", 1)),
        num_classes=int(res.value(net.get("num_classes"), "network_def#num_classes", 3)),
        channel_mul=float(res.value(space.get("channel_mul"), "dints_space#channel_mul", 1.0)),
        num_blocks=int(res.value(space.get("num_blocks"), "dints_space#num_blocks", 6)),
        num_depths=int(res.value(space.get("num_depths"), "dints_space#num_depths", 3)),
        use_downsample=bool(res.value(space.get("use_downsample"), "dints_space#use_downsample", True)),
    )
    if bool(res.value(net.get("use_downsample"), "network_def#use_downsample", True)) != spec.use_downsample:
        raise ModelError(f"{res.source}: use_downsample differs between dints_space and network_def")
    for key in ("act_name", "norm_name", "spatial_dims"):
        if key in net or key in space:
            raise ModelError(f"{res.source}: a non-default `{key}` is not supported by the engine")
    return spec


def _transforms(res: Resolver, section: Any, name: str) -> list[dict[str, Any]]:
    if isinstance(section, dict) and "transforms" in section:
        section = section["transforms"]
    if not isinstance(section, list):
        raise ModelError(f"{res.source}: `{name}` must be a Compose with a list of transforms")
    out = []
    for t in section:
        if not isinstance(t, dict) or "_target_" not in t:
            raise ModelError(f"{res.source}: every item of `{name}` must have a _target_")
        out.append(t)
    return out


def _three(value: Any, convert: Callable[[Any], _N], what: str) -> tuple[_N, _N, _N]:
    """One number for all three axes, or three numbers."""
    items = [value] * 3 if isinstance(value, int | float) else value
    if not isinstance(items, list | tuple) or len(items) != 3:
        raise ModelError(f"{what} must be one number or three, not {str(value)[:60]}")
    return convert(items[0]), convert(items[1]), convert(items[2])


def parse_inference(res: Resolver, config: dict[str, Any]) -> InferenceSpec:
    spec = InferenceSpec()
    for t in _transforms(res, config.get("preprocessing"), "preprocessing"):
        target = str(t["_target_"]).rsplit(".", 1)[-1]
        if target not in KNOWN_PREPROCESSING:
            raise ModelError(
                f"{res.source}: preprocessing transform {target!r} is not supported "
                f"(supported: {', '.join(sorted(KNOWN_PREPROCESSING))})"
            )
        if target == "Orientationd":
            spec.axcodes = str(res.value(t.get("axcodes"), "Orientationd#axcodes", "RAS"))
        elif target == "Spacingd":
            pixdim = res.value(t.get("pixdim"), "Spacingd#pixdim")
            spec.pixdim = _three(pixdim, float, f"{res.source}: Spacingd#pixdim")
            mode = res.value(t.get("mode"), "Spacingd#mode", "bilinear")
            spec.spacing_mode = str(mode[0] if isinstance(mode, list) else mode)
            ac = res.value(t.get("align_corners"), "Spacingd#align_corners", False)
            spec.spacing_align_corners = bool(ac[0] if isinstance(ac, list) else ac)
            for key in ("diagonal", "scale_extent", "recompute_affine", "padding_mode", "dtype"):
                if key in t:
                    raise ModelError(f"{res.source}: Spacingd#{key} is not supported by the engine")
        elif target == "ScaleIntensityRanged":
            spec.a_min = float(res.value(t.get("a_min"), "a_min"))
            spec.a_max = float(res.value(t.get("a_max"), "a_max"))
            spec.b_min = float(res.value(t.get("b_min"), "b_min", 0.0))
            spec.b_max = float(res.value(t.get("b_max"), "b_max", 1.0))
            spec.clip = bool(res.value(t.get("clip"), "clip", False))
    inferer = config.get("inferer", {})
    if not isinstance(inferer, dict) or not str(inferer.get("_target_", "")).endswith("SlidingWindowInferer"):
        raise ModelError(f"{res.source}: `inferer` must be a SlidingWindowInferer")
    roi = res.value(inferer.get("roi_size"), "inferer#roi_size", [96, 96, 96])
    spec.roi_size = _three(roi, int, f"{res.source}: inferer#roi_size")
    spec.sw_batch_size = int(res.value(inferer.get("sw_batch_size"), "inferer#sw_batch_size", 1))
    spec.overlap = float(res.value(inferer.get("overlap"), "inferer#overlap", 0.25))
    spec.blend_mode = str(res.value(inferer.get("mode"), "inferer#mode", "constant"))
    for t in _transforms(res, config.get("postprocessing", []), "postprocessing"):
        target = str(t["_target_"]).rsplit(".", 1)[-1]
        if target == "Activationsd":
            spec.softmax = bool(res.value(t.get("softmax"), "Activationsd#softmax", False))
        elif target == "Invertd":
            spec.invert_nearest = bool(res.value(t.get("nearest_interp"), "Invertd#nearest_interp", True))
    evaluator = config.get("evaluator", {})
    if isinstance(evaluator, dict):
        spec.amp = bool(res.value(evaluator.get("amp"), "evaluator#amp", True))
    return spec


def parse_specs(res: Resolver, config: dict[str, Any]) -> tuple[NetworkSpec, InferenceSpec]:
    """The network and inference settings; a value of the wrong type is one ModelError line."""
    try:
        return parse_network(res, config), parse_inference(res, config)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ModelError(f"{res.source}: a setting has the wrong type or value ({_shown(exc)[:160]})") from None


def read_metadata(root: Path) -> dict[str, Any]:
    """``configs/metadata.json`` as data (bounded, inside ``root``); {} if absent."""
    p = root / "configs" / "metadata.json"
    if not p.is_file() and not p.is_symlink():
        return {}
    data = load_data_file(inside(root, "configs/metadata.json", "metadata file"), MAX_CONFIG_BYTES)
    return data if isinstance(data, dict) else {}


def read_bundle_folder(path: str | Path, verify: bool = True) -> Bundle:
    """Read a model folder as data and check that its files are usable (no code from it is run).

    ``path`` may be a bundle folder, or the ``configs``/``models`` folder inside one.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelError(f"{root}: model folder not found; give a MONAI bundle folder (see `pancreas-dints download`)")
    if root.name in ("configs", "models") and not (root / "configs").is_dir():
        root = root.parent
    root = root.resolve()
    config_path = find_config(root)
    config = read_config(config_path)
    res = Resolver(config, config_path)
    network, inference = parse_specs(res, config)
    weights = _bundle_relative_path(root, (config.get("checkpointloader") or {}).get("load_path"))
    if weights is None or not weights.is_file():
        weights = inside(root, "models/model.pt", "weights file")
    if not weights.is_file():
        raise ModelError(f"{weights}: missing model weights; run `pancreas-dints download` or copy model.pt there")
    if weights.stat().st_size == 0:
        raise ModelError(f"{weights}: empty file; download the weights again")
    arch = _find_arch(root, config)
    if arch is None:
        raise ModelError(f"{root / 'models'}: missing the architecture file search_code_*.pt")
    if verify:
        verify_checksums(root)
    meta = read_metadata(root)
    return Bundle(
        root=root,
        name=str(meta.get("name", root.name)),
        version=str(meta.get("version", "unknown")),
        network=network,
        inference=inference,
        weights_path=weights,
        arch_path=arch,
        metadata=meta,
    )
