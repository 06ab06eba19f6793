"""torch.distributed helpers: single-process behaviour, and a real 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PancreasDiNTSLib.core.errors import DeviceError
from PancreasDiNTSLib.inference.device import device_for_rank
from PancreasDiNTSLib.training import distributed as D

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_single_process_degrades_to_rank0(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert D.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert D.all_reduce_mean(3.0) == 3.0
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(D.all_reduce_sum(t), t)
    assert D.partition([1, 2, 3], shuffle=True, even_divisible=True) == [1, 2, 3]
    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model) is model and D.unwrap(model) is model
    D.barrier()
    D.destroy()


def test_shard_splits_every_case_once():
    cases = [f"ct{i}" for i in range(7)]
    parts = [D.shard(cases, rank=r, world_size=3) for r in range(3)]
    assert parts == [["ct0", "ct3", "ct6"], ["ct1", "ct4"], ["ct2", "ct5"]]
    assert sorted(sum(parts, [])) == sorted(cases)
    with pytest.raises(ValueError):
        D.shard(cases, rank=3, world_size=3)


def test_shard_reads_torchrun_env_without_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert D.shard(["a", "b", "c"]) == ["b"]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device_for_rank("cpu") == torch.device("cpu")


def test_partition_with_fewer_items_than_ranks():
    train = [D.partition(["a"], shuffle=True, even_divisible=True, rank=r, world_size=2) for r in range(2)]
    assert train == [["a"], ["a"]]
    val = [D.partition(["a"], shuffle=False, even_divisible=False, rank=r, world_size=2) for r in range(2)]
    assert val == [["a"], []]
    parts = [D.partition(list(range(5)), shuffle=False, even_divisible=False, rank=r, world_size=2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == [0, 1, 2, 3, 4]


def test_lr_rule_matches_bundle_multi_gpu_config():
    s = D.scale_for_world(0.025, max_epochs=400, val_interval=10, lr_step_size=80, world_size=8)
    assert (s.learning_rate, s.max_epochs, s.lr_step_size, s.val_interval) == (0.2, 3200, 640, 80)


def test_cuda_request_without_gpu_is_one_clear_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        D.init_distributed("cuda")


WORKER = textwrap.dedent(
    """
    import json, sys, torch
    from PancreasDiNTSLib.training import distributed as D

    with D.distributed_session("auto") as ctx:
        out = {"rank": ctx.rank, "world": ctx.world_size, "backend": ctx.backend, "device": str(ctx.device)}
        out["shard"] = D.shard([f"ct{i}" for i in range(5)])
        out["partition_val"] = D.partition(list(range(5)), shuffle=False, even_divisible=False)
        out["partition_train"] = D.partition(list(range(5)), shuffle=True, even_divisible=True)
        out["sum"] = D.all_reduce_sum(float(ctx.rank + 1))
        out["mean_list"] = D.all_reduce_mean([ctx.rank * 2.0, 1.0])
        # DDP averages gradients: after one step on different data the weights are equal on both ranks.
        torch.manual_seed(0)
        model = D.wrap_ddp(torch.nn.Linear(4, 1), ctx)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.full((2, 4), float(ctx.rank + 1))
        model(x).sum().backward()
        opt.step()
        w = D.unwrap(model).weight.detach()
        out["weights_equal"] = bool(torch.equal(D.all_reduce_mean(w), w))
        # Free the DDP reducer while the process group is alive: a module-level DDP model outlives the session and
        # its destructor then touches the destroyed gloo group ("terminate called without an active exception").
        del model, opt
        D.barrier()
        # One file per rank: both ranks share torchrun's stdout, where lines can interleave.
        with open(f"{__file__}.rank{ctx.rank}.json", "w") as fh:
            json.dump(out, fh)
    """
)

TEARDOWN_ABORT = "terminate called without an active exception"


@pytest.mark.slow
def test_two_process_gloo_under_torchrun(tmp_path, cli_env):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**cli_env, "OMP_NUM_THREADS": "1"}
    # gloo on a loaded CPU can abort while the ranks tear down after all their work (PyTorch's gloo worker threads
    # at exit: pytorch/pytorch#179291; seen in CI with two xdist workers, once twice in a row with three, never in
    # 8 runs beside 3 busy processes): up to two reruns on that abort alone, so a run that always aborts fails.
    for _attempt in range(3):
        proc = subprocess.run(TORCHRUN + [str(script)], env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode == 0 or TEARDOWN_ABORT not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"worker.py.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    r0, r1 = results
    assert r0["world"] == 2 and r0["backend"] == "gloo" and r0["device"] == "cpu"
    assert r0["shard"] == ["ct0", "ct2", "ct4"] and r1["shard"] == ["ct1", "ct3"]
    assert sorted(r0["partition_val"] + r1["partition_val"]) == [0, 1, 2, 3, 4]
    assert len(r0["partition_train"]) == len(r1["partition_train"]) == 3
    assert r0["sum"] == r1["sum"] == 3.0
    assert r0["mean_list"] == [1.0, 1.0]
    assert r0["weights_equal"] and r1["weights_equal"]
