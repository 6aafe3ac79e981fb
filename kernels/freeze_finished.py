"""Early stop on the device in one launch: freeze rows whose answer has ended.

One program per row, skipped at once if the row is inactive. Pass 1 walks the generation region
in BLOCK_G chunks for the first stop token and the first MASK; if a stop token comes before any
MASK, pass 2 writes eos_id after it and the row's active flag is cleared. The kernel only ever
writes active = False, so a host thread may clear flags concurrently. Semantics:
fastdiff.ops.reference.freeze_finished (torch path: ops.step_torch)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_STOP_IDS = 4
MAX_BLOCK_G = 1024


@triton.jit
def _freeze_finished_kernel(x_ptr, active_ptr, stop_ptr, n_stop, prompt_len, G, stride_x,
                            eos_id, mask_id, BLOCK_G: tl.constexpr):
    b = tl.program_id(0)
    if tl.load(active_ptr + b) != 0:
        row = x_ptr + b.to(tl.int64) * stride_x + prompt_len
        # MAX_STOP_IDS = 4 stop ids; unused slots repeat the last one
        s0 = tl.load(stop_ptr)
        s1 = tl.load(stop_ptr + tl.minimum(1, n_stop - 1))
        s2 = tl.load(stop_ptr + tl.minimum(2, n_stop - 1))
        s3 = tl.load(stop_ptr + tl.minimum(3, n_stop - 1))
        first_stop = tl.zeros((), tl.int32) + G  # a tensor even when G is specialized to 1
        first_mask = first_stop
        for g0 in range(0, G, BLOCK_G):
            offs = g0 + tl.arange(0, BLOCK_G)  # [BLOCK_G]
            inb = offs < G
            tok = tl.load(row + offs, mask=inb, other=0)
            is_stop = ((tok == s0) | (tok == s1) | (tok == s2) | (tok == s3)) & inb
            first_stop = tl.minimum(first_stop, tl.min(tl.where(is_stop, offs, G), axis=0))
            is_mask = (tok == mask_id) & inb
            first_mask = tl.minimum(first_mask, tl.min(tl.where(is_mask, offs, G), axis=0))
        if (first_stop < G) & (first_mask >= first_stop):  # no MASK before the stop token
            for g0 in range(first_stop + 1, G, BLOCK_G):
                offs = g0 + tl.arange(0, BLOCK_G)
                eos = tl.full((BLOCK_G,), eos_id, x_ptr.dtype.element_ty)
                tl.store(row + offs, eos, mask=offs < G)
            tl.store(active_ptr + b, tl.zeros((), tl.int8))


def pick_config(G: int) -> dict:
    """Launch heuristic for a generation region of G positions."""
    block = min(max(16, triton.next_power_of_2(G)), MAX_BLOCK_G)
    return {"BLOCK_G": block, "num_warps": 4 if block >= 256 else 1, "num_stages": 3}


def launch_configs() -> list:
    """Every configuration pick_config can return."""
    out, g = [], 16
    while g <= MAX_BLOCK_G:
        out.append(pick_config(g))
        g *= 2
    return out


def freeze_finished(x: torch.Tensor, active: torch.Tensor, prompt_len: int,
                    stop_ids: torch.Tensor, eos_id: int, mask_id: int) -> None:
    """x int [B, L] (canvas, updated in place), active bool [B] (updated in place), stop_ids int
    [n] (1 <= n <= 4) -> None.

    Per row b of the generation region x[b, prompt_len:]: if active[b] and its first stop token
    has no mask_id before it, every generation position after that token becomes eos_id and
    active[b] = False (never set True). reference.freeze_finished. x rows may be strided."""
    if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"x must be an int64/int32 [B, L] canvas, got {x.dtype} "
                         f"{list(x.shape)}")
    B, L = x.shape
    if L > 1 and x.stride(1) != 1:
        raise ValueError(f"x needs a contiguous last dimension, got strides {x.stride()}")
    if active.shape != (B,) or active.dtype != torch.bool or not active.is_contiguous():
        raise ValueError(f"active must be a contiguous bool [B={B}], got {active.dtype} "
                         f"{list(active.shape)}")
    if stop_ids.dim() != 1 or not 1 <= stop_ids.shape[0] <= MAX_STOP_IDS \
            or stop_ids.dtype not in (torch.int64, torch.int32) or not stop_ids.is_contiguous():
        raise ValueError(f"stop_ids must be a contiguous int64/int32 [n], 1 <= n <= "
                         f"{MAX_STOP_IDS}, got {stop_ids.dtype} {list(stop_ids.shape)}")
    for name, t in (("active", active), ("stop_ids", stop_ids)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    if not 0 <= prompt_len <= L:
        raise ValueError(f"prompt_len={prompt_len} outside [0, L={L}]")
    G = L - prompt_len
    if B == 0 or G == 0:
        return
    cfg = pick_config(G)
    _freeze_finished_kernel[(B,)](
        x, active.view(torch.int8), stop_ids, stop_ids.shape[0], prompt_len, G, x.stride(0),
        eos_id, mask_id, BLOCK_G=cfg["BLOCK_G"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
