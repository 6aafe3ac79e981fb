#!/usr/bin/env bash
# GPU checks and benchmarks on a lent device machine (design.md "GPU checks and benchmarks").
#   benches/device_suite.sh [--quick]
# Installs the package there (pip install --no-build-isolation --no-deps -e ., which builds
# csrc), runs `pytest -m gpu` (INFO logs, e.g. each captured graph's node types, in log.txt),
# the per-kernel profile of one cached and one refresh step at LLaDA-8B shapes
# (python -m fastdiff.bench.step_profile), then the kernel benches, the end-to-end benches
# (LLaDA-8B vs AR), a Dream-7B row, SDAR-8B rows (block 4 and 16 vs AR) and the in-process
# serving load at 8B shapes, in that order of importance. --quick: correctness only (< 90 s).
# Full: under 6 minutes in all (design.md): each step's timeout is capped and ends by a
# deadline in seconds since the start (install 90 s; pytest 130 s; step profile 60 s, by 245;
# kernel benches 30 s (--quick), by 255; end-to-end by 280; Dream 35 s, by 310; SDAR 35 s, by
# 335; serving 25 s, by 358), so a slow step shortens the later ones.
# Writes to $OUT: results.jsonl, table.md, log.txt (+ serve_bench.{json,md,png} of the serving load). Set FASTDIFF_COMMIT to
# the commit under test when the copy there has no .git.
set -uo pipefail
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
OUT=${OUT:-$PWD/device_out}
[[ $QUICK == 1 ]] && OUT=$OUT/quick  # a full run after it in the same $OUT keeps its output
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
upto() { local t; t=$(left "$2"); echo $((t < $1 ? t : $1)); }  # at most $1 s, ending by deadline $2

step "environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"; } >> "$LOG" 2>&1

step "install"
# the CUDA extension must build (a failure is an error, not a warning), for Hopper only (half the
# compile of the default "90a;80")
export FASTDIFF_BUILD_CUDA=${FASTDIFF_BUILD_CUDA:-1} FASTDIFF_CUDA_ARCHS=${FASTDIFF_CUDA_ARCHS:-90a}
if ! timeout "$([[ $QUICK == 1 ]] && echo 60 || echo 90)" "$PY" -m pip install -q --no-build-isolation --no-deps -e . >> "$LOG" 2>&1; then
    echo "pip install failed: falling back to PYTHONPATH" | tee -a "$LOG"
    [[ -e fastdiff/kernels ]] || ln -s ../kernels fastdiff/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import fastdiff.kernels.attention, fastdiff.ops.triton_backend" >> "$LOG" 2>&1 \
    || echo "import of fastdiff.kernels FAILED" | tee -a "$LOG"
$PY -c "import fastdiff._C as c; print('fastdiff._C', c.__file__)" >> "$LOG" 2>&1 \
    || echo "import of fastdiff._C FAILED (the WHILE loop and its gpu tests cannot run)" | tee -a "$LOG"

step "pytest -m gpu"
# SIGINT at the deadline: pytest stops like on Ctrl-C and still writes its junit report
timeout -s INT -k 15 "$([[ $QUICK == 1 ]] && left 85 || echo 130)" "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests \
    -o log_cli=true --log-cli-level=INFO --log-cli-format='%(levelname)s %(name)s: %(message)s' \
    --junitxml="$SCRATCH/junit.xml" >> "$LOG" 2>&1
echo "pytest -m gpu rc=$?" | tee -a "$LOG"
[[ -f "$SCRATCH/junit.xml" ]] && $PY benches/bench_kernels.py --junit "$SCRATCH/junit.xml" \
    --out "$OUT" >> "$LOG" 2>&1

if [[ $QUICK == 0 ]]; then
    step "step profile (8B shapes)"
    PROFILE_S=$(upto 60 245)
    timeout -k 5 "$PROFILE_S" "$PY" -m fastdiff.bench.step_profile --contexts 1024,4096 \
        --budget-s $((PROFILE_S - 8)) --out "$OUT" >> "$LOG" 2>&1
    echo "step profile rc=$?" | tee -a "$LOG"

    step "kernel benches"
    if [[ -f benches/bench_e2e.py ]]; then BENCH_S=$(upto 30 255); else BENCH_S=$(left 315); fi
    BENCH_ARGS=(--out "$OUT")
    ((BENCH_S < 60)) && BENCH_ARGS+=(--quick)  # its rows are written at its end: finish
    timeout "$BENCH_S" "$PY" benches/bench_kernels.py "${BENCH_ARGS[@]}" >> "$LOG" 2>&1
    echo "kernel benches rc=$?" | tee -a "$LOG"
    if [[ -f benches/bench_e2e.py ]]; then
        step "end-to-end benches"
        timeout "$(left 280)" "$PY" benches/bench_e2e.py --quick --out "$OUT" >> "$LOG" 2>&1
        echo "end-to-end benches rc=$?" | tee -a "$LOG"
        step "Dream-7B row"
        timeout -k 5 "$(upto 35 310)" "$PY" benches/bench_e2e.py --preset dream-7b --quick \
            --contexts 1024 --out "$OUT" >> "$LOG" 2>&1
        echo "Dream-7B row rc=$?" | tee -a "$LOG"
        step "SDAR-8B rows"
        timeout -k 5 "$(upto 35 335)" "$PY" benches/bench_e2e.py --preset sdar-8b --quick \
            --out "$OUT" >> "$LOG" 2>&1
        echo "SDAR-8B rows rc=$?" | tee -a "$LOG"
    fi
    step "serving load (in-process, 8B shapes)"
    timeout -k 5 "$(upto 25 358)" "$PY" -m fastdiff.cli bench-serve --in-process \
        --preset llada-8b --rates 2,8 --requests 8 --prompt-lens 64,128 --gen-lengths 128,256 \
        --block-length 32 --threshold 0.9 --cache dual --max-seconds 6 --out "$OUT" \
        --stem serve_bench >> "$LOG" 2>&1
    echo "serving load rc=$?" | tee -a "$LOG"
    [[ -f "$OUT/serve_bench.md" ]] && { echo; echo "## Serving (in-process)"; echo;
        cat "$OUT/serve_bench.md"; } >> "$OUT/table.md"
fi
step "done"
rm -rf "$SCRATCH"
cat "$OUT/table.md"
