"""inference.device: the one device resolver (also under torchrun) and the one out-of-memory back-off."""

from __future__ import annotations

import pytest
import torch
from PancreasDiNTSLib.core.errors import DeviceError
from PancreasDiNTSLib.inference import device


def test_names_resolve_or_say_why_not(monkeypatch) -> None:
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")
    assert device.resolve_device(None) == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU.*use --device cpu"):
        device.resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="unknown device"):
        device.resolve_device("tpu")


def test_torchrun_rank_picks_its_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.resolve_device("cuda", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert device.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="LOCAL_RANK 2 needs cuda:2.*--nproc_per_node=2"):
        device.resolve_device("auto", local_rank=2, world_size=3)
    with pytest.raises(DeviceError, match="only 2 GPU"):
        device.resolve_device("cuda:5")
    for key, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    assert device.launched_by_torchrun()
    assert device.device_for_rank("cuda") == torch.device("cuda", 1)
    assert device.device_for_rank("cpu") == torch.device("cpu")


def test_halving_then_last_resort_then_the_error() -> None:
    sizes: list[int] = []
    retries: list[int] = []
    resort = {"used": False}

    def run(size: int) -> str:
        sizes.append(size)
        if not resort["used"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "ok"

    def last_resort() -> bool:
        if resort["used"]:
            return False
        resort["used"] = True
        return True

    assert device.halve_on_oom(run, 8, last_resort=last_resort, on_retry=retries.append) == ("ok", 1)
    assert sizes == [8, 4, 2, 1, 1] and retries == [4, 2, 1, 1]

    def never(size: int) -> str:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        device.halve_on_oom(never, 4)

    def other(size: int) -> str:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        device.halve_on_oom(other, 4)
    assert device.is_oom(RuntimeError("CUDA error: out of memory")) and not device.is_oom(ValueError("x"))


def test_mps_where_torch_reports_it_with_the_cpu_fallback_recorded(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="--device mps: PyTorch .* reports no MPS.*use --device cpu"):
        device.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    monkeypatch.setattr(device.warnings, "showwarning", device.warnings.showwarning)  # restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")  # auto never picks the untested MPS
    assert device.resolve_device(" MPS ") == torch.device("mps")
    import os
    import warnings

    assert os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("The operator 'aten::upsample_trilinear3d.out' is not currently supported on the MPS "
                      "backend and will fall back to run on the CPU. This may have performance implications.",
                      UserWarning, stacklevel=1)
    assert "aten::upsample_trilinear3d.out" in device.MPS_CPU_FALLBACKS
    device.MPS_CPU_FALLBACKS.discard("aten::upsample_trilinear3d.out")
