"""Kernel-launch counter (issue 12): launches per denoising step, per layer and outside the
layers, counted on the CPU.

Counting rule: every Triton launch plus every dispatched aten op that launches a device kernel.
Free (not counted): views / aliases, allocation-only ops and shape queries (FREE_OPS); a no-op
`.to()` / `.contiguous()` / copying-free `reshape` (composite ops are decomposed, so only the
copy they really make, `_to_copy` / `clone`, is seen); the Triton interpreter's own argument
copies inside a launch. Unknown ops count (conservative). Not visible on the CPU: extra cuBLAS
kernels (split-K reductions), the csrc control kernels, and launch choices keyed on the GPU's SM
count (the attention kernel's split-KV combine launches only when it splits, which on the CPU
happens only for B * H == 1).

Per layer / outside: the same step counted on a 1-layer and a 2-layer engine of one shape:
per_layer = count(2) - count(1), outside = count(1) - per_layer, per op and in total."""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..config import GenerationConfig, ModelConfig
from ..decoding import loop

# aten overload packets that launch no device kernel.
VIEW_OPS = frozenset({
    "aten.view", "aten._unsafe_view", "aten._reshape_alias", "aten.as_strided", "aten.t",
    "aten.transpose", "aten.permute", "aten.expand", "aten.slice", "aten.select",
    "aten.unsqueeze", "aten.squeeze", "aten.detach", "aten.detach_", "aten.alias",
    "aten.unbind", "aten.split", "aten.split_with_sizes", "aten.chunk", "aten.diagonal",
    "aten.narrow", "aten.unfold", "aten.view_as_real", "aten.view_as_complex", "aten.lift",
    "aten.numpy_T", "aten.movedim", "aten.unflatten", "aten.expand_as", "aten.view_as",
    "aten.t_", "aten.transpose_", "aten.unsqueeze_", "aten.squeeze_", "aten.as_strided_",
    "aten.real", "aten.imag"})
ALLOC_OPS = frozenset({
    "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty",
    "aten.new_empty_strided", "aten.empty_permuted", "aten.resize_", "aten.set_"})
SHAPE_OPS = frozenset({
    "aten.sym_size", "aten.sym_stride", "aten.sym_numel", "aten.sym_storage_offset",
    "aten.is_same_size", "aten.size", "aten.stride", "aten.numel", "aten.dim",
    "aten.is_contiguous", "aten.is_non_overlapping_and_dense", "aten.storage_offset",
    "prim.device", "prim.layout", "aten.result_type"})
FREE_OPS = VIEW_OPS | ALLOC_OPS | SHAPE_OPS


def is_free(op_name: str) -> bool:
    """True for an aten op (overload packet, e.g. "aten.view") that launches no device kernel."""
    return op_name in FREE_OPS


class LaunchCounter(TorchDispatchMode):
    """While active: `total` counts launches by name ("aten.add", or a Triton kernel's name);
    `region()` yields a Counter that also receives the launches made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.total: Counter = Counter()
        self._regions: list[Counter] = []
        self._launch_depth = 0

    def record(self, name: str) -> None:
        for c in (self.total, *self._regions):
            c[name] += 1

    @contextlib.contextmanager
    def region(self) -> Iterator[Counter]:
        c: Counter = Counter()
        self._regions.append(c)
        try:
            yield c
        finally:
            self._regions.remove(c)

    @contextlib.contextmanager
    def launch(self, kernel_name: str) -> Iterator[None]:
        """One Triton launch: counted once; aten ops inside it (interpreter copies) are not."""
        if self._launch_depth == 0:
            self.record(kernel_name)
        self._launch_depth += 1
        try:
            yield
        finally:
            self._launch_depth -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._launch_depth == 0:
            with self:  # composite ops: count the ops they decompose into (a real copy or none)
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            name = str(func.overloadpacket)
            if not is_free(name):
                self.record(name)
        return func(*args, **kwargs)


def _kernel_name(fn) -> str:
    fn = getattr(fn, "fn", fn)
    return getattr(fn, "__name__", repr(fn))


def _counted(counter: LaunchCounter, original):
    def counted(self, *args, **kwargs):
        if kwargs.get("warmup"):  # JITFunction.run(warmup=True) compiles, launches nothing
            return original(self, *args, **kwargs)
        with counter.launch(_kernel_name(self.fn)):
            return original(self, *args, **kwargs)
    return counted


@contextlib.contextmanager
def _triton_hooks(counter: LaunchCounter) -> Iterator[None]:
    """Count launches of interpreted (GridExecutor.__call__) and compiled (JITFunction.run)
    Triton kernels for the duration; restore the originals after."""
    try:
        from triton.runtime import interpreter, jit
    except ImportError:
        yield
        return
    targets = [(cls, name) for cls, name in ((getattr(interpreter, "GridExecutor", None),
                                              "__call__"), (jit.JITFunction, "run"))
               if cls is not None]
    saved = [(cls, name, cls.__dict__[name]) for cls, name in targets]
    for cls, name, original in saved:
        setattr(cls, name, _counted(counter, original))
    try:
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


@contextlib.contextmanager
def _counted_steps(counter: LaunchCounter, calls: list[Counter]) -> Iterator[None]:
    """Wrap the denoising step functions (fastdiff.decoding.loop.step and the block-diffusion
    loop's denoise_step, any signature): each call's launches go to `calls`."""
    from ..decoding import block_diffusion
    targets = [(loop, "step"), (block_diffusion, "denoise_step")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]

    def wrap(inner):
        def counted_step(*args, **kwargs):
            with counter.region() as c:
                out = inner(*args, **kwargs)
            calls.append(c)
            return out
        return counted_step

    for mod, name, inner in saved:
        setattr(mod, name, wrap(inner))
    try:
        yield
    finally:
        for mod, name, inner in saved:
            setattr(mod, name, inner)


def count_generate(engine, prompt: list[int],
                   gen: GenerationConfig) -> tuple[list[Counter], Counter]:
    """One eager `engine.generate(prompt, gen)` -> (launches of each denoising-step call in
    order, launches of the whole generate call), by launch name."""
    counter, calls = LaunchCounter(), []
    with _counted_steps(counter, calls), _triton_hooks(counter), counter:
        engine.generate(prompt, gen)
    return calls, counter.total


@dataclass(frozen=True)
class PhaseCount:
    """One phase of a step: launches per layer and outside the layers, by launch name."""

    per_layer: dict[str, int]
    outside: dict[str, int]

    @property
    def per_layer_total(self) -> int:
        return sum(self.per_layer.values())

    @property
    def outside_total(self) -> int:
        return sum(self.outside.values())


@dataclass(frozen=True)
class Report:
    """One cache mode. phases: "refresh" (the block's first step, a full forward) and "cached"
    (later steps; a full forward too with cache="none"). step_totals / generate_totals: launches
    of each step call / of the whole (counted, after-warm-up) generate, keyed by the engine's
    layer count (1, 2)."""

    cache: str
    phases: dict[str, PhaseCount]
    step_totals: dict[int, list[int]]
    generate_totals: dict[int, int]
    settings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name, p in self.phases.items():
            d["phases"][name].update(per_layer_total=p.per_layer_total,
                                     outside_total=p.outside_total)
        return d


def split_layers(one: Counter, two: Counter) -> PhaseCount:
    """Counts of one step at 1 and 2 layers -> per layer (2 - 1) and outside (1 - per layer)."""
    names = sorted(one | two, key=lambda k: (-(two[k] - one[k]), -one[k], k))
    per_layer = {k: two[k] - one[k] for k in names}
    outside = {k: one[k] - per_layer[k] for k in names}
    return PhaseCount({k: v for k, v in per_layer.items() if v},
                      {k: v for k, v in outside.items() if v})


def _by_phase(calls: list[Counter], steps_per_block: int,
              blockwise: bool = False) -> tuple[dict[str, Counter], list[str]]:
    """The first call of each phase (a block's first step is its refresh; block diffusion has
    one phase, "denoise": the block against the exact cache), and a note for each later call
    that differs from its phase's first."""
    first: dict[str, Counter] = {}
    notes = []
    for j, c in enumerate(calls):
        phase = "denoise" if blockwise else "refresh" if j % steps_per_block == 0 else "cached"
        if first.setdefault(phase, c) != c:
            notes.append(f"step call {j} ({phase}): {sum(c.values())} launches, the phase's "
                         f"first call {sum(first[phase].values())}")
    return first, notes


def _engines(config: ModelConfig, max_len: int, **options) -> dict[int, object]:
    from ..engine import Engine
    return {n: Engine.from_config(dataclasses.replace(config, n_layers=n), graphs=False,
                                  max_batch_size=1, max_seq_len=max_len, **options)
            for n in (1, 2)}


def _count_mode(engines: dict, prompt: list[int], gen: GenerationConfig, warmup: bool,
                settings: dict) -> Report:
    runs, firsts, notes = {}, {}, []
    for n, e in engines.items():
        first = [sum(c.values()) for c in count_generate(e, prompt, gen)[0]] if warmup else []
        runs[n] = count_generate(e, prompt, gen)
        if warmup and first != [sum(c.values()) for c in runs[n][0]]:
            notes.append(f"{n} layer(s): the first generate's steps launched {first} "
                         "(one-time work, not counted)")
        if not runs[n][0]:
            raise RuntimeError("no call of fastdiff.decoding.loop.step was seen: the loop must "
                               "call the module-level `step` (looked up at call time)")
        blockwise = gen.family == "sdar"
        firsts[n], n_notes = _by_phase(runs[n][0], gen.steps_per_block, blockwise)
        notes += [f"{n} layer(s): {t}" for t in n_notes]
    phases = {ph: split_layers(firsts[1][ph], firsts[2][ph]) for ph in firsts[1]}
    return Report("block" if gen.family == "sdar" else gen.cache, phases, {n: [sum(c.values()) for c in r[0]] for n, r in runs.items()},
                  {n: sum(r[1].values()) for n, r in runs.items()}, settings, tuple(notes))


def count_kernels(config: ModelConfig, caches: Sequence[str] = ("none", "prefix", "dual"), *,
                  backend: str = "triton", dtype: torch.dtype = torch.bfloat16,
                  device: str = "cpu", prompt_len: int = 40, gen_length: int = 32,
                  steps: int = 2, warmup: bool = True,
                  stop_at_eos: bool = False) -> list[Report]:
    """Launches per denoising step of one block (batch 1, gen_length == block_length, fixed
    schedule of `steps` steps), per layer and outside the layers, for each cache mode. The
    config's n_layers is ignored: engines of 1 and 2 layers of its shape serve every mode.
    warmup: count a second generate of each mode, so one-time work (lazy tables, the KV store)
    is left out; a note says where the first generate's steps differed. stop_at_eos adds the
    early-stop test to every step."""
    engines = _engines(config, prompt_len + gen_length, device=device, dtype=dtype,
                       backend=backend)
    ids = torch.randint(0, config.vocab_size, (prompt_len,),
                        generator=torch.Generator().manual_seed(0)).tolist()
    prompt = [t if t != config.mask_token_id else 0 for t in ids]
    shape = {k: getattr(config, k) for k in ("d_model", "n_heads", "n_kv_heads", "head_dim",
                                             "mlp_hidden_size", "vocab_size")}
    settings = dict(backend=backend, dtype=str(dtype).replace("torch.", ""), device=str(device),
                    batch=1, prompt_len=prompt_len, gen_length=gen_length, steps=steps,
                    warmup=warmup, stop_at_eos=stop_at_eos, **shape)
    if config.attention == "block_causal":  # one mode: the exact block cache
        gen = GenerationConfig(gen_length=gen_length, block_length=config.block_size or 4,
                               denoising_steps=steps, seed=0, stop_at_eos=stop_at_eos)
        return [_count_mode(engines, prompt, gen.resolve("sdar", block_size=config.block_size),
                            warmup, dict(settings, cache="block"))]
    return [_count_mode(engines, prompt, GenerationConfig(
        gen_length=gen_length, block_length=gen_length, steps=steps, cache=cache, seed=0,
        stop_at_eos=stop_at_eos).resolve(config.family),
        warmup, settings) for cache in caches]


def count_step_kernels(config: ModelConfig, *, cache: str = "dual", backend: str = "triton",
                       dtype: torch.dtype = torch.bfloat16, **kwargs) -> Report:
    """count_kernels for one cache mode: e.g. `r.phases["cached"].per_layer_total <= 10`."""
    return count_kernels(config, (cache,), backend=backend, dtype=dtype, **kwargs)[0]


def shape_faithful(config: ModelConfig, vocab: int = 4096) -> tuple[ModelConfig, str]:
    """A narrow model launching the same kernels per step as `config` (on the CPU): head_dim,
    the GQA ratio and the MLP ratio kept, B * H >= 2 (no attention split), >= 4 vocab tiles;
    d_model, heads, MLP width and vocabulary shrunk (MASK / EOS ids moved into the vocabulary)."""
    r, hd = config.n_heads // config.n_kv_heads, config.head_dim
    n_kv = 1 if r > 1 else 2
    d = r * n_kv * hd
    v = min(vocab, config.vocab_size)
    small = dataclasses.replace(
        config, d_model=d, n_heads=r * n_kv, n_kv_heads=n_kv,
        mlp_hidden_size=config.mlp_hidden_size * d // config.d_model, vocab_size=v,
        embedding_size=v + config.embedding_size - config.vocab_size, mask_token_id=v - 4,
        eos_token_id=v - 7, pad_token_id=v - 7 if config.pad_token_id == config.eos_token_id
        else v - 8)
    note = (f"shape-faithful shallow model: d_model {config.d_model}->{d}, n_heads "
            f"{config.n_heads}->{small.n_heads}, n_kv_heads {config.n_kv_heads}->{n_kv} "
            f"(head_dim {hd} kept), mlp {config.mlp_hidden_size}->{small.mlp_hidden_size}, vocab "
            f"{config.vocab_size}->{v} (MASK/EOS ids remapped); which kernels launch does not "
            f"depend on these widths")
    return small, note
