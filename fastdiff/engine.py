"""Engine: owns the model, tokenizer and ops backend; turns prompts into Completions."""
from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from .config import GenerationConfig, ModelConfig
from .decoding.cache import KVStore, make_strategy
from .decoding.loop import Request, denoise
from .decoding.policies import Scorer, make_policy
from .decoding.state import DecodeState
from .models.transformer import DLLMModel
from .models.loader import load_checkpoint
from .models.tokenizer import Tokenizer
from .ops import get_ops

Prompt = Union[str, Sequence[int], Sequence[dict]]
KV_LENGTH_BUCKET = 256  # the KV store's length grows in multiples of this
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class Completion:
    """One prompt's result. token_ids: generated ids cut before the first stop id (EOS/EoT, and
    for block diffusion the checkpoint's stop ids) and at gen_length; full_ids: all gen_length
    positions as denoised (block diffusion: the row's generated region up to the end of its last
    decoded block, possibly longer than gen_length); text: token_ids decoded without specials
    (None without a tokenizer); finish_reason: "eos" if a stop id was generated before the
    cut, else "length"; nfe: forward passes (block diffusion: denoising, store and prefill)."""

    token_ids: list[int]
    full_ids: list[int]
    text: Optional[str]
    finish_reason: str
    nfe: int


class Run:
    """A generation in progress, as on_step callbacks see it: the canvas so far and per-row
    cancellation. tokens(): [B, gen_length] device view of the generation region (MASK where
    not yet committed); cancel(row): the row leaves the run at the next step (frozen like an
    early-stopped row, NFE stops counting); the other rows are undisturbed."""

    def __init__(self, state: DecodeState, mask_id: int) -> None:
        self.state = state
        self.mask_id = mask_id

    @property
    def batch(self) -> int:
        return self.state.batch

    def tokens(self) -> torch.Tensor:
        return self.state.generated()

    def cancel(self, row: int) -> None:
        if not 0 <= row < self.state.batch:
            raise IndexError(f"row {row} is outside the batch of {self.state.batch}")
        self.state.cancel[row] = True

    def nfe(self) -> list[int]:
        """Forwards each row took part in so far (a host read)."""
        return self.state.nfe.tolist()

    def done(self) -> list[bool]:
        """Per row: frozen (early stop or cancel) or nothing left to commit (a host read)."""
        st = self.state
        live = (st.generated() == self.mask_id).any(1) & st.active & ~st.cancel
        return (~live).tolist()


StepCallback = Callable[[Run, int, int], None]


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    return dev


def resolve_dtype(dtype: Union[str, torch.dtype], device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is invalid; allowed: {sorted(DTYPES)} or 'auto'")
        return DTYPES[dtype]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is invalid; use torch.float32, float16 or bfloat16")
    return dtype


def resolve_graphs(graphs: Union[str, bool], device: torch.device) -> bool:
    if graphs == "auto":
        return device.type == "cuda"
    if graphs not in (True, False):
        raise ValueError(f"graphs={graphs!r} is invalid; allowed: True, False, 'auto'")
    if graphs and device.type != "cuda":
        raise ValueError("graphs=True needs a CUDA device (CUDA graphs); use graphs=False on "
                         f"{device.type}")
    return graphs


def resolve_options(device, dtype, backend: str, graphs):
    """(device, dtype, backend, graphs) with every "auto" resolved, or a ValueError."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev), resolve_backend(backend, dev), resolve_graphs(graphs, dev)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        try:
            import triton  # noqa: F401
            from .ops import triton_backend  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend={backend!r} is invalid; allowed: 'torch', 'triton', 'auto'")
    return backend


class Engine:
    """A loaded model ready to decode. Build with Engine.from_pretrained(path)."""

    def __init__(self, model: DLLMModel, tokenizer: Optional[Tokenizer], *, backend: str,
                 graphs: bool = False, max_batch_size: int = 16,
                 max_seq_len: Optional[int] = None) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.backend = backend
        self.ops = model.ops
        self.max_batch_size = max_batch_size
        self.max_seq_len = min(max_seq_len or self.config.max_sequence_length,
                               self.config.max_sequence_length)
        self.eot_id = tokenizer.eot_token_id if tokenizer is not None else None
        self.graphs = graphs
        self._store: Optional[KVStore] = None  # allocated at the first cached request
        self._graph_cache = None

    def kv_store(self, batch: int, length: int) -> KVStore:
        """The engine's KV cache, [layers, 2, batch, kv_heads, length + 1, head_dim], grown by
        shape bucket as requests need it (batch to the next bucket, length to a multiple of
        KV_LENGTH_BUCKET, at most max_batch_size and max_seq_len plus the prompt bucket); captured
        graphs that hold the old store's address are dropped when it grows."""
        from .decoding.buckets import PROMPT_BUCKET, batch_bucket
        c = self.config
        cap_b, cap_l = self.max_batch_size, self.max_seq_len
        if self.graphs:
            cap_b, cap_l = batch_bucket(cap_b), cap_l + PROMPT_BUCKET
        batch, length = batch or cap_b, length or cap_l  # 0: the engine's largest request
        if self._store is not None and self._store.fits(batch, length):
            return self._store
        want_b = max(batch, self._store.max_batch if self._store else 0)
        want_l = max(length, self._store.max_len if self._store else 0)
        want_b = min(batch_bucket(want_b) if want_b <= 64 else want_b, max(cap_b, batch))
        want_l = min(-(-want_l // KV_LENGTH_BUCKET) * KV_LENGTH_BUCKET, max(cap_l, length))
        self._store = None  # free the old one before allocating the new one
        if self._graph_cache is not None:
            self._graph_cache.clear()
        self._store = KVStore(c.n_layers, want_b, c.n_kv_heads, want_l, c.head_dim,
                              dtype=self.model.dtype, device=self.model.device)
        return self._store

    def _decode(self, state: DecodeState, gen: GenerationConfig,
                on_step: Optional[StepCallback] = None, interval: str = "block") -> None:
        """The one loop, eager or as captured CUDA graphs (same tokens either way). With an
        on_step callback the loop runs eagerly (the host calls back between steps)."""
        if not self.graphs or on_step is not None:
            hook = self._step_hook(state, gen, on_step, interval)
            denoise(self.model, self.ops, state,
                    self._request(gen, state.batch, state.x.shape[1]), on_step=hook)
            return
        from .decoding.buckets import batch_bucket, prompt_bucket
        if self._graph_cache is None:
            from .decoding.graphs import GraphCache
            self._graph_cache = GraphCache(self.model, self.ops, self.config.pad_token_id)
        length = prompt_bucket(state.prompt_len) + state.gen_length
        req = self._request(gen, batch_bucket(state.batch), length)
        self._graph_cache.decode(state, req)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], *, device: Union[str, torch.device] = "auto",
                        dtype: Union[str, torch.dtype] = "auto", backend: str = "auto",
                        graphs: Union[str, bool] = "auto", max_batch_size: int = 16,
                        max_seq_len: Optional[int] = None) -> "Engine":
        """Load a local LLaDA checkpoint folder. auto: cuda if available; bf16 on CUDA, fp32 on
        CPU; the triton backend on CUDA, torch on CPU."""
        dev, dt, be, use_graphs = resolve_options(device, dtype, backend, graphs)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} is invalid: expected >= 1")
        ckpt = load_checkpoint(path, device=dev, dtype=dt, ops=get_ops(be))
        return cls(ckpt.model, ckpt.tokenizer, backend=be, graphs=use_graphs,
                   max_batch_size=max_batch_size, max_seq_len=max_seq_len)

    @classmethod
    def from_config(cls, config: ModelConfig, *, seed: int = 0,
                    device: Union[str, torch.device] = "auto",
                    dtype: Union[str, torch.dtype] = "auto", backend: str = "auto",
                    graphs: Union[str, bool] = "auto", max_batch_size: int = 16,
                    max_seq_len: Optional[int] = None) -> "Engine":
        """An engine with random weights drawn directly on the device (tensor by tensor, never
        the whole model in fp32 on the CPU): the same weights as save_random_checkpoint(path,
        config, seed=seed, dtype=dtype) up to last-ulp differences of the device's log/cos.
        No tokenizer: prompts are token ids. For benchmarks at 8B shapes."""
        from .models.writer import random_weights
        dev, dt, be, use_graphs = resolve_options(device, dtype, backend, graphs)
        weights = random_weights(config, seed=seed, dtype=dt, device=dev)
        return cls(DLLMModel(config, weights, get_ops(be)), None, backend=be, graphs=use_graphs,
                   max_batch_size=max_batch_size, max_seq_len=max_seq_len)

    # ------------------------------------------------------------------------------ prompts
    def _encode(self, prompt: Prompt, chat: bool) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this checkpoint has no tokenizer.json, so string prompts cannot "
                                 "be encoded; pass token ids (a list of ints) instead")
            if chat:
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
                return self.tokenizer.encode(text, add_special_tokens=False)
            return self.tokenizer.encode(prompt)
        if prompt and all(isinstance(m, dict) for m in prompt):
            if self.tokenizer is None:
                raise ValueError("chat messages need a tokenizer; this checkpoint has none")
            text = self.tokenizer.apply_chat_template(list(prompt))
            return self.tokenizer.encode(text, add_special_tokens=False)
        ids = list(prompt)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("a prompt must be a string, a list of token ids (ints) or a list of "
                             "chat messages ({'role': ..., 'content': ...})")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token id(s) {bad[:5]} are outside the vocabulary "
                             f"[0, {self.config.vocab_size})")
        return ids

    def _prompt_list(self, prompts, chat: bool) -> list[list[int]]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        elif prompts and isinstance(prompts[0], dict):
            prompts = [prompts]  # one conversation
        ids = [self._encode(p, chat) for p in prompts]
        for i, p in enumerate(ids):
            if self.config.mask_token_id in p:
                raise ValueError(f"prompt {i} contains the MASK token id "
                                 f"{self.config.mask_token_id} at position "
                                 f"{p.index(self.config.mask_token_id)}; prompts may not contain "
                                 "MASK (infilling is not supported)")
        return ids

    # ------------------------------------------------------------------------------ generate
    def encode(self, prompt: Prompt, *, chat: bool = False) -> list[int]:
        """One prompt (string, token ids or chat messages) -> the token ids generate feeds."""
        return self._prompt_list([prompt] if not isinstance(prompt, str) and prompt and
                                 isinstance(prompt[0], dict) else prompt, chat)[0]

    def resolve_config(self, config: Optional[GenerationConfig] = None,
                       **overrides) -> GenerationConfig:
        """The request's settings with every family-dependent default filled in for this
        engine's model family, validated for it (ValueError naming the field otherwise)."""
        gen = config or GenerationConfig()
        if overrides:
            gen = gen.replace(**overrides)
        return gen.resolve(self.config.family, block_size=self.config.block_size)

    @torch.inference_mode()
    def generate(self, prompts, config: Optional[GenerationConfig] = None, *, chat: bool = False,
                 **overrides) -> list[Completion]:
        """prompts: a string, a list of strings, a list of token ids, a list of token-id lists, or
        chat messages; chat=True renders strings with the checkpoint's chat template."""
        gen = self.resolve_config(config, **overrides)
        return self.generate_ids(self._prompt_list(prompts, chat), gen)

    @torch.inference_mode()
    def generate_ids(self, ids: list[list[int]], config: Optional[GenerationConfig] = None, *,
                     seeds: Optional[list[Optional[int]]] = None,
                     on_step: Optional[StepCallback] = None,
                     stream_interval: str = "block") -> list[Completion]:
        """Decode token-id prompts as one batch. seeds: one per row (None entries: config.seed,
        else random); every row's result equals its run alone with the same seed and settings.
        on_step(run, block, step): called from this thread after every block ("block") or
        every step ("step"), where the callback may read run.tokens() and run.cancel(row);
        with a callback the loop runs eagerly (same tokens as the captured graphs) and ends
        early once every row is frozen. encode() and resolve_config() only read the config and
        the tokenizer: other threads may call them while this runs."""
        gen = self.resolve_config(config)
        if stream_interval not in ("block", "step"):
            raise ValueError(f"stream_interval={stream_interval!r} is invalid; allowed: 'block', "
                             "'step'")
        ids = [list(p) for p in ids]
        if not ids:
            raise ValueError("prompts is empty: pass at least one prompt")
        for p in ids:
            self._encode(p, chat=False)  # checks the ids
        if seeds is not None and len(seeds) != len(ids):
            raise ValueError(f"{len(seeds)} seeds for {len(ids)} prompts: pass one per prompt")
        if len(ids) > self.max_batch_size:
            raise ValueError(f"{len(ids)} prompts exceed max_batch_size={self.max_batch_size}; "
                             "split the batch or build the engine with a larger max_batch_size")
        gen.check_prompts([len(p) for p in ids], self.config)
        longest = max(self._span(len(p), gen) for p in ids)
        if longest > self.max_seq_len:
            raise ValueError(f"prompt + gen_length ({longest} positions"
                             f"{', rounded up to whole blocks' if self._blockwise else ''}) "
                             f"exceeds the engine's max_seq_len={self.max_seq_len}; lower "
                             "gen_length or raise max_seq_len")
        default = gen.seed if gen.seed is not None else secrets.randbits(63)
        row_seeds = [default if s is None else s for s in (seeds or [None] * len(ids))]
        for s in row_seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
                raise ValueError(f"seed={s!r} is invalid: must be an integer in [0, 2**63)")
        dev = self.model.device
        # Triton launches (and graph captures) use the current CUDA device: make it the model's
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            if self._blockwise:
                return self._block_diffusion(ids, gen, row_seeds, on_step, stream_interval)
            state = DecodeState.from_prompts(ids, gen.gen_length,
                                             mask_id=self.config.mask_token_id,
                                             pad_id=self.config.pad_token_id, seeds=row_seeds,
                                             device=dev)
            self._decode(state, gen, on_step, stream_interval)
            return self._completions(state.generated().tolist(), state.nfe.tolist(),
                                     self.stop_ids(gen), gen.gen_length)

    def _step_hook(self, state: DecodeState, gen: GenerationConfig,
                   on_step: Optional[StepCallback], interval: str):
        """The loop's per-step callback for on_step: every step ("step"), or when a block is
        complete or took its last step ("block"; one host read per step)."""
        if on_step is None:
            return None
        run, Lb, last = Run(state, self.config.mask_token_id), gen.block_length, \
            gen.max_steps_per_block

        def hook(st: DecodeState, block: int, i: int) -> None:
            if interval == "step" or i + 1 >= last or not bool(
                    st.live_masks(st.prompt_len + block * Lb, Lb).any()):
                on_step(run, block, i)
        return hook

    @property
    def _blockwise(self) -> bool:
        """Block diffusion (block-causal attention, exact block cache): its own outer loop."""
        return self.config.attention == "block_causal"

    def _span(self, prompt_len: int, gen: GenerationConfig) -> int:
        """Positions a row occupies: prompt + gen_length, or whole blocks for block diffusion."""
        if not self._blockwise:
            return prompt_len + gen.gen_length
        B = gen.block_length
        return -(-(prompt_len + gen.gen_length) // B) * B

    def stop_ids(self, gen: GenerationConfig) -> list[int]:
        """The ids a row stops at (with stop_at_eos) and completions are cut at: EOS, the chat
        turn's end token, and the checkpoint's generation_config eos list."""
        ids = [self.config.eos_token_id] + ([self.eot_id] if self.eot_id is not None else [])
        return list(dict.fromkeys(ids + list(self.config.stop_token_ids)))

    def _block_diffusion(self, ids: list[list[int]], gen: GenerationConfig, seeds: list[int],
                         on_step, interval: str) -> list[Completion]:
        """Block diffusion (dllm-spec.md section 6): each row on its own block grid, the
        prefill, per-block denoising against the exact cache, the store forward, stops after
        whole blocks. Eager (the graph runner does not cover this loop yet)."""
        from .decoding.block_diffusion import BlockCanvas, BlockRequest, decode_blocks
        c, B = self.config, gen.block_length
        canvas = BlockCanvas.build(ids, gen.gen_length, B, mask_id=c.mask_token_id,
                                   pad_id=c.pad_token_id, seeds=seeds, device=self.model.device)
        st = canvas.state
        stops = self.stop_ids(gen)
        stop_t = torch.tensor(stops, dtype=torch.int64, device=self.model.device) \
            if gen.stop_at_eos else None
        req = BlockRequest(scorer=Scorer.from_config(gen, c.eos_token_id, self.eot_id),
                           rule=gen.rule, steps=gen.denoising_steps, threshold=gen.threshold,
                           stop_ids=stop_t, store=self.kv_store(st.batch, st.x.shape[1]))
        hook = self._step_hook(st, gen, on_step, interval)
        decode_blocks(self.model, self.ops, canvas, req, on_step=hook)
        return self._completions(canvas.full_ids(), st.nfe.tolist(), stops, gen.gen_length)

    def _request(self, gen: GenerationConfig, batch: int = 0, length: int = 0) -> Request:
        """The request's resolved strategies; with a KV cache, a store holding batch rows of
        `length` columns (0: the engine's largest)."""
        gen = gen.resolve(self.config.family, block_size=self.config.block_size)  # no-op if done
        strategy = make_strategy(gen.cache)
        eos = self.config.eos_token_id
        stop_ids = None
        if gen.stop_at_eos:
            stop_ids = torch.tensor(self.stop_ids(gen), dtype=torch.int64,
                                    device=self.model.device)
        return Request(scorer=Scorer.from_config(gen, eos, self.eot_id), policy=make_policy(gen),
                       strategy=strategy,
                       store=self.kv_store(batch, length) if strategy.needs_store else None,
                       block_length=gen.block_length, cfg_scale=float(gen.cfg_scale),
                       stop_ids=stop_ids, eos_id=eos, shift=int(self.config.shift_logits))

    def _completions(self, full: list[list[int]], nfe: list[int], stops: list[int],
                     gen_length: int) -> list[Completion]:
        """Host rows (after the loop) -> Completions: token_ids cut before the first stop id
        and at gen_length."""
        stop_set, out = set(stops), []
        for row, n in zip(full, nfe):
            cut = next((j for j, t in enumerate(row[:gen_length]) if t in stop_set), None)
            toks = row[:gen_length] if cut is None else row[:cut]
            text = self.tokenizer.decode(toks) if self.tokenizer is not None else None
            out.append(Completion(toks, row, text, "eos" if cut is not None else "length", n))
        return out
