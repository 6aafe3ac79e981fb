"""End-to-end GPU benches for benches/device_suite.sh (also runs on the CPU with --preset tiny).

1. the cached step at LLaDA-8B shapes (batch 1, block 32, context 1k and 4k) vs its floor;
2. the end-to-end scenarios (fastdiff modes, reference loop, AR static cache + CUDA graph,
   HF Llama generate) at batch 1, prompt 128, gen 256, block 32.
Appends to $OUT/results.jsonl and $OUT/table.md; all weights random."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastdiff import Engine, ModelConfig  # noqa: E402
from fastdiff.bench import env  # noqa: E402
from fastdiff.bench.report import markdown_table  # noqa: E402
from fastdiff.bench.runner import default_plan, run_plan  # noqa: E402
from fastdiff.bench.step_bench import time_steps  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="llada-8b")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--contexts", default="1024,4096")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = env.environment(device)
    cfg = ModelConfig.preset(args.preset)
    contexts = [int(c) for c in args.contexts.split(",")]
    if cfg.attention == "block_causal":
        contexts = []  # block diffusion: its end-to-end rows vs AR only (no step rows yet)
    t0 = time.perf_counter()
    engine = Engine.from_config(cfg, device=device, dtype=dtype, max_batch_size=1,
                                max_seq_len=max(contexts + [1024]))
    print(f"[e2e] random {args.preset} built on {device} in {time.perf_counter() - t0:.1f} s",
          flush=True)
    results = out / "results.jsonl"

    def write(row: dict) -> None:  # each row as soon as it is measured (a timeout keeps it)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")

    step_rows = []
    for ctx in contexts:
        for r in time_steps(engine, batch=1, context=ctx, block_length=32):
            r.update(meta, bench="step", preset=args.preset)
            step_rows.append(r)
            write(r)
            print(f"[e2e] {r['kind']} ctx {ctx} ({r['timing']}): {r['step_ms_p50']:.2f} ms, "
                  f"floor {r['floor_ms']:.2f} ms ({r['floor_fraction']:.0%})", flush=True)
    with open(out / "table.md", "a", encoding="utf-8") as f:
        if step_rows:
            f.write("\n## Cached step vs floor (random weights)\n\nfloor: weight + KV bytes "
                    "over the copy bandwidth (the target's definition); compute floor: FLOPs "
                    "over a large matmul's rate\n\n| kind | context | timing | ms p50 | floor ms "
                    "| fraction | compute floor ms |\n|---|---|---|---|---|---|---|\n")
        for r in step_rows:
            f.write(f"| {r['kind']} | {r['context']} | {r['timing']} | {r['step_ms_p50']:.2f} | "
                    f"{r['floor_ms']:.2f} | {r['floor_fraction']:.2f} | "
                    f"{r['compute_floor_ms']:.2f} |\n")
    plan = default_plan(args.preset, device, quick=args.quick)
    rows = run_plan(plan, device=device, dtype=dtype, log=lambda s: print(s, flush=True),
                    model=engine.model, on_row=lambda r: write(dict(r, bench="e2e")))
    with open(out / "table.md", "a", encoding="utf-8") as f:
        f.write(f"\n## End to end ({args.preset})\n\n" + markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
