"""bf16 autocast for training on the CPU: does it keep the demo training's loss curve within seed noise, and is a
step faster? One run of this script measures both.

    OMP_NUM_THREADS=1 python Testing/benchmarks/bf16_training.py [--work DIR] [--phantoms 32] [--epochs 9]
        [--bf16-seed-b] [--step-reps 6]

The demo training shortened but faithful: ``train --preset demo`` with every override of
``Testing/benchmarks/make_demo_model.sh`` (channel_mul 0.25, AdamW lr 0.002, spacing 0.8 x 0.8 x 1 mm, patch
64 x 64 x 48, two patches per step, no augmentation), the shipped demo model's searched architecture, phantoms of
the same generator and data-set seed (``make-phantoms --seed 1 --size small --slice-mm 0.6,1.2``) but fewer of
them (``--phantoms``, first 4 validation cases kept) and fewer epochs with the same schedule shape (30 epochs, lr
halved every 10, validation every 5 in the script; here ``--epochs`` E, halved every E/3, validation every E/3).
``num_workers=0`` (one process; the numbers do not depend on it). Runs, one after the other as subprocesses of
the CLI with one thread: fp32 seed A, fp32 seed B (the noise: seed-to-seed spread), bf16 seed A
(``--set precision=bf16``), and with
``--bf16-seed-b`` bf16 seed B.

The rule, fixed before any run was looked at: bf16 is **within noise** when at every epoch e
``|loss_bf16_A(e) - loss_fp32_A(e)| <= |loss_fp32_B(e) - loss_fp32_A(e)|`` (train loss), and at every validated
epoch the same holds for the mean validation Dice. With ``--bf16-seed-b`` the bf16 seed-B run must also satisfy
it against fp32 seed B. ``ratio`` is mean_e |bf16_A - fp32_A| / mean_e |fp32_B - fp32_A| (train loss).

Seconds per step: from the runs (epochs without validation: epoch time / steps), and timed in this process with
the training code's own step (``loop.optimise``) on the demo architecture, fp32, bf16 and bf16 with network and
input in ``channels_last_3d``, interleaved (so the machine's load falls on all alike; medians). The last line is
JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENGINE = Path(__file__).resolve().parents[2] / "PancreasDiNTS"
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))

DEMO_ARCH = next((ENGINE / "PancreasDiNTSLib" / "resources" / "models" / "demo" / "models").glob("search_code_*.pt"))

CLI = [sys.executable, "-m", "PancreasDiNTSLib.cli"]
# make_demo_model.sh's OVERRIDES, without the epoch schedule (set from --epochs)
DEMO_OVERRIDES = ["channel_mul=0.25", "batch_size=1", "optimizer=adamw", "lr=0.002", "spacing=0.8,0.8,1.0",
                  "patch_size=64,64,48", "augment=false", "num_samples=2"]
SEED_A, SEED_B = 123, 124
VAL_CASES = 4


def cli(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ENGINE), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(CLI + args, check=True, env=env, stdout=subprocess.DEVNULL)


def prepare(work: Path, phantoms: int) -> Path:
    """The phantoms (kept between runs of this script) and a datalist with the first validation cases."""
    data = work / "phantoms"
    if not (data / "dataset.json").is_file():
        cli(["make-phantoms", "-n", str(phantoms), "--num-test", "0", "--seed", "1", "--size", "small",
             "--slice-mm", "0.6,1.2", "-o", str(data), "--progress", "none"])
    full = work / "datalist_all.json"
    cli(["prepare-datalist", "--path", str(data), "-o", str(full)])
    lists = json.loads(full.read_text())
    lists["validation"] = lists["validation"][:VAL_CASES]
    out = work / "datalist.json"
    out.write_text(json.dumps(lists, indent=2))
    return out


def train(work: Path, datalist: Path, name: str, seed: int, precision: str, epochs: int) -> dict[str, Any]:
    """One run (a fresh folder); its per-epoch rows and wall seconds."""
    run = work / name
    if run.exists():
        import shutil

        shutil.rmtree(run)
    step = max(1, epochs // 3)
    sets = [*DEMO_OVERRIDES, f"epochs={epochs}", f"lr_step_size={step}", f"val_interval={step}", "num_workers=0",
            f"seed={seed}", f"precision={precision}"]
    t0 = time.perf_counter()
    cli(["train", "--datalist", str(datalist), "--arch", str(DEMO_ARCH), "--preset", "demo", "-o", str(run),
         "--device", "cpu", "--progress", "none", *[a for s in sets for a in ("--set", s)]])
    wall = time.perf_counter() - t0
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    return {"rows": rows, "wall_s": round(wall, 1), "precision": ckpt["precision"]}


def column(run: dict[str, Any], key: str) -> list[float | None]:
    return [float(r[key]) if r.get(key) not in (None, "") else None for r in run["rows"]]


def within(test: list[float | None], ref: list[float | None], other: list[float | None]) -> list[bool | None]:
    """Per epoch: |test - ref| <= |other - ref| (None where an epoch has no value)."""
    return [None if None in (t, r, o) else abs(t - r) <= abs(o - r)  # type: ignore[operator]
            for t, r, o in zip(test, ref, other, strict=True)]


def step_seconds(run: dict[str, Any], steps: int) -> float | None:
    """Median seconds per step over the epochs without validation (None: every epoch validated)."""
    times = [float(r["epoch_time_s"]) / steps for r in run["rows"] if not r.get("val_mean_dice")]
    return round(statistics.median(times), 3) if times else None


def timed_steps(reps: int) -> dict[str, float]:
    """Median seconds of one training step (demo architecture, two 64 x 64 x 48 patches), interleaved variants."""
    import torch
    from PancreasDiNTSLib.training.loop import Fp32Loss, make_loss, optimise, run_precision
    from PancreasDiNTSLib.training.settings import make_settings
    from PancreasDiNTSLib.training.train import build_model, resolve_arch

    torch.set_num_threads(1)
    settings = make_settings("demo", DEMO_OVERRIDES)
    arch, _ = resolve_arch(DEMO_ARCH, settings)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    variants: dict[str, Any] = {}
    for name, prec, fmt in (("fp32", "fp32", torch.contiguous_format), ("bf16", "bf16", torch.contiguous_format),
                            ("bf16_channels_last", "bf16", torch.channels_last_3d)):
        model = build_model(settings, arch).to(memory_format=fmt)  # type: ignore[call-overload]
        precision = run_precision(prec, torch.device("cpu"), False)
        loss_fn = Fp32Loss(make_loss()) if precision.bf16 else make_loss()
        x = torch.randn(2, 1, 64, 64, 48).contiguous(memory_format=fmt)
        y = torch.randint(0, 3, (2, 1, 64, 64, 48))
        opt = torch.optim.AdamW(model.parameters(), lr=0.002)
        variants[name] = (model, loss_fn, x, y, opt, precision)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(reps + 1):
        for name, (model, loss_fn, x, y, opt, precision) in variants.items():
            t0 = time.perf_counter()
            optimise(lambda m=model, f=loss_fn, a=x, b=y: f(m(a), b), [opt], scaler, precision)
            if rep:  # the first step of each is a warm-up
                times[name].append(time.perf_counter() - t0)
    return {name: round(statistics.median(v), 3) for name, v in times.items()}


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def table(runs: dict[str, dict[str, Any]], key: str, names: list[str]) -> list[str]:
    cols = {n: column(runs[n], key) for n in names}
    a, b, c = cols["fp32_A"], cols["fp32_B"], cols["bf16_A"]
    lines = [f"| epoch | {' | '.join(names)} | abs(bf16_A - fp32_A) | abs(fp32_B - fp32_A) | within |",
             "|" + "---|" * (len(names) + 4)]
    for e in range(len(a)):
        if a[e] is None:
            continue
        dev = abs(c[e] - a[e]) if c[e] is not None else None
        seed = abs(b[e] - a[e]) if b[e] is not None else None
        ok = "yes" if dev is not None and seed is not None and dev <= seed else "NO"
        lines.append(f"| {e + 1} | {' | '.join(fmt(cols[n][e]) for n in names)} | {fmt(dev)} | {fmt(seed)} | {ok} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bf16-training-work"))
    ap.add_argument("--phantoms", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--bf16-seed-b", action="store_true", help="also bf16 with seed B")
    ap.add_argument("--step-reps", type=int, default=6, help="timed steps per variant (0: none)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    datalist = prepare(args.work.resolve(), args.phantoms)
    steps = len(json.loads(datalist.read_text())["training"])
    plan = [("fp32_A", SEED_A, "fp32"), ("fp32_B", SEED_B, "fp32"), ("bf16_A", SEED_A, "bf16")]
    if args.bf16_seed_b:
        plan.append(("bf16_B", SEED_B, "bf16"))
    runs: dict[str, dict[str, Any]] = {}
    for name, seed, precision in plan:
        runs[name] = train(args.work.resolve(), datalist, name, seed, precision, args.epochs)
        print(f"{name}: {runs[name]['wall_s']} s, precision {runs[name]['precision']['used']}", flush=True)
    names = [n for n, _, _ in plan]
    loss = {n: column(runs[n], "loss") for n in names}
    dice = {n: column(runs[n], "val_mean_dice") for n in names}
    checks = within(loss["bf16_A"], loss["fp32_A"], loss["fp32_B"]) + within(dice["bf16_A"], dice["fp32_A"],
                                                                            dice["fp32_B"])
    if args.bf16_seed_b:
        checks += within(loss["bf16_B"], loss["fp32_B"], loss["fp32_A"]) + within(dice["bf16_B"], dice["fp32_B"],
                                                                                dice["fp32_A"])
    judged = [c for c in checks if c is not None]
    dev = statistics.mean(abs(x - y) for x, y in zip(loss["bf16_A"], loss["fp32_A"], strict=True))  # type: ignore[operator]
    seed = statistics.mean(abs(x - y) for x, y in zip(loss["fp32_B"], loss["fp32_A"], strict=True))  # type: ignore[operator]
    print(f"{args.phantoms} phantoms ({steps} training steps per epoch, {VAL_CASES} validation cases), "
          f"{args.epochs} epochs, 1 thread; train loss per epoch:")
    print("\n".join(table(runs, "loss", names)))
    print("mean validation Dice at the validated epochs:")
    print("\n".join(table(runs, "val_mean_dice", names)))
    run_steps = {n: step_seconds(runs[n], steps) for n in names}
    timed = timed_steps(args.step_reps) if args.step_reps else {}
    print(f"seconds per step, from the runs: {run_steps}; timed interleaved in this process: {timed}")
    result = {
        "within_noise": all(judged), "checks_passed": sum(judged), "checks": len(judged),
        "ratio": round(dev / seed, 3) if seed > 0 else None,
        "mean_abs_dev_bf16_loss": round(dev, 5), "mean_abs_seed_spread_loss": round(seed, 5),
        "final_loss": {n: loss[n][-1] for n in names}, "final_dice": {n: dice[n][-1] for n in names},
        "run_step_s": run_steps, "run_wall_s": {n: runs[n]["wall_s"] for n in names},
        "timed_step_s": timed,
        "step_speedup_bf16": round(timed["fp32"] / timed["bf16"], 2) if timed else None,
        "step_speedup_bf16_channels_last": round(timed["fp32"] / timed["bf16_channels_last"], 2) if timed else None,
        "bf16_precision": runs["bf16_A"]["precision"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
