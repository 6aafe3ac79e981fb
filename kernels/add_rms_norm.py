"""Residual add + RMSNorm in one launch: s = x + delta (in the model dtype), y = rms_norm(s).

One program per row. A row of up to MAX_SINGLE_D elements is held in registers (one read of x
and delta, one write of s and y); longer rows take two passes over BLOCK_D chunks (sum of
squares, then s and y recomputed per chunk), so out_sum may alias x: each chunk is read before
it is written. Math in fp32 with the reference's rounding points: s rounded to the dtype before
the norm, the normalized row rounded before the weight multiply, the product rounded again.
Semantics: fastdiff.ops.reference.add_rms_norm."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.kernels._rounding import bf16_rne, cast

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_SINGLE_D = 8192  # longest row held in registers; longer rows loop over CHUNK_D chunks
CHUNK_D = 4096


@triton.jit
def _load_sum(x_row, delta_row, offs, m, dt: tl.constexpr, HAS_DELTA: tl.constexpr,
              BF16_RNE: tl.constexpr):
    """s = x (+ delta, rounded to the dtype) over one chunk, in fp32."""
    s = tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        s = s + tl.load(delta_row + offs, mask=m, other=0.0).to(tl.float32)
        s = cast(s, dt, BF16_RNE).to(tl.float32)
    return s


@triton.jit
def _store_sum_norm(s, rstd, offs, m, s_row, y_row, w_ptr, dt: tl.constexpr,
                    STORE_S: tl.constexpr, BF16_RNE: tl.constexpr):
    """Writes s (STORE_S) and y = (s * rstd rounded) * w over one chunk."""
    if STORE_S:
        tl.store(s_row + offs, cast(s, dt, BF16_RNE), mask=m)
    yn = cast(s * rstd, dt, BF16_RNE).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_row + offs, cast(yn * w, dt, BF16_RNE), mask=m)


@triton.jit
def _add_rms_norm_kernel(x_ptr, delta_ptr, w_ptr, s_ptr, y_ptr, d, eps,
                         stride_x, stride_delta, stride_s, stride_y,
                         HAS_DELTA: tl.constexpr, STORE_S: tl.constexpr, BLOCK_D: tl.constexpr,
                         SINGLE: tl.constexpr, BF16_RNE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    delta_row = delta_ptr + row * stride_delta
    s_row = s_ptr + row * stride_s
    y_row = y_ptr + row * stride_y
    dt: tl.constexpr = y_ptr.dtype.element_ty
    if SINGLE:
        offs = tl.arange(0, BLOCK_D)
        m = offs < d
        s = _load_sum(x_row, delta_row, offs, m, dt, HAS_DELTA, BF16_RNE)  # [BLOCK_D]
        rstd = tl.math.rsqrt(tl.sum(s * s, axis=0) / d + eps)
        _store_sum_norm(s, rstd, offs, m, s_row, y_row, w_ptr, dt, STORE_S, BF16_RNE)
    else:
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for c0 in range(0, d, BLOCK_D):  # pass 1: sum of squares of the rounded s
            offs = c0 + tl.arange(0, BLOCK_D)
            s = _load_sum(x_row, delta_row, offs, offs < d, dt, HAS_DELTA, BF16_RNE)
            acc += s * s
        rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / d + eps)
        for c0 in range(0, d, BLOCK_D):  # pass 2: s again (x may be overwritten now), y
            offs = c0 + tl.arange(0, BLOCK_D)
            m = offs < d
            s = _load_sum(x_row, delta_row, offs, m, dt, HAS_DELTA, BF16_RNE)
            _store_sum_norm(s, rstd, offs, m, s_row, y_row, w_ptr, dt, STORE_S, BF16_RNE)


def pick_config(d: int) -> dict:
    """Launch heuristic for a row of d elements: block, single-pass flag, warps, stages."""
    single = d <= MAX_SINGLE_D
    block = max(16, triton.next_power_of_2(d)) if single else CHUNK_D
    warps = 16 if block >= 8192 else 8 if block >= 2048 else 4 if block >= 512 else 1
    return {"BLOCK_D": block, "SINGLE": single, "num_warps": warps, "num_stages": 3}


def launch_configs(ds=(4096, 3584)) -> list:
    """Every configuration pick_config returns for row lengths ds, plus the chunked path."""
    out = []
    for d in (*ds, MAX_SINGLE_D + 1):
        cfg = pick_config(d)
        if cfg not in out:
            out.append(cfg)
    return out


def _check_rows(name: str, t: torch.Tensor, N: int, d: int, dtype: torch.dtype, device) -> None:
    if t.shape != (N, d):
        raise ValueError(f"{name} must be [N={N}, d={d}], got {tuple(t.shape)}")
    if t.dtype != dtype or t.device != device:
        raise ValueError(f"{name} must be {dtype} on {device} like x, got {t.dtype} on "
                         f"{t.device}")
    if d > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} needs a contiguous last dimension, got strides {t.stride()}")


def add_rms_norm(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                 eps: float, *, out_sum: Optional[torch.Tensor] = None):
    """x [N, d], delta [N, d] or None, weight [d] (one of fp32/fp16/bf16) -> s [N, d], y [N, d].

    s = x + delta rounded to x.dtype; y = (rms_norm(s) rounded to the dtype) * weight, rounded:
    reference.add_rms_norm. Rows of x, delta and out_sum may be strided (last dim contiguous).
    s is written to out_sum when given (it may be x itself: an in-place residual update), else
    to a new tensor; with delta None, s is x itself (or x copied into out_sum). y is new and
    contiguous."""
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must be [N, d] with d >= 1, got {tuple(x.shape)}")
    N, d = x.shape
    if x.dtype not in FLOATS:
        raise ValueError(f"x must be one of {FLOATS}, got {x.dtype}")
    _check_rows("x", x, N, d, x.dtype, x.device)
    for name, t in (("delta", delta), ("out_sum", out_sum)):
        if t is not None:
            _check_rows(name, t, N, d, x.dtype, x.device)
    if weight.shape != (d,) or weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight must be [{d}] {x.dtype} on {x.device}, got "
                         f"{tuple(weight.shape)} {weight.dtype} on {weight.device}")
    if d > 1 and weight.stride(0) != 1:
        raise ValueError("weight must be contiguous")
    if delta is None:
        s = x if out_sum is None else out_sum
    else:
        s = torch.empty_like(x, memory_format=torch.contiguous_format) if out_sum is None \
            else out_sum
    y = torch.empty((N, d), dtype=x.dtype, device=x.device)
    if N == 0:
        return s, y
    cfg = pick_config(d)
    dl = x if delta is None else delta  # unread without delta
    _add_rms_norm_kernel[(N,)](
        x, dl, weight, s, y, d, float(eps), x.stride(0), dl.stride(0), s.stride(0), y.stride(0),
        HAS_DELTA=delta is not None, STORE_S=delta is not None or s is not x,
        BLOCK_D=cfg["BLOCK_D"], SINGLE=cfg["SINGLE"], BF16_RNE=bf16_rne(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return s, y
