#!/usr/bin/env bash
# One prepared GPU check for issue 7 (H100/H200, under 9 minutes). Prints two tables and JSON lines:
#   1. network only, released size (channel_mul 1, 12 blocks, 4 depths, random arch and weights), batch 4, fp16:
#      MONAI DiNTS as the bundle builds it (arch codes on CUDA) vs FastDiNTS eager / CUDA graph / torch.compile,
#      with max differences and host syncs per forward  (Testing/benchmarks/network_check.py)
#   2. end to end on example_ct.nii.gz (366x303x336 at 1 mm, ~504 windows): the bundle's own
#      monai.bundle workflow vs ours: exact (MONAI inferer), fast eager, fast + CUDA graph, fast + torch.compile
#      (pancreas-dints benchmark; last JSON line has speedup and agreement).
#
# Nothing is installed: torch (CUDA), monai, nibabel, pyyaml and pytorch-ignite must be importable (the bundle's
# evaluator needs ignite; without it part 2 runs ours only). The engine is used from this checkout via
# PYTHONPATH (no `pip install -e .` needed; it would also work offline with --no-deps --no-build-isolation).
#
# Data: the example CT and the reference bundle configs live outside the repository (../shared). Copy them into
# an ignored folder that travels with `carry`, once, on the developer machine:
#   mkdir -p .gpu_data && cp /work/shared/data/example_ct.nii.gz .gpu_data/ \
#     && cp -r /work/shared/reference .gpu_data/ && (grep -qx '/.gpu_data/' .git/info/exclude \
#     || echo '/.gpu_data/' >> .git/info/exclude)
# then:  run(command="bash Testing/benchmarks/gpu_check.sh", carry=[".gpu_data"], timeout_s=560)
# Results are also written to $OUT (gpu_check.log, network.json, e2e.json) when $OUT is set.
# The 8 GB-card memory case is a second call (512x512x1000 CT, released width, CUDA memory capped at 8 GiB):
#   run(command="PANCREAS_DINTS_SHARED=.gpu_data python3 Testing/benchmarks/big_ct_check.py --device cuda
#       --gpu-mem-gb 8 --channel-mul 1 --source .gpu_data/example_ct.nii.gz", carry=[".gpu_data"], timeout_s=300)
set -u
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/PancreasDiNTS${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
T0=$(date +%s)
say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

DATA=""
for d in "${PANCREAS_DINTS_SHARED:-}" "$PWD/.gpu_data" "$PWD/shared" "$PWD/../shared"; do
  if [ -n "$d" ] && [ -f "$d/data/example_ct.nii.gz" -o -f "$d/example_ct.nii.gz" ]; then DATA="$d"; break; fi
done
CT=""; REF=""
if [ -n "$DATA" ]; then
  CT=$(ls "$DATA"/data/example_ct.nii.gz "$DATA"/example_ct.nii.gz 2>/dev/null | head -1)
  REF=$(ls -d "$DATA"/reference/pancreas_ct_dints_segmentation 2>/dev/null | head -1)
fi

say "environment"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
for m in ("monai", "nibabel", "yaml", "ignite", "psutil", "scipy"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"  {m} MISSING ({type(exc).__name__})")
EOF
HAVE_IGNITE=$($PY -c "import ignite" 2>/dev/null && echo 1 || echo 0)

say "part 1: network only (released size, batch 4, fp16; torch.compile is timed in part 2)"
timeout 150 $PY Testing/benchmarks/network_check.py --device cuda --batch 4 --iters 10 2>&1 \
  | grep -v "Length of input patch" | tee -a "$LOG" | tail -n 12
grep '^{' "$LOG" | tail -1 >"$OUTDIR/network.json"

if [ -z "$CT" ] || [ -z "$REF" ]; then
  say "part 2 skipped: example_ct.nii.gz / reference configs not found (see the header: .gpu_data + carry)"
  exit 1
fi
MODES="fast,exact,fastmm,fast:eager:auto,fast:cuda-graph,fastmm:compile"
EXTRA=""
if [ "$HAVE_IGNITE" != 1 ]; then EXTRA="--skip-bundle"; say "pytorch-ignite missing: bundle run skipped"; fi
say "part 2: end to end on $CT (bundle vs ours: $MODES)"
timeout 370 $PY -m PancreasDiNTSLib.cli benchmark --device cuda --input "$CT" --reference "$REF" \
  --modes "$MODES" --roi-cube-mm 100 --workdir /tmp/gpu_check_work $EXTRA 2>&1 \
  | grep -v "Length of input patch" | tee -a "$LOG" | tail -n 16
rc=${PIPESTATUS[0]}
grep '^{' "$LOG" | tail -1 >"$OUTDIR/e2e.json"
say "done (exit $rc)"
exit "$rc"
