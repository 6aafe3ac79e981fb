"""Block diffusion (SDAR; dllm-spec.md section 6): autoregressive over blocks of B tokens, masked
diffusion inside a block, with an EXACT K/V cache of the finished blocks.

Canvas. Every row keeps its own grid, absolute from its first token: row b's prompt (P_b tokens)
is left padded by pad_b = C - floor(P_b / B) * B, a multiple of B, where C is the largest
prompt-block boundary of the batch. Canvas blocks then coincide with every row's own blocks, the
first decoded block of every row starts at column C (holding the row's prompt tail, P_b mod B
tokens, then MASKs) and positions are column - pad_b: left padding never shifts a grid.

Loop. One block-causal prefill forward of columns [0, C) (rows whose prompt has no full block
only carry padding there) writes the prompt blocks' K/V. Then, per block: denoising steps feed
the block alone and attend to [pad_b, block end) (the cache plus the block's own fresh K/V: the
store slots of the block are written by every step but only ever read by that same step, so the
cache of the earlier blocks is never changed); each step commits by the request's rule (static
top-n_i, dynamic, sequential; n_i = B // steps plus one for the first B % steps steps) until the
block has no MASK; one store forward of the finished block writes its final K/V (logits unused).
After a whole block a row that produced a stop id, or has decoded its last block
(ceil((P_b + G) / B) blocks in all), is frozen; its later blocks stay MASK.

Counters: NFE counts the prefill (rows with a full prompt block), every denoising forward the
row took part in and every store forward; the Philox counter (state.step) counts the denoising
forwards only. Philox positions are positions within the row's generation (column - pad_b -
P_b), so a row's noise does not depend on its batch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..ops.step_torch import Prepared
from .state import DecodeState


@dataclass
class BlockCanvas:
    """A block-diffusion batch: the decode state plus each row's grid (host ints)."""

    state: DecodeState
    block: int  # B
    prompt_lens: list[int]  # P_b
    pads: list[int]  # pad_b (multiples of B)
    n_blocks: list[int]  # blocks row b decodes without a stop: ceil((P_b + G) / B) - P_b // B
    gen_length: int  # G (the request's; rows decode whole blocks beyond it)
    decoded: Optional[torch.Tensor] = None  # [batch] blocks each row decoded, after the loop

    def full_ids(self) -> list[list[int]]:
        """Each row's generated region up to the end of its last decoded block (host copy)."""
        x = self.state.x.tolist()
        ends = (self.state.prompt_len + self.decoded * self.block).tolist()
        return [row[start:end] for row, start, end in
                zip(x, self.state.gen_start.tolist(), ends)]

    @classmethod
    def build(cls, prompts: list[list[int]], gen_length: int, block: int, *, mask_id: int,
              pad_id: int, seeds: list[int], device) -> "BlockCanvas":
        B = block
        lens = [len(p) for p in prompts]
        full = [P // B * B for P in lens]
        C = max(full)
        pads = [C - f for f in full]
        n_blocks = [math.ceil((P + gen_length) / B) - f // B for P, f in zip(lens, full)]
        state = DecodeState.from_padded(
            prompts, pads, C + max(n_blocks) * B, mask_id=mask_id, pad_id=pad_id, seeds=seeds,
            device=device, prompt_len=C, gen_length=gen_length,
            gen_start=[pad + P for pad, P in zip(pads, lens)])
        return cls(state, B, lens, pads, n_blocks, gen_length)

    @property
    def prefill_len(self) -> int:
        return self.state.prompt_len

    def tails(self) -> list[int]:
        return [P % self.block for P in self.prompt_lens]


def schedule(block: int, steps: int) -> list[int]:
    """SDAR's quota per denoising step of a block: B // steps, plus one for the first B % steps
    steps (steps > B: trailing zeros)."""
    return [block // steps + (1 if i < block % steps else 0) for i in range(steps)]


@dataclass
class BlockRequest:
    """A resolved block-diffusion request: the scorer, the rule and its parameters."""

    scorer: object  # policies.Scorer
    rule: str  # "static" | "dynamic" | "sequential"
    steps: int  # denoising steps per block (at most; a block ends when it has no MASK)
    threshold: Optional[float]
    stop_ids: Optional[torch.Tensor]  # [n] or None (no stopping)
    store: object  # KVStore


def _prepare(state: DecodeState, bs: int, B: int, pos_base: torch.Tensor, k: torch.Tensor,
             ops) -> Prepared:
    """The block's step inputs: the fused prepare op with the block fed alone (row map of the
    live MASKs, cancelled rows frozen), the row's Philox positions and the step's quota."""
    prep = ops.step_prepare(state.x, state.positions, state.active, state.cancel, None,
                            block=0, i=1, prompt_len=bs, block_length=B, lo=None, S=B,
                            write_from_block=False, steps=0, mask_id=state.mask_id)
    return prep._replace(pos_base=pos_base, k=k)


class Span:
    """Canvas columns [lo, hi) fed to the model: their KV slots and the keys' end, built once
    per span (a block's steps and its store forward share them)."""

    def __init__(self, state: DecodeState, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.slot = torch.arange(lo, hi, dtype=torch.int32,
                                 device=state.x.device).expand(state.batch, hi - lo)
        self.end = torch.full_like(state.kv_start, hi)


def _forward(model, state: DecodeState, store, span: Span, *, block_causal: int = 0,
             kv_start: Optional[torch.Tensor] = None):
    """The span's columns through the model, their K/V written into their slots; attention
    over store slots [kv_start_b, hi) (block_causal: key block <= query block)."""
    lo, hi = span.lo, span.hi
    return model.forward(state.x[:, lo:hi], state.positions[:, lo:hi],
                         state.kv_start if kv_start is None else kv_start, span.end,
                         slot=span.slot, store=store.data, length=hi,
                         block_causal=block_causal, q_start=lo)


def denoise_step(model, ops, st: DecodeState, req: BlockRequest, span: Span,
                 pos_base: torch.Tensor, k: torch.Tensor, taus: Optional[torch.Tensor],
                 lm_head: torch.Tensor) -> None:
    """One denoising step of the block `span`: prepare, the block's forward against the cache,
    the fused LM head + confidence, commit by the request's rule. Device work only."""
    B = span.hi - span.lo
    prep = _prepare(st, span.lo, B, pos_base, k, ops)
    hidden = _forward(model, st, req.store, span)
    x0, conf = req.scorer(ops, hidden, prep.row_map, lm_head, st, prep.pos_base)
    if req.rule == "dynamic":
        ops.select_dynamic_commit(st.x, x0, conf, prep.block_start, prep.k, taus,
                                  step=st.step, nfe=st.nfe)
        return
    if req.rule == "sequential":  # the first n_i MASKs in position order
        j = torch.arange(B, device=conf.device, dtype=conf.dtype)
        conf = torch.where(torch.isfinite(conf), -j, conf)
    ops.select_topk_commit(st.x, x0, conf, prep.block_start, prep.k, step=st.step, nfe=st.nfe)


def decode_blocks(model, ops, canvas: BlockCanvas, req: BlockRequest, *,
                  on_step: Optional[Callable[[DecodeState, int, int], None]] = None) -> None:
    """Run the block-diffusion loop over `canvas` in place (see the module docstring)."""
    st, B = canvas.state, canvas.block
    dev = st.x.device
    C = canvas.prefill_len
    tails = torch.tensor(canvas.tails(), dtype=torch.int64, device=dev)
    quota = torch.tensor(schedule(B, req.steps), dtype=torch.int64, device=dev)
    k_rows = quota[:, None].repeat(1, st.batch)  # [steps, batch]: step i's k, a contiguous row
    taus = None if req.threshold is None else \
        torch.full((st.batch,), req.threshold, dtype=torch.float32, device=dev)
    n_blocks = torch.tensor(canvas.n_blocks, dtype=torch.int64, device=dev)
    canvas.decoded = torch.zeros_like(n_blocks)  # blocks each row decoded (and stored)
    if C > 0:  # the prompt blocks, block-causally; rows without one attend to their padding
        has_prompt = st.kv_start < C
        start = torch.where(has_prompt, st.kv_start, 0)
        _forward(model, st, req.store, Span(st, 0, C), block_causal=B, kv_start=start)
        st.nfe += has_prompt.to(st.nfe.dtype)
    lm_head = model.head
    for blk in range(max(canvas.n_blocks)):
        bs = C + blk * B
        pos_base = (bs - C) - tails  # the block's first position within each row's generation
        span = Span(st, bs, bs + B)
        for i in range(req.steps):
            if not bool(st.live_masks(bs, B).any()):  # the block is complete in every row
                break  # (a host read per step; the prepare op freezes cancelled rows)
            # a module-level name looked up per call: the kernel counter wraps it
            denoise_step(model, ops, st, req, span, pos_base, k_rows[i], taus, lm_head)
            if on_step is not None:
                on_step(st, blk, i)
        # the store forward of the finished block (rows still decoding it)
        st.active &= ~st.cancel
        _forward(model, st, req.store, span)
        st.nfe += st.active.to(st.nfe.dtype)
        canvas.decoded += st.active.to(canvas.decoded.dtype)
        done = n_blocks <= blk + 1
        if req.stop_ids is not None:  # earlier blocks were checked when they finished
            cols = span.slot.to(torch.int64)
            gen = (cols >= st.gen_start[:, None]) & torch.isin(st.x[:, bs:bs + B], req.stop_ids)
            done = done | gen.any(1)
        st.active &= ~done
        if not bool(st.active.any()):  # a host read per block
            break
