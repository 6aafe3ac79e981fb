"""The one denoising loop (dllm-spec.md sections 3-4). Strategies are objects it consults:
the scorer (x0 + confidence), the unmasking policy (top-k schedule, threshold, factor) and the
cache strategy (none, prefix, dual).

A step is a fixed sequence of device ops: prepare (what to feed, score and commit, from the
canvas and the block/step index), the forward, the fused LM head + confidence, select + commit
(which also counts the step for the rows that took part) and, with early stop, the freeze test.
The block and step index are host ints in the eager loop and device scalars written by the
control kernel in captured graphs, so one captured graph per phase serves every block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .cache import CACHED, REFRESH, Feed, KVStore, NoCache
from .policies import Scorer
from .state import DecodeState

Index = Union[int, torch.Tensor]


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
    shift: int = 0  # 1: shifted logits (block position j scored from the output at j - 1)


def _hidden(model, state: DecodeState, req: Request, feed: Feed, prep) -> torch.Tensor:
    """The forward over the fed span -> final hidden states of the block rows [B, Lb, d].
    Classifier-free guidance (no cache only): one batched forward over [x ; x with the prompt
    masked], combined as u + (s + 1)(c - u) on final hidden states, which equals guidance on
    logits (linear head)."""
    # S == Lb (and no shift, no compaction): rows are 0..Lb-1
    rows = None if feed.S == req.block_length == prep.rows.shape[1] and not req.shift \
        else prep.rows
    if req.cfg_scale <= 0:
        store = req.store.data if req.strategy.needs_store else None
        return model.forward(prep.ids, prep.pos, state.kv_start, state.kv_end, slot=prep.slot,
                             store=store, length=state.x.shape[1], rows=rows,
                             kv_full=state.pad_free)
    un_x = prep.ids.clone()  # feed = the whole canvas
    un_x[:, : state.prompt_len] = state.mask_id  # padding counts as prompt
    both = model.forward(torch.cat([prep.ids, un_x]), prep.pos.repeat(2, 1),
                         state.kv_start.repeat(2), state.kv_end.repeat(2),
                         rows=None if rows is None else rows.repeat(2, 1), kv_full=state.pad_free)
    c, u = both.float().chunk(2)
    return (u + (req.cfg_scale + 1) * (c - u)).to(both.dtype)


def step(model, ops, state: DecodeState, req: Request, phase: int, block: Index,
         i: Index) -> None:
    """Step i of block `block` (host ints, or int32 device scalars in captured graphs); phase
    REFRESH or CACHED picks the fed span. Device work only: no host reads of tensor values.
    With a backend that compacts rows (TorchOps.compacts_rows), on the CPU, an eager step i
    feeds its last layer and LM head the policy's bound on the live MASKs, which assumes steps
    0..i-1 of the block ran before it (the loop's order); a canvas with more raises an index
    error. On a GPU eager steps keep the shapes the captured graphs have (same tokens)."""
    Lb, L, P = req.block_length, state.x.shape[1], state.prompt_len
    # the exact span needs the block start on the host; on a GPU eager steps take the captured
    # graphs' (worst-case) spans instead, so that streaming and graphs run the same GEMM shapes
    # and give bitwise the same tokens
    start = P + block * Lb if isinstance(block, int) and not state.x.is_cuda else None
    feed = req.strategy.feed(phase, P, L, Lb, start).shifted(req.shift)
    prep = ops.step_prepare(state.x, state.positions, state.active, state.cancel, state.m0,
                            block=block, i=i, prompt_len=P, block_length=Lb, lo=feed.lo,
                            S=feed.S, write_from_block=feed.write_from_block,
                            steps=req.policy.prepare_steps, mask_id=state.mask_id,
                            shift=req.shift, ratios=req.policy.prepare_ratios)
    if phase == CACHED and isinstance(i, int) and ops.compacts_rows and not state.x.is_cuda:
        n = max(1, req.policy.live_bound(Lb, i))
        if n < Lb:  # only the positions still MASKed reach the last layer and the LM head
            prep = prep._replace(**dict(zip(("rows", "row_map"),
                                            ops.compact_live(prep.rows, prep.row_map, n))))
    hidden = _hidden(model, state, req, feed, prep)  # [B, Lb or n, d]
    x0, conf = req.scorer(ops, hidden, prep.row_map, model.head,
                          state, prep.pos_base)
    req.policy.commit(ops, state, x0, conf, prep, i)
    if req.stop_ids is not None:
        ops.freeze_finished(state.x, state.active, P, req.stop_ids, req.eos_id, state.mask_id)


def denoise(model, ops, state: DecodeState, req: Request, *, check_every: int = 1,
            on_step: Optional[Callable[[DecodeState, int, int], None]] = None) -> DecodeState:
    """Run every block to completion, updating `state` in place.

    With the fixed schedule the number of steps is known and nothing is read back within a
    block. With a threshold / factor (or early stop) a block runs until no live MASK is left:
    the host reads one flag between steps, every `check_every` steps (the fallback for the
    device-side WHILE loop; extra steps on a complete block change nothing and count no NFE),
    and between blocks whether any row is still active (early stop, cancel). A cancelled row
    (state.cancel) is frozen by the next step in every mode.
    on_step(state, block, i): called after each step (streaming, tests)."""
    Lb = req.block_length
    fixed = req.policy.steps_per_block
    req.policy.bind(state)
    for b in range(state.gen_length // Lb):
        start = state.prompt_len + b * Lb
        for i in range(req.policy.max_steps(Lb)):
            if i > 0 and (fixed is None or req.stop_ids is not None) and i % check_every == 0:
                if not bool(state.live_masks(start, Lb).any()):  # between steps
                    break
            step(model, ops, state, req, REFRESH if i == 0 else CACHED, b, i)
            if on_step is not None:
                on_step(state, b, i)
        if (fixed is None or req.stop_ids is not None or on_step is not None) and \
                not bool((state.active & ~state.cancel).any()):
            break  # every row frozen (early stop, or cancelled by a step callback)
    return state
