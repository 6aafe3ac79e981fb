"""SiLU(gate) * up from the fused gate/up GEMM's output, in one launch.

Grid (rows, column blocks of BLOCK_M): each program reads gate and up at the same columns of
one [gate | up] row and writes silu(gate) * up, computed in fp32 and rounded once to the dtype.
Semantics: fastdiff.ops.reference.silu_mul(gate, up)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdiff.kernels._rounding import bf16_rne, cast

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_BLOCK_M = 1024


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, m, stride_gu, stride_out,
                     BLOCK_M: tl.constexpr, BF16_RNE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    mask = offs < m
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + m + offs, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + row * stride_out + offs, cast(out, out_ptr.dtype.element_ty, BF16_RNE),
             mask=mask)


def pick_config(m: int) -> dict:
    """Launch heuristic for m output columns per row."""
    block = min(max(16, triton.next_power_of_2(m)), MAX_BLOCK_M)
    return {"BLOCK_M": block, "num_warps": 4 if block >= 512 else 1, "num_stages": 1}


def launch_configs(ms=(12288, 18944)) -> list:
    """Every configuration pick_config returns for widths ms (default: LLaDA-8B, Dream-7B)."""
    out = []
    for m in ms:
        cfg = pick_config(m)
        if cfg not in out:
            out.append(cfg)
    return out


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """gu [N, 2m] fp32/fp16/bf16 ([gate | up]) -> out [N, m] = silu(gate) * up in gu.dtype.

    fp32 math, one rounding: reference.silu_mul(gu[:, :m], gu[:, m:]). Rows of gu may be strided
    (last dim contiguous); out is new and contiguous."""
    if gu.dim() != 2 or gu.shape[1] % 2 or gu.shape[1] == 0:
        raise ValueError(f"gu must be [N, 2m] with m >= 1, got {list(gu.shape)}")
    if gu.dtype not in FLOATS:
        raise ValueError(f"gu must be one of {FLOATS}, got {gu.dtype}")
    if gu.stride(1) != 1:
        raise ValueError(f"gu needs a contiguous last dimension, got strides {gu.stride()}")
    N, m = gu.shape[0], gu.shape[1] // 2
    out = torch.empty((N, m), dtype=gu.dtype, device=gu.device)
    if N == 0:
        return out
    cfg = pick_config(m)
    _silu_mul_kernel[(N, triton.cdiv(m, cfg["BLOCK_M"]))](
        gu, out, m, gu.stride(0), out.stride(0), BLOCK_M=cfg["BLOCK_M"],
        BF16_RNE=bf16_rne(gu.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return out
