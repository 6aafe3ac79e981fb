"""Select + commit: per row, choose which block positions to unmask and write x0 into the canvas.

One program per row over conf [B, Lb]. Confidence and index are packed into one uint64 key
(order-preserving float bits << 32 | BLOCK_L - 1 - index), so keys are unique and, ordered
descending, the higher confidence comes first and the lowest index wins ties. Only finite
confidences are eligible. Modes: top-k with a per-row k read from device memory (K_MAX = next
power of two >= the largest k, tl.topk; a full sort when K_MAX reaches the block), threshold
(conf >= tau plus the single most confident) and factor (largest sorted prefix with
c_i >= 1 - f / (i + 1), c_1 always). Also writes per-row counters: committed += n, left =
eligible positions still uncommitted (0: the block is done) and, under COUNT, step += 1 and
nfe += 1 for a row with any eligible position (it took part in this step).
Semantics: fastdiff.ops.reference.select_{topk,threshold,factor}_commit and count_step."""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from ._checks import per_row_contiguous

MODES = {"topk": 0, "threshold": 1, "factor": 2}
MAX_BLOCK_L = 1024  # longest block (Lb) one program sorts; TritonOps falls back above it
MIN_BLOCK = 16


@triton.jit
def _select_commit_kernel(x_ptr, x0_ptr, conf_ptr, bstart_ptr, param_ptr, commit_ptr,
                          committed_ptr, left_ptr, step_ptr, nfe_ptr, L, Lb, stride_x,
                          stride_x0, stride_conf, MODE: tl.constexpr, BLOCK_L: tl.constexpr,
                          K_MAX: tl.constexpr, COUNT: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_L)
    inb = offs < Lb
    c = tl.load(conf_ptr + b * stride_conf + offs, mask=inb, other=float("-inf"))  # [BLOCK_L]
    elig = inb & (c == c) & (tl.abs(c) < float("inf"))
    bits = c.to(tl.uint32, bitcast=True)
    # order-preserving uint32 of the float; > 0 for every finite value
    ordv = tl.where((bits >> 31) != 0, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    key = (ordv.to(tl.uint64) << 32) | (BLOCK_L - 1 - offs).to(tl.uint64)
    key = tl.where(elig, key, tl.zeros_like(key))
    n_elig = tl.sum(elig.to(tl.int32), axis=0)
    if MODE == 1:  # threshold: conf >= tau, plus the single most confident
        tau = tl.load(param_ptr + b).to(tl.float32)
        commit = elig & ((c >= tau) | (key == tl.max(key, axis=0)))
    else:
        if MODE == 0:  # top-k
            k = tl.minimum(tl.load(param_ptr + b).to(tl.int32), K_MAX)
            if K_MAX < BLOCK_L:
                top = tl.topk(key, K_MAX)  # [K_MAX] descending
            else:
                top = tl.sort(key, descending=True)
            ranks = tl.arange(0, K_MAX)
        else:  # factor: largest prefix of the sorted confidences with c_i >= 1 - f / (i + 1)
            f = tl.load(param_ptr + b).to(tl.float32)
            top = tl.sort(key, descending=True)  # [BLOCK_L]
            ranks = tl.arange(0, BLOCK_L)
            tb = (top >> 32).to(tl.uint32)
            tb = tl.where((tb >> 31) != 0, tb ^ 0x80000000, tb ^ 0xFFFFFFFF)
            cs = tb.to(tl.float32, bitcast=True)
            # IEEE division (div_rn): `/` compiles to an approximate divide on GPUs
            fail = (top == 0) | (cs < 1.0 - tl.math.div_rn(f, (ranks + 2).to(tl.float32)))
            k = tl.maximum(tl.min(tl.where(fail, ranks, BLOCK_L), axis=0), 1)
        k = tl.minimum(k, n_elig)
        kth = tl.sum(tl.where(ranks == k - 1, top, tl.zeros_like(top)), axis=0)
        # k > 0 as a block compare: a scalar compare broadcast into a block mask has the
        # wrong dtype under triton 3.9's interpreter ("mask has unsupported dtype")
        commit = elig & (key >= kth) & (tl.zeros_like(offs) < k)
    bs = tl.load(bstart_ptr + b).to(tl.int64)
    cols = bs + offs
    x0 = tl.load(x0_ptr + b * stride_x0 + offs, mask=commit)
    tl.store(x_ptr + b * stride_x + cols, x0.to(x_ptr.dtype.element_ty),
             mask=commit & (cols >= 0) & (cols < L))
    tl.store(commit_ptr + b * Lb + offs, commit.to(tl.int8), mask=inb)
    n = tl.sum(commit.to(tl.int32), axis=0)
    tl.store(committed_ptr + b, tl.load(committed_ptr + b) + n)
    tl.store(left_ptr + b, n_elig - n)
    if COUNT:  # the row took part in this step: it had an eligible position
        took = tl.minimum(n_elig, 1)
        tl.store(step_ptr + b, tl.load(step_ptr + b) + took.to(tl.int64))
        tl.store(nfe_ptr + b, tl.load(nfe_ptr + b) + took)


def _next_pow2(n: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(int(n)))


def pick_config(Lb: int, mode: str, k_max: Optional[int]) -> dict:
    """Launch heuristic: constexprs and num_warps for a block of Lb positions."""
    block_l = _next_pow2(Lb)
    k_cap = block_l if mode != "topk" else min(_next_pow2(k_max if k_max is not None else Lb),
                                               block_l)
    return {"MODE": MODES[mode], "BLOCK_L": block_l, "K_MAX": k_cap,
            "num_warps": 1 if block_l <= 128 else (4 if block_l <= 1024 else 8)}


def launch_configs():
    """Every configuration pick_config can return (the sm_90 compile test walks them)."""
    out = []
    bl = MIN_BLOCK
    while bl <= MAX_BLOCK_L:
        for mode in MODES:
            kms = [bl]
            if mode == "topk":
                kms, km = [], MIN_BLOCK
                while km <= bl:
                    kms.append(km)
                    km *= 2
            for km in kms:
                cfg = pick_config(bl, mode, km)
                assert cfg["K_MAX"] == (km if mode == "topk" else bl)
                out.append(cfg)
        bl *= 2
    return out


def _param(value, B: int, dtype: torch.dtype, device, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        return torch.full((B,), value, dtype=dtype, device=device)
    if value.shape != (B,) or value.device != device:
        raise ValueError(f"{name} must be a [B={B}] tensor on {device}, got "
                         f"{tuple(value.shape)} on {value.device}")
    per_row_contiguous(**{name: value})
    return value


def select_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                  block_start: torch.Tensor, *, k: Optional[torch.Tensor] = None,
                  tau: Union[None, float, torch.Tensor] = None,
                  factor: Union[None, float, torch.Tensor] = None, k_max: Optional[int] = None,
                  committed: Optional[torch.Tensor] = None,
                  left: Optional[torch.Tensor] = None, step: Optional[torch.Tensor] = None,
                  nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [B, L] int (canvas, updated in place), x0 int [B, Lb], conf fp32 [B, Lb],
    block_start int [B], one of k int [B] / tau [B] / factor [B] -> commit bool [B, Lb].

    x[b, block_start[b] + j] = x0[b, j] where committed. k_max bounds every k (default Lb); a
    device-side k above next_pow2(k_max) is clamped to it. committed int32 [B] (optional) is
    incremented by each row's count; left int32 [B] (optional) is set to the number of eligible
    (finite-confidence) positions left uncommitted, so the loop sees when a block is done.
    step int64 [B] and nfe int32 [B] (optional, together) get +1 in every row with at least one
    finite confidence (reference.count_step), in the same launch."""
    modes = [name for name, v in (("topk", k), ("threshold", tau), ("factor", factor))
             if v is not None]
    if len(modes) != 1:
        raise ValueError(f"select_commit needs exactly one of k, tau, factor; got {modes}")
    mode = modes[0]
    if x.dim() != 2 or conf.dim() != 2 or x0.shape != conf.shape or x.shape[0] != conf.shape[0]:
        raise ValueError(f"expected x [B, L], x0/conf [B, Lb]; got x {tuple(x.shape)}, "
                         f"x0 {tuple(x0.shape)}, conf {tuple(conf.shape)}")
    B, Lb = conf.shape
    dev = x.device
    for name, t in (("x0", x0), ("conf", conf), ("block_start", block_start)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device}, x on {dev}")
    if conf.dtype != torch.float32:
        raise ValueError(f"conf must be float32, got {conf.dtype}")
    if x.dtype not in (torch.int32, torch.int64) or x0.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"x and x0 must be int32/int64, got {x.dtype}, {x0.dtype}")
    if x.stride(1) != 1 or x0.stride(1) != 1 or conf.stride(1) != 1:
        raise ValueError("x, x0 and conf need a contiguous last dimension")
    if block_start.shape != (B,) or block_start.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_start must be int32/int64 [B={B}], got "
                         f"{block_start.dtype} {tuple(block_start.shape)}")
    if Lb > MAX_BLOCK_L:
        raise ValueError(f"block length {Lb} exceeds the kernel's limit {MAX_BLOCK_L}")
    if mode == "topk":
        if k.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"k must be int32/int64, got {k.dtype}")
        if k_max is not None and not 1 <= k_max <= MAX_BLOCK_L:
            raise ValueError(f"k_max={k_max} out of range: K_MAX = next_pow2(k_max) must be "
                             f"in [1, {MAX_BLOCK_L}]")
        param = _param(k, B, torch.int32, dev, "k")
    else:
        param = _param(tau if mode == "threshold" else factor, B, torch.float32, dev, mode)
    for name, t, dt in (("committed", committed, torch.int32), ("left", left, torch.int32),
                        ("step", step, torch.int64), ("nfe", nfe, torch.int32)):
        if t is not None and (t.shape != (B,) or t.dtype != dt or t.device != dev):
            raise ValueError(f"{name} must be {dt} [B={B}] on {dev}")
    if (step is None) != (nfe is None):
        raise ValueError("step and nfe are counted together: pass both or neither")
    per_row_contiguous(block_start=block_start, committed=committed, left=left, step=step,
                       nfe=nfe)
    cfg = pick_config(Lb, mode, k_max)
    commit = torch.empty((B, Lb), dtype=torch.int8, device=dev)
    if committed is None or left is None:
        scratch = torch.empty((2, B), dtype=torch.int32, device=dev)  # results unused
        committed = scratch[0] if committed is None else committed
        left = scratch[1] if left is None else left
    count = step is not None
    _select_commit_kernel[(B,)](
        x, x0, conf, block_start, param, commit, committed, left,
        step if count else committed, nfe if count else committed,  # unused without COUNT
        x.shape[1], Lb, x.stride(0), x0.stride(0), conf.stride(0),
        MODE=cfg["MODE"], BLOCK_L=cfg["BLOCK_L"], K_MAX=cfg["K_MAX"], COUNT=count,
        num_warps=cfg["num_warps"])
    return commit.view(torch.bool)
