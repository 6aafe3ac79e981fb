"""The step's bookkeeping in torch (the CPU path and GPU fallback of kernels/step_prepare.py and
kernels/freeze_finished.py): what a denoising step feeds, scores and may commit, and early stop.
Device ops only: block and step index may be host ints (eager loop) or device int32 scalars
(captured graphs, where the control kernel writes them). Semantics: reference.step_prepare."""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

Index = Union[int, torch.Tensor]


class Prepared(NamedTuple):
    """One step's inputs. ids / pos int64 [B, S]: fed tokens and their RoPE positions; slot
    int32 [B, S]: their KV slot (-1: not written); rows int64 [B, Lb]: the fed-token index of
    each block position; row_map int32 [B, Lb]: j where block position j is scored (a live
    MASK of an active row), else -1; block_start int32 [B]; pos_base int64 [B] (block start
    within the generation); k int64 [B]: the fixed rule's tokens to commit (LLaDA's schedule or
    Dream's timestep quota; None without)."""

    ids: torch.Tensor
    pos: torch.Tensor
    slot: torch.Tensor
    rows: torch.Tensor
    row_map: torch.Tensor
    block_start: torch.Tensor
    pos_base: torch.Tensor
    k: Optional[torch.Tensor]


def step_prepare(x: torch.Tensor, positions: torch.Tensor, active: torch.Tensor,
                 cancel: Optional[torch.Tensor], m0: Optional[torch.Tensor], *, block: Index,
                 i: Index, prompt_len: int, block_length: int, lo: Optional[int], S: int,
                 write_from_block: bool, steps: int, mask_id: int, shift: int = 0,
                 ratios: Optional[torch.Tensor] = None) -> Prepared:
    """x, positions [B, L] int64; active bool [B] (cleared in place for cancelled rows);
    cancel bool [B] or None; m0 int64 [B] (the block's MASK count at its first step, written
    when i == 0; needed when steps > 0). The block starts at bs = prompt_len + block * Lb; the
    fed span is columns [lo, lo + S) (lo None: bs - shift); with write_from_block only columns
    >= bs write their K/V (prefix cache at worst-case shapes). shift 1 (shifted logits): block
    position j is scored from the output at column bs + j - 1. ratios fp32 [steps'] (Dream's
    quota, exclusive with steps > 0): k = int(block MASK count * ratios[i])."""
    dev = x.device
    Lb = block_length
    if cancel is not None:
        active &= ~cancel
    bs = prompt_len + block * Lb  # int or 0-d tensor
    lo_t = bs - shift if lo is None else lo
    j = torch.arange(Lb, device=dev)
    cols = lo_t + torch.arange(S, device=dev)  # [S]
    ids, pos = x.index_select(1, cols), positions.index_select(1, cols)
    slot = cols.to(torch.int32).expand(x.shape[0], S)
    if write_from_block:
        slot = torch.where(cols >= bs, slot, -1)
    blk = x.index_select(1, bs + j)  # [B, Lb]
    is_mask = blk == mask_id
    live = is_mask & active[:, None]
    row_map = torch.where(live, j.to(torch.int32), -1)
    rows = (bs + j - shift - lo_t).expand_as(blk)
    B = x.shape[0]
    block_start = torch.full((B,), 0, dtype=torch.int32, device=dev) + bs
    k = None
    if steps > 0:
        if not isinstance(i, int):
            m0.copy_(torch.where(i == 0, is_mask.sum(1), m0))
        elif i == 0:
            m0.copy_(is_mask.sum(1))
        k = m0 // steps + (m0 % steps > i).to(m0.dtype)
    elif ratios is not None:
        r = ratios[i] if isinstance(i, int) else ratios.index_select(0, i.reshape(1).long())
        k = (is_mask.sum(1).float() * r).to(torch.int64)
    return Prepared(ids, pos, slot, rows, row_map, block_start,
                    (block_start - prompt_len).to(torch.int64), k)


def freeze_finished(x: torch.Tensor, active: torch.Tensor, prompt_len: int,
                    stop_ids: torch.Tensor, eos_id: int, mask_id: int) -> None:
    """Early stop (dllm-spec.md section 4), in place: a row whose first EOS/EoT in the
    generation has every position before it committed gets EOS after it and is frozen."""
    gen = x[:, prompt_len:]  # [B, G] view
    G = gen.shape[1]
    cols = torch.arange(G, device=gen.device)[None]
    is_stop = torch.isin(gen, stop_ids)
    first = torch.where(is_stop.any(1), is_stop.to(torch.int32).argmax(1), G)[:, None]
    masks_before = ((gen == mask_id) & (cols < first)).any(1)
    done = active & is_stop.any(1) & ~masks_before  # [B]
    gen.copy_(torch.where(done[:, None] & (cols > first), eos_id, gen))
    active &= ~done


def count_step(conf: torch.Tensor, step: Optional[torch.Tensor],
               nfe: Optional[torch.Tensor]) -> None:
    """+1 to step[b] and nfe[b] for each row with a finite confidence (it took part)."""
    if step is None:
        return
    took = torch.isfinite(conf).any(1)
    step += took
    nfe += took
