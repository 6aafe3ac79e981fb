"""fp32 -> model dtype cast shared by the elementwise kernels (add_rms_norm, rope_kv, silu_mul).

The GPU rounds fp32 -> bf16 to nearest even, as torch does; the Triton interpreter truncates. So
under the interpreter (BF16_RNE) the kernels round with integer ops first, after which the
interpreter's truncating cast is exact: CPU tests can then demand bit equality in bf16."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _round_bf16_rne(y):
    """fp32 y -> fp32 holding the nearest-even bf16 value (low 16 bits zero)."""
    bits = y.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def cast(y, dtype: tl.constexpr, BF16_RNE: tl.constexpr):
    """fp32 y -> dtype, rounded to nearest even (BF16_RNE: by integer ops, for the interpreter)."""
    if BF16_RNE:
        out = _round_bf16_rne(y).to(dtype)
    else:
        out = y.to(dtype)
    return out


def bf16_rne(dtype: torch.dtype) -> bool:
    """The BF16_RNE flag for a launch: bf16 under the Triton interpreter."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
