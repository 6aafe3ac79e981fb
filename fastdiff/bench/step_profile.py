"""Per-kernel profile of one denoising step (issue 12): one dual-cached step and one refresh step
(batch 1, block 32) of an engine with random weights, under torch.profiler; each kernel against
its floor, and the step's kernel count next to the CPU-side count (fastdiff.bench.kernel_count).

  python -m fastdiff.bench.step_profile [--contexts 1024,4096] [--out DIR]     on a CUDA GPU
  python -m fastdiff.bench.step_profile --preset tiny --device cpu --backend torch --contexts 96

Floors: bytes the op must move / the device copy bandwidth measured in the same run (GEMMs:
weights + activations; attention: the K/V it reads + q + out; LM head: the head weight;
elementwise ops: their tensor inputs + outputs, APPROXIMATE); GEMMs, attention and the LM head
also FLOPs / the matmul rate measured in the same run, the larger of the two. An op's floor goes
to its longest kernel; its other kernels (split-K reduce, combine) show "aux". On a CPU the
profiler sees aten ops only: they stand in for kernels, labelled "cpu (aten ops, not GPU
kernels)". Appends rows (kind "step_profile") to OUT/results.jsonl and a section to OUT/table.md;
the full per-kernel tables go to stdout."""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ..config import GenerationConfig, ModelConfig
from ..decoding import loop
from ..decoding.cache import CACHED, REFRESH
from ..decoding.state import DecodeState
from . import env
from .profile_tables import CPU_LABEL, OP_GROUPS, analyse, groups_md, kernels_md, summary_md
from .runner import step_floor_ms

PHASES = (("dual_cached_step", CACHED, 1), ("refresh_step", REFRESH, 0))  # (name, phase, i)


def _nbytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(t) for t in x)
    return 0


def op_cost(name: str, args: tuple, out) -> tuple[int, int]:
    """(bytes the op must move, FLOPs) from shapes alone (no device reads); ops without a rule
    (or whose arguments do not fit it): tensor arguments + outputs, no FLOPs."""
    try:
        if name == "attention":  # q [B, Sq, H, D], k/v [B, Skv, Hkv, D] (views of the store)
            B, Sq, H, D = args[0].shape
            return _nbytes(args[:3]) + _nbytes(out), 4 * B * Sq * args[1].shape[1] * H * D
        if name == "rope_kv":  # qkv [.., (H + 2 Hkv) D] -> q [.., H, D]; K/V rows; cos/sin rows
            qkv, k_dest = args[0], args[5]
            T = qkv.numel() // qkv.shape[-1]
            kv = T * (qkv.shape[-1] - out.shape[-2] * out.shape[-1]) * k_dest.element_size()
            return _nbytes(qkv) + _nbytes(out) + kv + T * (12 + 4 * out.shape[-1]), 0
        if name == "lm_head_confidence":  # hidden [B, S, d], row_map [B, Lb], W [V, d]
            row_map, w = args[1], args[2]
            return _nbytes(args[:3]) + _nbytes(out), 2 * row_map.numel() * w.shape[0] * w.shape[1]
    except (IndexError, ValueError, AttributeError, TypeError):
        pass
    return _nbytes(args) + _nbytes(out), 0


class OpLedger:
    """An ops backend seen through the profiler: each call runs as "fastdiff::<op>" and adds
    (calls, bytes, FLOPs) to cost[group]."""

    def __init__(self, ops) -> None:
        self._ops = ops
        self.cost: dict[str, list] = {}

    def __getattr__(self, name: str):
        attr = getattr(self._ops, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            with record_function(f"fastdiff::{name}"):
                out = attr(*args, **kwargs)
            c = self.cost.setdefault(OP_GROUPS.get(name, name), [0, 0, 0])
            for j, v in enumerate((1, *op_cost(name, args, out))):
                c[j] += v
            return out
        return call


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of one square matmul in `dtype` (8192 on CUDA, 256 on a CPU)."""
    n = 8192 if device.type == "cuda" else 256
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n ** 3 / env.median(env.timed(lambda: a @ b, device, warmup=2, repeats=5))


def _setup(engine, context: int, block_length: int):
    """A dual-cache generation of 2 blocks ending at `context`, batch 1 (as step_bench)."""
    cfg, gen_length = engine.config, 2 * block_length
    if context <= gen_length:
        raise ValueError(f"context {context} must exceed two blocks ({gen_length} tokens)")
    ids = torch.randint(0, cfg.vocab_size, (context - gen_length,),
                        generator=torch.Generator().manual_seed(0))
    prompt = torch.where(ids == cfg.mask_token_id, 0, ids).tolist()
    req = engine._request(GenerationConfig(gen_length=gen_length, block_length=block_length,
                                           steps=gen_length, cache="dual"))
    state = DecodeState.from_prompts([prompt], gen_length, mask_id=cfg.mask_token_id,
                                     pad_id=cfg.pad_token_id, seeds=[0],
                                     device=engine.model.device)
    req.policy.bind(state)
    return state, req


def profile_phase(engine, state, req, phase: int, i: int, warmup: int = 2):
    """Profile one step of the last block (cache filled by a refresh first) -> (profiler
    events, op ledger of that step). The profiler's first window is a discarded warm-up."""
    ledger, dev = OpLedger(engine.ops), engine.model.device
    model = engine.model.with_ops(ledger)
    x0 = state.x.clone()

    def once():
        loop.step(model, ledger, state, req, phase, 1, i)
    loop.step(model, ledger, state, req, REFRESH, 1, 0)  # fill the KV cache
    if i > 0:  # step i starts from the canvas step 0 left (the rule's live-MASK bound holds)
        x0 = state.x.clone()
    for _ in range(warmup):
        state.x.copy_(x0)
        once()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sched = torch.profiler.schedule(wait=0, warmup=1, active=1, repeat=1)
    with profile(activities=acts, record_shapes=True, schedule=sched) as prof:
        state.x.copy_(x0)
        env.sync(dev)
        prof.step()  # the warm-up window ends; the next one is the step alone
        ledger.cost.clear()
        once()
        env.sync(dev)
        prof.step()
    return list(prof.events()), ledger.cost


def cpu_count(config: ModelConfig, *, context: int, block_length: int, backend: str,
              dtype: torch.dtype, device: torch.device) -> dict:
    """The CPU-side count of the same steps (fastdiff.bench.kernel_count: host-side launches,
    per layer and outside, from 1- and 2-layer engines of this shape on `device`) -> {step name:
    {step, per_layer, outside}}; step = outside + n_layers * per_layer."""
    from .kernel_count import count_step_kernels
    r = count_step_kernels(config, cache="dual", backend=backend, dtype=dtype, device=str(device),
                           prompt_len=context - block_length, gen_length=block_length, steps=2)
    return {name: dict(step=p.outside_total + config.n_layers * p.per_layer_total,
                       per_layer=p.per_layer_total, outside=p.outside_total)
            for name, p in (("dual_cached_step", r.phases["cached"]),
                            ("refresh_step", r.phases["refresh"]))}


def _header(meta: dict, args, dtype: torch.dtype, backend: str, bandwidth: float,
            flop_rate: float, activity: str) -> str:
    return (f"\n### step profile: {args.preset} (random weights, {str(dtype)[6:]}, {backend}), "
            f"batch 1, block {args.block_length}, dual cache, on {meta['device_name']}\n\n"
            f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, commit "
            f"{meta['git_commit']}. One step each, profiled with torch.profiler ({activity}). "
            f"Copy bandwidth {bandwidth / 1e9:.0f} GB/s and matmul {flop_rate / 1e12:.3g} TFLOP/s, "
            "both measured in this run. Floors: bytes moved / copy bandwidth (GEMMs, attention, "
            "LM head: the larger of that and FLOPs / matmul rate); \"~\": elementwise bytes = "
            "tensor inputs + outputs, approximate. Kernels (profiler): device kernels of the step, "
            "memcpy / memset apart; CPU count: fastdiff.bench.kernel_count (host-side launches, "
            "outside + n_layers x per layer); step floor: weights + K/V read "
            "(runner.step_floor_ms).\n\n")


def profile_context(engine, args, ctx: int, meta: dict, bandwidth: float,
                    flop_rate: float) -> list[dict]:
    """Rows (dual-cached step, refresh step) at one context."""
    cfg, dev = engine.config, engine.model.device
    cuda = dev.type == "cuda"
    rows = []
    with torch.inference_mode():
        state, req = _setup(engine, ctx, args.block_length)
        for name, phase, i in PHASES:
            events, costs = profile_phase(engine, state, req, phase, i, args.warmup)
            fed = args.block_length if phase == CACHED else ctx
            a = analyse(events, costs, cuda=cuda, cfg=cfg, elem=engine.model.dtype.itemsize,
                        tokens_fed=fed, bandwidth=bandwidth, flop_rate=flop_rate)
            floor_us = 1e3 * step_floor_ms(engine.model, ctx if phase == CACHED else 0, bandwidth)
            metrics = {k: v for k, v in a.items() if k not in ("groups", "kernel_table")}
            metrics.update(step_floor_us=floor_us, floor_fraction_busy=floor_us / a["busy_us"]
                           if a["busy_us"] else None, copy_bandwidth_gbs=bandwidth / 1e9,
                           matmul_tflops=flop_rate / 1e12)
            config = dict(preset=args.preset, phase=name, context=ctx, batch=1,
                          block_length=args.block_length, tokens_fed=fed, cache="dual",
                          n_layers=cfg.n_layers, dtype=str(engine.model.dtype)[6:],
                          backend=engine.backend, random_weights=True,
                          activity="cuda kernels" if cuda else CPU_LABEL)
            rows.append({**meta, "bench": "step_profile", "kind": "step_profile",
                         "impl": engine.backend, "config": config, "metrics": metrics,
                         "groups": a["groups"], "kernels": a["kernel_table"]})
        del state, req
    return rows


def run(args) -> int:
    t0 = time.perf_counter()
    from ..engine import Engine, resolve_options
    dev, dtype, backend, _ = resolve_options(args.device, args.dtype, args.backend, False)
    if dev.type == "cpu" and backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("--backend triton on a CPU needs TRITON_INTERPRET=1 in the environment; "
                         "use --backend torch")
    cfg = ModelConfig.preset(args.preset)
    if dev.type == "cpu" and cfg.d_model >= 2048:
        raise ValueError(f"preset {args.preset} is {cfg.d_model} wide: profile it on a CUDA GPU "
                         "(8B shapes are never built on a CPU); use --preset tiny on a CPU")
    contexts = [int(c) for c in args.contexts.split(",")]
    if max(contexts) > cfg.max_sequence_length:
        raise ValueError(f"context {max(contexts)} exceeds the preset's max_sequence_length "
                         f"{cfg.max_sequence_length}")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    meta = env.environment(dev)
    bandwidth, flop_rate = env.copy_bandwidth(dev), matmul_rate(dev, dtype)
    engine = Engine.from_config(cfg, device=dev, dtype=dtype, backend=backend, graphs=False,
                                max_batch_size=1, max_seq_len=max(contexts))
    env.sync(dev)
    print(f"[step_profile] random {args.preset} ({backend}, {dtype}) built on "
          f"{meta['device_name']} at t={time.perf_counter() - t0:.1f} s", flush=True)
    activity = "CUDA kernel events" if dev.type == "cuda" else CPU_LABEL
    header = _header(meta, args, dtype, backend, bandwidth, flop_rate, activity)
    print(header, flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "table.md", "a", encoding="utf-8") as f:
            f.write(header)
    failed, per_ctx = False, 0.0
    for j, ctx in enumerate(contexts):
        t_ctx = time.perf_counter()
        if j and t_ctx - t0 + per_ctx > args.budget_s:  # rows so far are written already
            print(f"[step_profile] context {ctx} skipped: {t_ctx - t0:.0f} s used of the "
                  f"{args.budget_s:.0f} s budget, the last context took {per_ctx:.0f} s",
                  flush=True)
            continue
        rows = profile_context(engine, args, ctx, meta, bandwidth, flop_rate)
        counts, error = {}, None if not args.no_cpu_count else "off"
        if not args.no_cpu_count:  # after the profile: a failure here cannot spoil it
            try:
                counts = cpu_count(cfg, context=ctx, block_length=args.block_length,
                                   backend=backend, dtype=dtype, device=dev)
            except Exception as e:  # the profile stands without the count
                error, failed = f"{type(e).__name__}: {e}"[:300], True
                traceback.print_exc()
                print(f"[step_profile] CPU-side count failed: {error}", flush=True)
        for r in rows:
            c = counts.get(r["config"]["phase"], {})
            r["metrics"].update(cpu_count_step=c.get("step"), cpu_count_per_layer=c.get(
                "per_layer"), cpu_count_outside=c.get("outside"), cpu_count_error=error)
        section = summary_md(rows) + "".join(groups_md(r) for r in rows)
        print(section + "".join(kernels_md(r) for r in rows), flush=True)
        if out is not None:
            with open(out / "results.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            with open(out / "table.md", "a", encoding="utf-8") as f:
                f.write(section)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        per_ctx = time.perf_counter() - t_ctx
        print(f"[step_profile] context {ctx} done in {per_ctx:.1f} s "
              f"(t={time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastdiff.bench.step_profile",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llada-8b")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--contexts", default="1024", help="comma-separated, e.g. 1024,4096")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2, help="steps run before the profiled one")
    ap.add_argument("--out", type=Path, help="append results.jsonl / table.md here "
                    "(default: $OUT when set)")
    ap.add_argument("--budget-s", type=float, default=50.0,
                    help="a later context is skipped when it would likely end past this")
    ap.add_argument("--no-cpu-count", action="store_true",
                    help="skip the CPU-side count (fastdiff.bench.kernel_count)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except Exception as e:
        traceback.print_exc()
        print(f"[step_profile] FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
