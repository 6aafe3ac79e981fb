"""Step bookkeeping in one launch: what a denoising step feeds, scores and may commit.

One program per row b. The block starts at bs = prompt_len + block * Lb, where block and the
step index i are scalars (eager loop) or read from device memory (captured graphs: the control
kernel's words, so one graph serves every block). Writes, for the fed columns c = lo + s,
s < S (lo = bs, or a fixed lo): ids / pos [B, S] int64 (canvas token, RoPE position) and slot
int32 [B, S] (c, or -1 below bs with WRITE_FROM_BLOCK); for the block positions j < Lb:
rows int64 [B, Lb] = bs + j - shift - lo (shift 1: shifted logits) and row_map int32 [B, Lb] = j where x[b, bs + j] is MASK and
the row is active, else -1; block_start int32 [B] and pos_base int64 [B] = bs - prompt_len; and
with the fixed schedule (STEPS > 0) m0 [B] (the block's MASK count, at i == 0) and k [B] =
m0 // STEPS + (m0 % STEPS > i), or with Dream's quota (RATIOS) k = int(masks * ratios[i]).
(lo = bs - shift when it follows the block.) A cancelled row is frozen first (active[b] = False: the only
value ever written there). Semantics: fastdiff.ops.reference.step_prepare."""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from ..ops.step_torch import Prepared
from ._checks import per_row_contiguous

MAX_BLOCK = 512  # widest chunk one program walks per iteration (1024 spills on sm_90)


@triton.jit
def _step_prepare_kernel(x_ptr, pos_ptr, active_ptr, cancel_ptr, m0_ptr, cursor_ptr,
                         ids_ptr, fpos_ptr, slot_ptr, rows_ptr, rmap_ptr, bstart_ptr, pbase_ptr,
                         k_ptr, ratio_ptr, block_arg, i_arg, lo_arg, prompt_len, Lb, S,
                         stride_x, stride_p, mask_id, shift, STEPS: tl.constexpr,
                         RATIOS: tl.constexpr, FROM_DEVICE: tl.constexpr,
                         LO_FROM_BLOCK: tl.constexpr, WRITE_FROM_BLOCK: tl.constexpr,
                         HAS_CANCEL: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_L: tl.constexpr):
    b = tl.program_id(0)
    if FROM_DEVICE:
        block = tl.load(cursor_ptr).to(tl.int32)
        i = tl.load(cursor_ptr + 1).to(tl.int32)
    else:
        block = block_arg
        i = i_arg
    bs = prompt_len + block * Lb
    if LO_FROM_BLOCK:
        lo = bs - shift
    else:
        lo = lo_arg + tl.zeros((), tl.int32)
    act = tl.load(active_ptr + b) != 0
    if HAS_CANCEL:
        cancelled = tl.load(cancel_ptr + b) != 0
        tl.store(active_ptr + b, tl.zeros((), tl.int8), mask=act & cancelled)
        act = act & (cancelled == 0)
    xrow = x_ptr + b.to(tl.int64) * stride_x
    prow = pos_ptr + b.to(tl.int64) * stride_p
    for s0 in range(0, S, BLOCK_S):  # the fed span
        s = s0 + tl.arange(0, BLOCK_S)
        inb = s < S
        c = lo + s
        tl.store(ids_ptr + b * S + s, tl.load(xrow + c, mask=inb, other=0), mask=inb)
        tl.store(fpos_ptr + b * S + s, tl.load(prow + c, mask=inb, other=0), mask=inb)
        if WRITE_FROM_BLOCK:
            sl = tl.where(c >= bs, c, -1)
        else:
            sl = c
        tl.store(slot_ptr + b * S + s, sl, mask=inb)
    masks = tl.zeros((), tl.int32)
    for j0 in range(0, Lb, BLOCK_L):  # the block
        j = j0 + tl.arange(0, BLOCK_L)
        inb = j < Lb
        tok = tl.load(xrow + bs + j, mask=inb, other=0)
        is_mask = (tok == mask_id) & inb
        masks += tl.sum(is_mask.to(tl.int32), axis=0)
        tl.store(rmap_ptr + b * Lb + j, tl.where(is_mask & act, j, -1), mask=inb)
        tl.store(rows_ptr + b * Lb + j, (bs + j - shift - lo).to(tl.int64), mask=inb)
    tl.store(bstart_ptr + b, bs)
    tl.store(pbase_ptr + b, (bs - prompt_len).to(tl.int64))
    if STEPS > 0:
        m0 = tl.load(m0_ptr + b)
        m0 = tl.where(i == 0, masks.to(m0.dtype), m0)
        tl.store(m0_ptr + b, m0)
        tl.store(k_ptr + b, m0 // STEPS + (m0 % STEPS > i).to(m0.dtype))
    if RATIOS:  # Dream's quota: int(float32(block MASK count) * ratio_i), truncated
        r = tl.load(ratio_ptr + i)
        tl.store(k_ptr + b, (masks.to(tl.float32) * r).to(tl.int64))


def _pow2(n: int, cap: int) -> int:
    return min(max(16, triton.next_power_of_2(int(n))), cap)


def pick_config(S: int, Lb: int) -> dict:
    """Launch heuristic: chunk widths for the fed span and the block."""
    return {"BLOCK_S": _pow2(S, MAX_BLOCK), "BLOCK_L": _pow2(Lb, MAX_BLOCK), "num_warps": 4}


def launch_configs():
    """Every (BLOCK_S, BLOCK_L) pick_config can return (the sm_90 compile test walks them)."""
    sizes = [16 << k for k in range(6)]  # 16 .. 512
    return [{"BLOCK_S": s, "BLOCK_L": lb, "num_warps": 4} for s in sizes for lb in sizes
            if lb <= s]


def step_prepare(x: torch.Tensor, positions: torch.Tensor, active: torch.Tensor,
                 cancel: Optional[torch.Tensor], m0: Optional[torch.Tensor], *,
                 block: Union[int, torch.Tensor], i: Union[int, torch.Tensor], prompt_len: int,
                 block_length: int, lo: Optional[int], S: int, write_from_block: bool,
                 steps: int, mask_id: int, shift: int = 0,
                 ratios: Optional[torch.Tensor] = None) -> Prepared:
    """x, positions int64 [B, L], active bool [B] (cancelled rows cleared in place), cancel
    bool [B] | None, m0 int64 [B] (with steps > 0), block / i: ints or int32 device scalars
    (both of one kind) -> Prepared (see fastdiff.ops.step_torch.Prepared)."""
    B, L = x.shape
    dev = x.device
    if positions.shape != x.shape or x.dtype != torch.int64 or positions.dtype != torch.int64:
        raise ValueError(f"x and positions must be int64 [B, L]; got {x.dtype} "
                         f"{tuple(x.shape)}, {positions.dtype} {tuple(positions.shape)}")
    if x.stride(1) != 1 or positions.stride(1) != 1:
        raise ValueError("x and positions need a contiguous last dimension")
    if active.shape != (B,) or active.dtype != torch.bool:
        raise ValueError(f"active must be bool [B={B}], got {active.dtype} {tuple(active.shape)}")
    if cancel is not None and (cancel.shape != (B,) or cancel.dtype != torch.bool):
        raise ValueError(f"cancel must be bool [B={B}]")
    if steps > 0 and (m0 is None or m0.shape != (B,) or m0.dtype != torch.int64):
        raise ValueError("the fixed schedule (steps > 0) needs m0 int64 [B]")
    if ratios is not None and (steps > 0 or ratios.dtype != torch.float32 or ratios.dim() != 1):
        raise ValueError("ratios (Dream's quota) must be fp32 [n] and exclusive with steps > 0")
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 or 1, got {shift}")
    per_row_contiguous(active=active, cancel=cancel, m0=m0)
    from_device = isinstance(block, torch.Tensor)
    if from_device != isinstance(i, torch.Tensor):
        raise ValueError("block and i must both be ints or both device tensors")
    if from_device:
        cursor = torch.stack([block.reshape(()), i.reshape(())]) \
            if block.data_ptr() + 4 != i.data_ptr() else block.reshape(1)
        if cursor.dtype != torch.int32:
            raise ValueError(f"block / i device scalars must be int32, got {cursor.dtype}")
        block_arg = i_arg = 0
    else:
        cursor, block_arg, i_arg = active, int(block), int(i)  # cursor unused
    if lo is not None and not (0 <= lo and lo + S <= L):
        raise ValueError(f"fed span [{lo}, {lo + S}) is outside the canvas [0, {L})")
    ids = torch.empty((B, S), dtype=torch.int64, device=dev)
    pos = torch.empty((B, S), dtype=torch.int64, device=dev)
    slot = torch.empty((B, S), dtype=torch.int32, device=dev)
    rows = torch.empty((B, block_length), dtype=torch.int64, device=dev)
    row_map = torch.empty((B, block_length), dtype=torch.int32, device=dev)
    block_start = torch.empty(B, dtype=torch.int32, device=dev)
    pos_base = torch.empty(B, dtype=torch.int64, device=dev)
    k = torch.empty(B, dtype=torch.int64, device=dev) if steps > 0 or ratios is not None \
        else None
    cfg = pick_config(S, block_length)
    act8 = active.view(torch.int8)
    _step_prepare_kernel[(B,)](
        x, positions, act8, cancel.view(torch.int8) if cancel is not None else act8,
        m0 if m0 is not None else pos_base, cursor, ids, pos, slot, rows, row_map, block_start,
        pos_base, k if k is not None else pos_base, ratios if ratios is not None else pos_base,
        block_arg, i_arg, lo or 0, prompt_len, block_length, S, x.stride(0), positions.stride(0),
        mask_id, shift, STEPS=steps, RATIOS=ratios is not None,
        FROM_DEVICE=from_device, LO_FROM_BLOCK=lo is None, WRITE_FROM_BLOCK=write_from_block,
        HAS_CANCEL=cancel is not None, BLOCK_S=cfg["BLOCK_S"], BLOCK_L=cfg["BLOCK_L"],
        num_warps=cfg["num_warps"])
    return Prepared(ids, pos, slot, rows, row_map, block_start, pos_base, k)
