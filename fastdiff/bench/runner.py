"""End-to-end scenarios: fastdiff modes and the baselines, measured the same way in one run.

tokens/s = batch x gen_length / wall time of one generate call (after warm-up, device
synchronized, no tokenization: prompts are token ids)."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from .. import Engine, GenerationConfig, ModelConfig
from ..ops import get_ops
from . import env
from .baselines import ARBaseline, HFLlamaBaseline, ReferenceLoop, llama_shape_for


@dataclass(frozen=True)
class Scenario:
    batch: int
    prompt_len: int
    gen_length: int
    block_length: int
    tokens_per_step: Optional[int]  # fixed schedule; None with a threshold
    threshold: Optional[float] = None
    systems: Optional[tuple[str, ...]] = None  # None: the plan's systems

    @property
    def steps(self) -> int:
        return self.gen_length // (self.tokens_per_step or 1)

    @property
    def schedule(self) -> str:
        return f"threshold {self.threshold}" if self.threshold else f"{self.tokens_per_step} tok/step"


@dataclass
class Plan:
    preset: str
    scenarios: list[Scenario]
    caches: tuple[str, ...] = ("none", "prefix", "dual")
    backends: tuple[str, ...] = ("torch",)
    systems: tuple[str, ...] = ("fastdiff", "reference_loop", "ar_static_cache", "hf_llama")
    warmup: int = 1
    repeats: int = 3
    extra: dict = field(default_factory=dict)
    # CUDA: the graph modes of the fastdiff rows (False: eager, True: the default WHILE loop,
    # "replay": host replay of the step graphs, the WHILE loop's comparison)
    graph_modes: tuple = (False, True)


def default_plan(preset: str, device: torch.device, quick: bool = False) -> Plan:
    """tiny: the CI smoke grid; small: the CPU cache measurement; llada-8b: the GPU grid;
    dream-*: one Dream row (fastdiff, no cache and dual, the GPU default backend); sdar-*:
    block diffusion at block 4 and 16 against the AR baseline."""
    if preset == "tiny":
        grid = [Scenario(b, 16, 32, 8, t) for b in (1, 2) for t in (1, 4)]
        grid += [Scenario(b, 16, 32, 8, None, 0.9) for b in (1, 2)]
        return Plan(preset, grid, warmup=1, repeats=1)  # a smoke test: no timing claims
    if preset == "small":
        grid = [Scenario(1, 128, 256, 32, 4), Scenario(1, 128, 256, 32, None, 0.9),
                Scenario(1, 128, 256, 32, 1)]
        return Plan(preset, grid, warmup=1, repeats=3)
    backends = ("torch", "triton") if device.type == "cuda" else ("torch",)
    if preset.startswith("sdar"):  # block diffusion: tokens per forward forced by the
        # schedule (block B, B / tokens_per_step denoising steps, no stop: random weights say
        # nothing about the dynamic rule's parallelism), and the AR baseline of the same size
        grid = [Scenario(1, 128, 256, 4, 4), Scenario(1, 128, 256, 16, 8),
                Scenario(1, 128, 256, 4, 1)]
        return Plan(preset, grid, caches=("none",), backends=backends[-1:],
                    systems=("fastdiff", "ar_static_cache"), warmup=1, repeats=2)
    if preset.startswith("dream"):  # a second family's row: fastdiff only (the baselines are
        # LLaDA's reference loop and a Llama-shaped AR model), no cache vs dual, 4 tok/step
        grid = [Scenario(1, 128, 256, 32, 4)]
        return Plan(preset, grid, caches=("none", "dual"), backends=backends[-1:],
                    systems=("fastdiff",), warmup=1, repeats=2)
    if quick:  # the GPU validation's targets in little time: fastdiff (the GPU default
        # backend, WHILE loop vs host replay vs eager) at 4 and 8 tokens per forward; the
        # reference loop and the AR baseline at 1 token per step (no fastdiff rows there)
        base = ("reference_loop", "ar_static_cache")
        grid = [Scenario(1, 128, 256, 32, 4), Scenario(1, 128, 256, 32, 8),
                Scenario(1, 128, 256, 32, 1, systems=base)]
        return Plan(preset, grid, caches=("none", "dual"), backends=backends[-1:], warmup=1,
                    repeats=2, graph_modes=(False, True, "replay"))
    grid = [Scenario(b, 128, 256, 32, t) for b in (1, 4, 16) for t in (1, 2, 4, 8)]
    grid += [Scenario(b, 128, 256, 32, None, 0.9) for b in (1, 4, 16)]
    grid += [Scenario(1, 1024, 1024, 32, 4)]
    return Plan(preset, grid, backends=backends, warmup=1, repeats=3)


def _prompts(s: Scenario, vocab: int, mask_id: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234 + s.prompt_len)
    ids = torch.randint(0, vocab, (s.batch, s.prompt_len), generator=g)
    return torch.where(ids == mask_id, 0, ids).to(device)


class _FedCounter:
    """Counts tokens fed to the model per forward (wraps model.forward on the instance)."""

    def __init__(self, model) -> None:
        self.model, self.tokens, self.calls = model, 0, 0
        self._orig = model.forward

    def __enter__(self):
        def counting(input_ids, *a, **k):
            self.tokens += input_ids.numel()
            self.calls += 1
            return self._orig(input_ids, *a, **k)
        self.model.forward = counting
        return self

    def __exit__(self, *exc):
        del self.model.forward


def step_floor_ms(model, kv_tokens: float, bandwidth: float) -> float:
    """Bytes a forward must read (all weights + the K/V it attends to) over the copy bandwidth."""
    cfg = model.config
    weight_bytes = sum(t.numel() * t.element_size() for t in
                       [model.wte[:1], model.ln_f, model.lm_head] +
                       [w for layer in model.layers for w in layer.tensors()])
    kv_bytes = kv_tokens * 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * model.wte.element_size()
    return 1e3 * (weight_bytes + kv_bytes) / bandwidth


def run_plan(plan: Plan, *, device: torch.device, dtype: torch.dtype, seed: int = 0,
             log=print, model=None, on_row=None) -> list[dict]:
    """Measure every (scenario, system, mode) of the plan -> rows (with speedups). model: the
    preset's model when the caller built it already (random weights of `seed`); on_row(row):
    called with each row as soon as it is measured (before the speedups), so a run cut short
    by a timeout keeps what it measured."""
    cfg = ModelConfig.preset(plan.preset)
    meta = env.environment(device)
    bandwidth = env.copy_bandwidth(device)
    log(f"[bench] {plan.preset} on {meta['device_name']}: copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s; random weights (seed {seed})")
    max_b = max(s.batch for s in plan.scenarios)
    max_len = max(s.prompt_len + s.gen_length for s in plan.scenarios)
    graph_modes = plan.graph_modes if device.type == "cuda" else (False,)
    if model is None:
        model = Engine.from_config(cfg, seed=seed, device=device, dtype=dtype,
                                   backend=plan.backends[0], graphs=False).model
    engines = {}  # (backend, graph mode) -> Engine sharing one set of weights
    for be, graphs in itertools.product(plan.backends, graph_modes):
        eng = Engine(model.with_ops(get_ops(be)), None, backend=be, graphs=bool(graphs),
                     max_batch_size=max_b, max_seq_len=max_len)
        if graphs == "replay":
            from ..decoding.graphs import GraphCache
            eng._graph_cache = GraphCache(eng.model, eng.ops, cfg.pad_token_id, mode="replay")
        engines[be, graphs] = eng
    rows = []
    for s in plan.scenarios:
        for system, mode, call in _systems(plan, s, engines, model, device, dtype):
            try:
                row = _measure(system, mode, call, s, plan, model, device, bandwidth, log)
            except Exception as e:  # noqa: BLE001 (one failing row must not lose the others)
                log(f"[bench] {system} {mode} {s.schedule}: FAILED {type(e).__name__}: {e}")
                row = dict(system=system, mode=mode, error=f"{type(e).__name__}: {e}")
            row.update(meta, preset=plan.preset, random_weights=True, seed=seed,
                       dtype=str(dtype).replace("torch.", ""), **asdict(s),
                       schedule=s.schedule, steps=s.steps if s.tokens_per_step else None)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return add_speedups(rows)


def _systems(plan: Plan, s: Scenario, engines: dict, model, device, dtype):
    """(system, mode, fn(prompts) -> (tokens, nfe list, fed counter or None)) for a scenario."""
    blockwise = model.config.attention == "block_causal"
    systems = s.systems if s.systems is not None else plan.systems
    for (be, graphs), cache in itertools.product(engines, plan.caches):
        if "fastdiff" not in systems:
            break
        if blockwise and graphs:
            continue  # the block-diffusion loop runs eagerly (no graph rows to report)
        if blockwise:  # the schedule forces tokens per step; no stop (random weights)
            gen = GenerationConfig(gen_length=s.gen_length, block_length=s.block_length,
                                   denoising_steps=s.block_length // (s.tokens_per_step or 1),
                                   stop_at_eos=False)
        else:
            gen = GenerationConfig(gen_length=s.gen_length, block_length=s.block_length,
                                   steps=s.steps if s.tokens_per_step else s.gen_length,
                                   threshold=s.threshold, cache=cache)
        eng = engines[be, graphs]

        def call(prompts, eng=eng, gen=gen):
            with _FedCounter(eng.model) as fed:
                out = eng.generate(prompts.tolist(), gen)
            return [c.nfe for c in out], fed
        yield "fastdiff", {"backend": be, "cache": cache, "graphs": graphs}, call
    if "reference_loop" in systems and s.tokens_per_step is not None:
        ref = ReferenceLoop(model)

        def call(prompts):
            with _FedCounter(model) as fed:
                _, nfe = ref.generate(prompts, gen_length=s.gen_length, steps=s.steps,
                                      block_length=s.block_length)
            return [nfe] * prompts.shape[0], fed
        yield "reference_loop", {"backend": "torch eager", "cache": "none"}, call
    if "ar_static_cache" in systems and s.tokens_per_step in (1, None) and s.threshold is None:
        ar = ARBaseline(model)

        def call(prompts):
            _, nfe = ar.generate(prompts, gen_length=s.gen_length)
            call.compile_s = ar.capture_s  # CUDA graph capture, timed apart (first call)
            return [nfe] * prompts.shape[0], None
        yield "ar_static_cache", {"backend": "torch", "graphs": ar.use_graph}, call
    if "hf_llama" in systems and s.tokens_per_step == 1:
        try:
            hf = HFLlamaBaseline(llama_shape_for(model.config), device=device, dtype=dtype)
        except ImportError:
            return

        def call(prompts):
            _, nfe = hf.generate(prompts, gen_length=s.gen_length)
            return [nfe] * prompts.shape[0], None
        yield "hf_llama_generate", {"shape": "llama-3-8b" if model.config.d_model == 4096
                                    else "preset", "torch_compile": False}, call


def _measure(system, mode, call, s: Scenario, plan: Plan, model, device, bandwidth, log):
    prompts = _prompts(s, model.config.vocab_size, model.config.mask_token_id, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {}

    def once():
        result["nfe"], result["fed"] = call(prompts)

    times = env.timed(once, device, warmup=plan.warmup, repeats=plan.repeats)
    nfe = sum(result["nfe"]) / len(result["nfe"])
    blockwise = model.config.attention == "block_causal" and system == "fastdiff"
    expected = s.gen_length if system in ("ar_static_cache", "hf_llama_generate") else (
        s.steps if s.tokens_per_step and not blockwise else None)
    fed = result["fed"]
    fed_per_forward = fed.tokens / fed.calls / s.batch if fed and fed.calls else None
    p50 = env.median(times)
    per_fwd_ms = 1e3 * p50 / max(nfe, 1)
    kv_tokens = s.prompt_len + s.gen_length if mode.get("cache") in ("prefix", "dual") else 0
    floor = step_floor_ms(model, kv_tokens * s.batch, bandwidth)
    row = dict(system=system, mode=mode, nfe=nfe, nfe_expected=expected,
               nfe_note=None if expected is not None else (
                   "block diffusion: denoising + store + prefill forwards" if blockwise
                   else "threshold: nfe of random weights"),
               tokens_per_s=s.batch * s.gen_length / p50, latency_p50_s=p50,
               latency_p90_s=env.percentile(times, 0.9), repeats=len(times),
               time_per_forward_ms=per_fwd_ms, tokens_fed_per_forward=fed_per_forward,
               step_floor_ms=floor, floor_fraction=floor / per_fwd_ms,
               copy_bandwidth_gbs=bandwidth / 1e9,
               peak_mem_gb=torch.cuda.max_memory_allocated(device) / 1e9
               if device.type == "cuda" else None, compile_s=getattr(call, "compile_s", 0.0))
    log(f"[bench] {system:18s} {str(mode):55s} {s.schedule:14s} b{s.batch}: "
        f"{row['tokens_per_s']:9.1f} tok/s  nfe {nfe:6.1f}  p50 {p50 * 1e3:8.1f} ms")
    return row


def add_speedups(rows: list[dict]) -> list[dict]:
    """Ratios to (b) at the same schedule and at (b)'s default 1 token/step, and to (c)."""
    def key(r):
        return tuple(r.get(k) for k in ("preset", "batch", "prompt_len", "gen_length",
                                        "block_length"))
    ok = [r for r in rows if "error" not in r and "tokens_per_s" in r]
    ref = {(key(r), r.get("schedule")): r["tokens_per_s"] for r in ok
           if r["system"] == "reference_loop"}
    def ar_key(r):  # an AR model has no blocks
        return key(r)[:4]
    ar = {ar_key(r): r["tokens_per_s"] for r in ok if r["system"] == "ar_static_cache"}
    for r in ok:
        same = ref.get((key(r), r.get("schedule")))
        one = ref.get((key(r), "1 tok/step"))
        a = ar.get(ar_key(r))
        r["speedup_vs_reference_same_schedule"] = r["tokens_per_s"] / same if same else None
        r["speedup_vs_reference_1tok"] = r["tokens_per_s"] / one if one else None
        r["speedup_vs_ar"] = r["tokens_per_s"] / a if a else None
    return rows
