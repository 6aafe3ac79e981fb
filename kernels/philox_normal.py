"""Standard normals from counter-based Philox + Box-Muller, for random weights drawn on a GPU.

One program per BLOCK elements: counter (index low, index high, stream, 0x5EED), key = the seed
(as triton's tl.philox splits it), u1 = ((r0 >> 8) + 0.5) 2^-24, u2 = (r1 >> 8) 2^-24,
z = sqrt(-2 log u1) cos(2 pi u2) in fp32. Semantics: fastdiff.models.writer.philox_normal's
torch path: the same draws, equal up to the float error of log / cos (a few ulps under the
interpreter; a GPU's cos may be an approximation, ~1e-6), so weights drawn on a GPU are not
bit-identical to the CPU writer's. An 8B model's weights take well under a second instead of
the torch path's ~200 int64 elementwise passes per element."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _philox_normal_kernel(out_ptr, n, seed, stream, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    lo = (idx & 0xFFFFFFFF).to(tl.uint32)
    hi = (idx >> 32).to(tl.uint32)
    c2 = (tl.zeros([BLOCK], tl.int64) + stream).to(tl.uint32)  # (stream may be a constant)
    c3 = tl.full([BLOCK], 0x5EED, tl.uint32)
    r0, r1, _, _ = tl.philox(seed, lo, hi, c2, c3)
    u1 = ((r0 >> 8).to(tl.float32) + 0.5) * 5.960464477539063e-08  # 2^-24
    u2 = (r1 >> 8).to(tl.float32) * 5.960464477539063e-08
    z = tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(u2 * 6.283185307179586)  # 2 pi
    tl.store(out_ptr + idx, z, mask=mask)


def philox_normal(seed: int, stream: int, n: int, device) -> torch.Tensor:
    """n fp32 standard normals on `device` (see the module doc)."""
    if not 0 <= seed < 2**63 or not 0 <= stream < 2**32:
        raise ValueError(f"seed={seed} must be in [0, 2**63) and stream={stream} in [0, 2**32)")
    out = torch.empty(n, dtype=torch.float32, device=device)
    if n:
        _philox_normal_kernel[(triton.cdiv(n, BLOCK),)](out, n, seed, stream, BLOCK=BLOCK,
                                                        num_warps=4)
    return out
