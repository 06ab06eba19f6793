"""A model folder is data: no pickled code runs, no `$` expression is evaluated, checksums are enforced."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PancreasDiNTSLib.core.errors import ModelError
from PancreasDiNTSLib.model.bundle import file_md5, load_arch_file, load_weights
from PancreasDiNTSLib.model.loader import load_bundle


class _Payload:
    """Pickles to a call of os.system: what a hostile model file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def copy_bundle(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.mark.slow
def test_pickled_code_in_arch_file_is_refused(tmp_path, tiny_bundle):
    marker = tmp_path / "pwned"
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    arch = load_arch_file(b / "models" / "search_code_18590.pt")
    arch["extra"] = _Payload(marker)
    torch.save(arch, b / "models" / "search_code_18590.pt")
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_bundle(b).build_network("cpu")
    assert not marker.exists()


@pytest.mark.slow
def test_pickled_code_in_weights_is_refused(tmp_path, tiny_bundle):
    marker = tmp_path / "pwned"
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    torch.save({"model": load_weights(b / "models" / "model.pt"), "x": _Payload(marker)}, b / "models" / "model.pt")
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_weights(b / "models" / "model.pt")
    assert not marker.exists()


def test_weights_wrapped_in_model_key_are_accepted(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    sd = load_weights(b / "models" / "model.pt")
    torch.save({"model": sd}, b / "models" / "model.pt")
    net = load_bundle(b).build_network("cpu")
    assert set(net.state_dict()) == set(sd)


def _rewrite_pickle_name(path: Path, old: bytes, new: bytes) -> None:
    """Rewrite a global's module name inside a torch zip file's data.pkl (the numpy-1 spelling test)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(item, data)
    path.write_bytes(buf.getvalue())


def test_arch_file_written_under_numpy1_loads(tmp_path, tiny_bundle):
    src = tiny_bundle / "models" / "search_code_18590.pt"
    ref = load_arch_file(src)
    dst = tmp_path / "search_code_1.pt"
    shutil.copy(src, dst)
    # numpy 2 pickles numpy._core.multiarray; the released file (numpy 1.x) names numpy.core.multiarray.
    _rewrite_pickle_name(dst, b"numpy._core.multiarray", b"numpy.core.multiarray")
    loaded = load_arch_file(dst)
    for key in ("node_a", "arch_code_a", "arch_code_c"):
        np.testing.assert_array_equal(loaded[key], ref[key])


@pytest.mark.parametrize("key,value", [
    (("dints_space", "channel_mul"), "$__import__('os').system('touch PWNED') or 0.0625"),
    (("inferer", "overlap"), "$0.5"),
])
def test_dollar_expressions_in_used_values_are_refused(tmp_path, tiny_bundle, key, value):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    cfg = yaml.safe_load((b / "configs" / "inference.yaml").read_text())
    cfg[key[0]][key[1]] = value
    (b / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelError, match="never evaluates"):
        load_bundle(b)
    assert not Path("PWNED").exists()


def test_released_config_reads_as_data(reference_bundle):
    """The released inference.yaml (with its `$` imports, device and arch expressions) parses without eval."""
    from PancreasDiNTSLib.model.bundle import Resolver, parse_inference, parse_network, read_config

    path = reference_bundle / "configs" / "inference.yaml"
    cfg = read_config(path)
    net = parse_network(Resolver(cfg, path), cfg)
    inf = parse_inference(Resolver(cfg, path), cfg)
    assert (net.channel_mul, net.num_blocks, net.num_depths, net.use_downsample) == (1.0, 12, 4, True)
    assert (net.in_channels, net.num_classes) == (1, 3)
    assert inf.roi_size == (96, 96, 96) and inf.sw_batch_size == 4 and inf.overlap == 0.625
    assert (inf.a_min, inf.a_max, inf.pixdim, inf.axcodes) == (-87.0, 199.0, (1.0, 1.0, 1.0), "RAS")
    assert inf.blend_mode == "constant" and inf.amp and not inf.invert_nearest and not inf.spacing_align_corners


def test_unknown_preprocessing_transform_is_refused(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    cfg = yaml.safe_load((b / "configs" / "inference.yaml").read_text())
    cfg["preprocessing"]["transforms"].insert(3, {"_target_": "CropForegroundd", "keys": "image"})
    (b / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelError, match="CropForegroundd"):
        load_bundle(b)


def test_checksums_from_large_files_are_enforced(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    good = file_md5(b / "models" / "model.pt")
    entries = [{"path": "models/model.pt", "url": "https://example.invalid/model.pt", "hash_val": good,
                "hash_type": "md5"}]
    (b / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    assert load_bundle(b).describe()["weights_md5"] == good
    entries[0]["hash_val"] = "0" * 32
    (b / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    with pytest.raises(ModelError, match="md5"):
        load_bundle(b)


@pytest.mark.parametrize("text", [
    "- just a list\n",
    "large_files: 3\n",
    "large_files:\n- url: x\n",
    "large_files:\n- path: [1, 2]\n",
    "large_files:\n- path: models/model.pt\n  hash_val: {a: 1}\n",
    "large_files:\n- path: models/model.pt\n  hash_val: not-an-md5\n  hash_type: md5\n",
])
def test_malformed_large_files_is_one_model_error(tmp_path, tiny_bundle, text):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    (b / "large_files.yml").write_text(text)
    with pytest.raises(ModelError) as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_oversized_config_is_refused(tmp_path, tiny_bundle):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    cfg = (b / "configs" / "inference.yaml").read_text()
    (b / "configs" / "inference.yaml").write_text(cfg + "#" * (1 << 20) + "\n")
    with pytest.raises(ModelError, match="allowed for this file"):
        load_bundle(b)


def test_exported_sidecar_is_bounded(tmp_path):
    from PancreasDiNTSLib.model.exported import read_sidecar

    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    Path(str(model) + ".json").write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelError, match="levels deep"):
        read_sidecar(model)


@pytest.mark.parametrize("edit,match", [
    ({"a": "@b", "b": "@a", ("inferer", "overlap"): "@a"}, "@references"),  # a cycle
    ({"f0": [0, 0], **{f"f{i}": [f"@f{i - 1}", f"@f{i - 1}"] for i in range(1, 40)},
      ("inferer", "roi_size"): "@f39"}, "more than"),  # 2**39 values by fan-out
    ({("dints_space", "num_blocks"): "twelve"}, "wrong type"),
    ({("inferer", "roi_size"): "@inferer#roi_size#x"}, "points nowhere"),
    ({("inferer", "roi_size"): [96, 96]}, "one number or three"),
])
def test_hostile_references_and_values_are_one_model_error(tmp_path, tiny_bundle, edit, match):
    b = copy_bundle(tiny_bundle, tmp_path / "b")
    cfg = yaml.safe_load((b / "configs" / "inference.yaml").read_text())
    for key, value in edit.items():
        if isinstance(key, tuple):
            cfg[key[0]][key[1]] = value
        else:
            cfg[key] = value
    (b / "configs" / "inference.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelError, match=match) as info:
        load_bundle(b)
    assert "\n" not in str(info.value)
