"""bf16 CPU inference: the precision decision (inference/precision.py) and the bf16 channels-last fast path."""

from __future__ import annotations

import pytest
import torch
from PancreasDiNTSLib.core.errors import UsageError
from PancreasDiNTSLib.inference import precision as prec
from PancreasDiNTSLib.inference.fastpath import FastInferer
from PancreasDiNTSLib.inference.windows import sliding_window_exact_skip
from PancreasDiNTSLib.model.fastnet import make_fast, make_fast_bf16
from PancreasDiNTSLib.model.network import build_dints, random_arch
from PancreasDiNTSLib.model.spec import NetworkSpec

CPUINFO_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.delenv(prec.OVERRIDE_ENV, raising=False)
    yield
    torch.set_num_threads(before)


def test_hardware_is_detected_from_the_cpu_flags(tmp_path, monkeypatch) -> None:
    for text, expected in ((CPUINFO_BF16, (True, "avx512_bf16")), (CPUINFO_AMX, (True, "amx_bf16")),
                           (CPUINFO_PLAIN, (False, "no amx_bf16 or avx512_bf16"))):
        info = tmp_path / "cpuinfo"
        info.write_text(text)
        has, how = prec.cpu_bf16_support(info)
        assert has is expected[0] and expected[1] in how, how
    assert prec.cpu_flags(tmp_path / "absent") == set()  # no /proc (macOS, Windows): no bf16, fp32
    assert prec.cpu_bf16_support(tmp_path / "absent")[0] is False
    monkeypatch.setenv(prec.OVERRIDE_ENV, "1")
    assert prec.cpu_bf16_support(tmp_path / "absent") == (True, f"{prec.OVERRIDE_ENV}=1")


def test_auto_fp32_bf16_on_each_device(monkeypatch) -> None:
    monkeypatch.setenv(prec.OVERRIDE_ENV, "1")
    kept = prec.resolve_precision("auto", "cpu", True, True)  # bf16 missed a target: auto keeps fp32 (issue 36)
    assert kept.name == "fp32" and "missed an agreement target" in kept.reason and not prec.AUTO_PICKS_BF16
    monkeypatch.setattr(prec, "AUTO_PICKS_BF16", True)  # the path auto takes once bf16 meets every target
    assert prec.resolve_precision(None, "cpu", True, False).name == "bf16"
    monkeypatch.setattr(prec, "AUTO_PICKS_BF16", False)
    assert prec.resolve_precision("bf16", "cpu", True, False).name == "bf16"
    assert prec.resolve_precision("fp32", "cpu", True, False).name == "fp32"
    assert prec.resolve_precision("auto", "cpu", False, False).name == "fp32"  # --mode exact stays fp32
    assert prec.resolve_precision("auto", "cpu", True, False, engine="compile").name == "fp32"
    assert prec.resolve_precision("auto", "cuda", True, True).name == "fp16-amp"  # the bundle's AMP
    assert prec.resolve_precision("auto", "cuda", True, False).name == "fp32"
    assert prec.resolve_precision("fp32", "cuda", False, True).name == "fp32"
    assert prec.resolve_precision("auto", "mps", True, True).name == "fp32"
    monkeypatch.setenv(prec.OVERRIDE_ENV, "0")
    chosen = prec.resolve_precision("auto", "cpu", True, False)
    assert chosen.name == "fp32" and prec.OVERRIDE_ENV in chosen.reason
    forced = prec.resolve_precision("bf16", "cpu", True, False)
    assert forced.name == "bf16" and "emulated" in forced.reason
    assert forced.describe() == {"used": "bf16", "requested": "bf16", "reason": forced.reason}
    for args, words in ((("bf16", "cpu", False, False), "--mode exact"), (("bf16", "cuda", True, True), "CUDA"),
                        (("bf16", "mps", True, False), "mps"), (("fp16", "cpu", True, False), "choose auto"),
                        (("bf16", "cpu", True, False, "cuda-graph"), "--engine eager")):
        with pytest.raises(UsageError, match=words):
            prec.resolve_precision(*args)


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_dints(NetworkSpec(channel_mul=0.125, num_blocks=4, num_depths=3), random_arch(4, 3, seed=3)).eval()
    with torch.no_grad():  # non-trivial affine norms
        for p in net.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return net


@pytest.mark.slow
def test_bf16_net_stays_channels_last_bf16_between_layers(tiny_net) -> None:
    """Every convolution, norm, upsampling and ReLU of the bf16 net gets a bf16 channels-last input (no format
    conversion between layers), the fp32 net keeps its weights, and the logits are fp32 and close to fp32's."""
    fast, fb = make_fast(tiny_net), make_fast_bf16(tiny_net)
    assert all(p.dtype == torch.float32 for p in tiny_net.parameters())  # a copy was cast, not the network
    convs = [m for m in fb.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 and
                         m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    seen: list[tuple[str, torch.dtype, bool]] = []

    def hook(mod, args, _out=None):
        x = args[0]
        seen.append((type(mod).__name__, x.dtype, x.is_contiguous(memory_format=torch.channels_last_3d)))

    handles = [m.register_forward_pre_hook(hook) for m in fb.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.Upsample, torch.nn.ReLU))]
    calls = {"norm": 0}
    real_bn = torch.nn.functional.batch_norm

    def bn(x, *a, **k):
        calls["norm"] += 1
        seen.append(("norm", x.dtype, x.is_contiguous(memory_format=torch.channels_last_3d)))
        out = real_bn(x, *a, **k)
        assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last_3d)
        return out

    x = torch.rand(2, 1, 32, 32, 32)
    try:
        torch.nn.functional.batch_norm = bn
        with torch.inference_mode():
            y_b = fb(x)
    finally:
        torch.nn.functional.batch_norm = real_bn
        for h in handles:
            h.remove()
    kinds = {k for k, _, _ in seen}
    assert {"Conv3d", "norm", "Upsample"} <= kinds, kinds
    bad = [s for s in seen if s[1] != torch.bfloat16 or not s[2]]
    assert not bad, bad[:5]
    with torch.inference_mode():
        y = fast(x)
        y_one = fb(x[1:])  # the instance norm is per window: a window's logits do not depend on its batch
    assert y_b.dtype == torch.float32 and y_b.shape == y.shape
    assert torch.equal(y_one, y_b[1:])
    scale, diff = float(y.abs().max()), (y_b - y).abs()
    # bf16 rounding (8 bits of mantissa, some 40 layers), not a different function
    assert float(diff.mean()) < 0.01 * scale and float(diff.max()) < 0.1 * scale
    assert float((y_b.argmax(1) == y.argmax(1)).float().mean()) > 0.98


@pytest.mark.slow
def test_bf16_windows_sum_in_fp32(tiny_net) -> None:
    """The sliding window of the bf16 fast path accumulates fp32 logits (the stitched sums are fp32)."""
    inferer = FastInferer(tiny_net, (32, 32, 32), 0.5, "cpu", False, 2, bf16=True)
    x = torch.rand(1, 1, 48, 40, 36)
    sums = sliding_window_exact_skip(x, inferer.predictor, (32, 32, 32), 2, 0.5, raw=True)
    assert sums.dtype == torch.float32
    out = inferer(x[0])
    with torch.inference_mode():
        ref = sliding_window_exact_skip(x, make_fast(tiny_net), (32, 32, 32), 2, 0.5)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out - ref).abs().mean()) < 0.01 * float(ref.abs().max())
    with pytest.raises(ValueError, match="bf16 runs on the CPU"):
        FastInferer(tiny_net, (32, 32, 32), 0.5, "cpu", False, 2, engine="compile", bf16=True)


@pytest.mark.slow
def test_segment_bf16_on_request_agrees_with_fp32_exact_and_auto_stays_fp32(tmp_path, monkeypatch) -> None:
    """`segment` on the demo phantom: --precision bf16 with bf16 hardware (detection forced on, so the test means
    the same on any CPU) says bf16 in report.json and its labels are >= 99.9 % those of the fp32 exact run; the
    default (auto) runs fp32 with or without the hardware (bf16 missed a target) and equals the exact run."""
    import json

    import nibabel as nib
    import numpy as np
    from PancreasDiNTSLib.cli import main
    from PancreasDiNTSLib.core.paths import DEMO_DEFAULT_SEED, PACKAGED_DEMO_MODEL
    from PancreasDiNTSLib.synthetic.demo import PHANTOM_SIZE, PHANTOM_SLICE_MM
    from PancreasDiNTSLib.synthetic.phantom import make_phantom

    hu, _, affine = make_phantom(DEMO_DEFAULT_SEED, size=PHANTOM_SIZE, tumour=True, slice_mm=PHANTOM_SLICE_MM)
    ct = tmp_path / "ph.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(hu).astype(np.int16), affine), ct)
    common = ["segment", str(ct), "--model", str(PACKAGED_DEMO_MODEL), "--device", "cpu", "--format", "nifti",
              "--progress", "none"]
    runs = {"exact": ["--mode", "exact", "--precision", "fp32", "--region", "whole"], "hw": ["--precision", "bf16"],
            "no-hw": [], "auto-hw": []}
    labels, used = {}, {}
    for name, extra in runs.items():
        monkeypatch.setenv(prec.OVERRIDE_ENV, "0" if name == "no-hw" else "1")
        assert main([*common, "-o", str(tmp_path / name), *extra]) == 0
        labels[name] = np.asarray(nib.load(tmp_path / name / "ph" / "labels.nii.gz").dataobj)
        used[name] = json.loads((tmp_path / name / "ph" / "report.json").read_text())["inference"]["precision"]
    assert used["exact"]["used"] == "fp32" and used["no-hw"]["used"] == "fp32" and used["hw"]["used"] == "bf16"
    assert used["auto-hw"] == {"used": "fp32", "requested": "auto", "reason": used["auto-hw"]["reason"]}
    assert "missed an agreement target" in used["auto-hw"]["reason"] and prec.OVERRIDE_ENV in used["hw"]["reason"]
    assert np.array_equal(labels["auto-hw"], labels["exact"])
    assert (labels["exact"] == 1).sum() > 500 and (labels["exact"] == 2).sum() > 50
    assert np.array_equal(labels["no-hw"], labels["exact"])
    assert float((labels["hw"] == labels["exact"]).mean()) >= 0.999
    with pytest.raises(SystemExit) as refused:  # argparse-level: no such precision
        main([*common, "-o", str(tmp_path / "bad"), "--precision", "fp16"])
    assert refused.value.code == 2
    assert main([*common, "-o", str(tmp_path / "bad"), "--precision", "bf16", "--mode", "exact"]) == 2
    assert not (tmp_path / "bad").exists()
