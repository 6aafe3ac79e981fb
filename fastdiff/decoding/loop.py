"""The one denoising loop (dllm-spec.md sections 3-4). Strategies are objects it consults:
the scorer (x0 + confidence), the unmasking policy (top-k schedule, threshold, factor) and the
cache strategy (none, prefix, dual)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .cache import KVStore, NoCache, forward_span
from .policies import Scorer
from .state import DecodeState


@dataclass
class Request:
    """What one generate call decodes with: resolved once, read by every step."""

    scorer: Scorer
    policy: object  # TopKSchedule | ThresholdPolicy | FactorPolicy
    strategy: object = NoCache()
    store: Optional[KVStore] = None
    block_length: int = 128
    cfg_scale: float = 0.0
    stop_ids: Optional[torch.Tensor] = None  # [n] EOS (+ EoT) when stop_at_eos, else None
    eos_id: int = 0


def _hidden(model, state: DecodeState, req: Request, lo: int, hi: int) -> torch.Tensor:
    """Forward over columns [lo, hi) -> hidden [B, hi - lo, d]. Classifier-free guidance (no
    cache only): one batched forward over [x ; x with the prompt masked], combined as
    u + (s + 1)(c - u) on final hidden states, which equals guidance on logits (linear head)."""
    if req.cfg_scale <= 0:
        return forward_span(model, state, req.strategy, req.store, lo, hi)
    x = state.x
    un_x = x.clone()
    un_x[:, : state.prompt_len] = state.mask_id  # padding counts as prompt
    both = model.forward(torch.cat([x, un_x]), state.positions.repeat(2, 1),
                         state.kv_start.repeat(2), state.kv_end.repeat(2))
    c, u = both.float().chunk(2)
    return (u + (req.cfg_scale + 1) * (c - u)).to(both.dtype)


def step(model, ops, state: DecodeState, req: Request, start: int, i: int) -> None:
    """Step i of the block at column `start`: forward, score, commit, count, early stop.
    Device work only: no host reads of tensor values."""
    Lb, L = req.block_length, state.x.shape[1]
    lo, hi = req.strategy.span(start, Lb, L, refresh=i == 0)
    hidden = _hidden(model, state, req, lo, hi)  # [B, hi - lo, d]
    live = state.live_masks(start, Lb)  # [B, Lb]
    cols = torch.arange(start - lo, start - lo + Lb, device=live.device, dtype=torch.int32)
    row_map = torch.where(live, cols[None], -1)
    B = state.batch
    block_start = torch.full((B,), start, dtype=torch.int32, device=live.device)
    pos_base = torch.full((B,), start - state.prompt_len, dtype=torch.int64, device=live.device)
    x0, conf = req.scorer(ops, hidden, row_map, model.lm_head[: model.config.vocab_size],
                          state, pos_base)
    req.policy.commit(ops, state, x0, conf, block_start, i)
    took_part = live.any(1)  # waiting (block complete) and frozen rows do not count
    state.step += took_part
    state.nfe += took_part
    if req.stop_ids is not None:
        state.freeze_finished(req.stop_ids, req.eos_id)


def denoise(model, ops, state: DecodeState, req: Request, *, check_every: int = 1) -> DecodeState:
    """Run every block to completion, updating `state` in place.

    With the fixed schedule the number of steps is known and nothing is read back. With a
    threshold / factor (or early stop) a block runs until no live MASK is left: the host reads
    one flag between steps, every `check_every` steps (the fallback for the device-side WHILE
    loop; extra steps on a complete block change nothing and count no NFE)."""
    Lb = req.block_length
    fixed = req.policy.steps_per_block
    for b in range(state.gen_length // Lb):
        start = state.prompt_len + b * Lb
        req.policy.begin_block(state, start, Lb)
        for i in range(req.policy.max_steps(Lb)):
            if i > 0 and (fixed is None or req.stop_ids is not None) and i % check_every == 0:
                if not bool(state.live_masks(start, Lb).any()):  # between steps
                    break
            step(model, ops, state, req, start, i)
        if req.stop_ids is not None and not bool(state.active.any()):
            break
    return state
