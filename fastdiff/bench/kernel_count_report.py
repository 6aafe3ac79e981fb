"""`fastdiff bench --count-kernels`: the kernel-launch counter's report (markdown + JSON)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..config import ModelConfig
from .kernel_count import Report, count_kernels, shape_faithful

PER_LAYER_BUDGET, OUTSIDE_BUDGET = 10, 12  # issue 12
NARROW_ABOVE = 1024  # d_model above which the CLI counts on shape_faithful(preset)


def format_reports(reports: list[Report], header: list[str], n_layers: int) -> str:
    """Markdown: a summary table (per layer, outside, step at n_layers) and per-op breakdowns."""
    lines = header + ["", f"| cache | phase | per layer | outside | step at {n_layers} layers "
                      "| step (1 / 2 layers) | generate (1 / 2 layers) |", "|---" * 7 + "|"]
    for r in reports:
        for ph, p in r.phases.items():
            i = 0 if ph == "refresh" else 1
            lines.append(f"| {r.cache} | {ph} | {p.per_layer_total} | {p.outside_total} | "
                         f"{p.outside_total + n_layers * p.per_layer_total} | "
                         f"{r.step_totals[1][i]} / {r.step_totals[2][i]} | "
                         f"{r.generate_totals[1]} / {r.generate_totals[2]} |")
    for r in reports:
        for ph, p in r.phases.items():
            lines += ["", f"### cache={r.cache}, {ph} step", "", "| launch | per layer | outside |",
                      "|---|---|---|"]
            for k in dict.fromkeys([*p.per_layer, *p.outside]):
                lines.append(f"| {k} | {p.per_layer.get(k, 0)} | {p.outside.get(k, 0)} |")
        lines += [f"- note: {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _ensure_interpreter() -> None:
    """Triton on the CPU runs under the interpreter, which must be on before kernels import."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if "fastdiff.kernels" in sys.modules:
        raise ValueError("counting on the CPU needs TRITON_INTERPRET=1 set before the Triton "
                         "kernels are imported; set it in the environment")
    os.environ["TRITON_INTERPRET"] = "1"


def run_cli(args) -> int:
    """`fastdiff bench --count-kernels`: print the markdown report, write --json if given."""
    from ..engine import resolve_device, resolve_dtype
    from . import env
    device = resolve_device(args.device)
    dtype = resolve_dtype("bfloat16" if args.dtype == "auto" else args.dtype, device)
    if device.type == "cpu" and args.backend == "triton":
        _ensure_interpreter()
    preset = ModelConfig.preset(args.preset)
    narrow = not args.full_width and preset.d_model > NARROW_ABOVE
    config, note = shape_faithful(preset) if narrow else (preset, "full-width model")
    caches = tuple(args.caches.split(",")) if args.caches else ("none", "prefix", "dual")
    t0 = time.perf_counter()
    reports = count_kernels(config, caches, backend=args.backend, dtype=dtype,
                            device=str(device), steps=args.count_steps)
    secs = time.perf_counter() - t0
    s = reports[0].settings
    header = ["# Kernel launches per denoising step", "",
              f"preset {args.preset} ({preset.n_layers} layers), {s['backend']} backend, "
              f"{s['dtype']}, {device.type}; batch 1, prompt {s['prompt_len']}, gen_length = "
              f"block_length = {s['gen_length']}, {s['steps']} steps (fixed schedule); counted "
              f"in {secs:.0f} s", "", note, "",
              "phases: refresh = the block's first step (a full forward; fills the cache); cached "
              "= later steps (block + suffix with prefix, the block with dual, a full forward "
              "with none). per layer = step(2 layers) - step(1 layer); outside = step(1 layer) - "
              "per layer.", "",
              f"budget (issue 12): <= {PER_LAYER_BUDGET} per layer, <= {OUTSIDE_BUDGET} outside "
              "the layers. Not visible on the CPU: extra cuBLAS kernels (split-K), csrc control "
              "kernels, SM-count-dependent splits (attention split-KV combine on the GPU)."]
    print(format_reports(reports, header, preset.n_layers), end="")
    if args.json:
        out = dict(environment=env.environment(device), preset=args.preset, note=note,
                   budget=dict(per_layer=PER_LAYER_BUDGET, outside=OUTSIDE_BUDGET),
                   seconds=round(secs, 1), reports=[r.to_dict() for r in reports])
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"[count-kernels] wrote {args.json}", file=sys.stderr)
    return 0
