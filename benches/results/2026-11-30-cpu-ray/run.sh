#!/usr/bin/env bash
# The Ray Serve serving benchmark of 2026-11-30 (issue 16), from the repository root:
#   bash benches/results/2026-11-30-cpu-ray/run.sh        (about 3 minutes on 2 cores)
# The same bounded load (fastdiff bench-serve over HTTP) against: the single-process server
# (`single`, started by bench-serve), then `fastdiff serve --replicas 1` and `--replicas 2` on a
# local Ray instance (`ray1`, `ray2`; one torch thread per replica), on the bundled demo model.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benches/results/2026-11-30-cpu-ray}
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
DEMO=$($PY -c "import fastdiff.assets as a; print(a.demo_model_path())")
LOAD=(--model "$DEMO" --rates 1,2,4 --requests 12 --prompt-lens 16,48 --gen-lengths 32,64
      --threshold 0.9 --cache dual --block-length 32 --max-batch-size 8 --max-wait-ms 5
      --threads 1 --max-seconds 60)

$PY -m fastdiff.cli bench-serve "${LOAD[@]}" --out "$OUT" --stem single

for n in 1 2; do
  port=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  $PY -m fastdiff.cli serve --model "$DEMO" --replicas "$n" --port "$port" --max-batch-size 8 \
    --max-wait-ms 5 --log-level warning > "$OUT/serve_ray$n.log" 2>&1 &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null || true' EXIT
  t0=$(date +%s)
  until curl -s --max-time 2 "http://127.0.0.1:$port/health" | grep -q "\"replicas\":$n"; do
    kill -0 $pid || { cat "$OUT/serve_ray$n.log"; exit 1; }
    [ $(( $(date +%s) - t0 )) -lt 180 ] || { echo "no $n replicas after 180 s"; exit 1; }
    sleep 1
  done
  echo "[run.sh] $n replica(s) up after $(( $(date +%s) - t0 )) s"
  $PY -m fastdiff.cli bench-serve "${LOAD[@]}" --url "http://127.0.0.1:$port" --out "$OUT" \
    --stem "ray$n"
  kill -TERM $pid
  wait $pid || true
  trap - EXIT
done
