#!/usr/bin/env bash
# GPU checks and benchmarks on a lent device machine (design.md "GPU checks and benchmarks").
#   benches/device_suite.sh [--quick]
# Installs the package there (pip install --no-build-isolation --no-deps -e ., which builds
# csrc), runs `pytest -m gpu`, then the kernel benches (and the end-to-end benches once
# benches/bench_e2e.py exists). --quick: correctness only (< 90 s). At most 5 minutes in all.
# Writes exactly three files to $OUT: results.jsonl, table.md, log.txt. Set FASTDIFF_COMMIT to
# the commit under test when the copy there has no .git.
set -uo pipefail
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: > "$LOG"
: > "$OUT/results.jsonl"
echo "# fastdiff device suite $(date -u +%FT%TZ) quick=$QUICK" > "$OUT/table.md"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SCRATCH=$(mktemp -d)
T0=$SECONDS
step() { echo "== $* (t=$((SECONDS - T0))s)" | tee -a "$LOG"; }
left() { local t=$(($1 - (SECONDS - T0))); echo $((t > 10 ? t : 10)); }  # seconds to deadline $1

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"; } >> "$LOG" 2>&1

step "install"
if ! timeout $([[ $QUICK == 1 ]] && echo 45 || echo 90) $PY -m pip install -q --no-build-isolation --no-deps -e . >> "$LOG" 2>&1; then
    echo "pip install failed: falling back to PYTHONPATH" | tee -a "$LOG"
    [[ -e fastdiff/kernels ]] || ln -s ../kernels fastdiff/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import fastdiff.kernels.attention, fastdiff.ops.triton_backend" >> "$LOG" 2>&1 \
    || echo "import of fastdiff.kernels FAILED" | tee -a "$LOG"

step "pytest -m gpu"
timeout $([[ $QUICK == 1 ]] && left 85 || echo 130) $PY -m pytest -q -m gpu -p no:cacheprovider tests \
    --junitxml="$SCRATCH/junit.xml" >> "$LOG" 2>&1
echo "pytest -m gpu rc=$?" | tee -a "$LOG"
[[ -f "$SCRATCH/junit.xml" ]] && $PY benches/bench_kernels.py --junit "$SCRATCH/junit.xml" \
    --out "$OUT" >> "$LOG" 2>&1

if [[ $QUICK == 0 ]]; then
    step "kernel benches"
    BENCH_END=$([[ -f benches/bench_e2e.py ]] && echo 150 || echo 285)
    timeout $(left $BENCH_END) $PY benches/bench_kernels.py --out "$OUT" >> "$LOG" 2>&1
    echo "kernel benches rc=$?" | tee -a "$LOG"
    if [[ -f benches/bench_e2e.py ]]; then
        step "end-to-end benches"
        timeout $(left 290) $PY benches/bench_e2e.py --quick --out "$OUT" >> "$LOG" 2>&1
        echo "end-to-end benches rc=$?" | tee -a "$LOG"
    fi
fi
step "done"
rm -rf "$SCRATCH"
cat "$OUT/table.md"
