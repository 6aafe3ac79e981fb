"""The fused fp32 CPU ops of the torch backend (csrc/cpu/fused_cpu.c, built as fastdiff._cpu_ops).

On a CPU a denoising step at the small shapes is dominated, after the GEMMs and attention, by
the dispatch cost of many tiny elementwise torch ops (RoPE alone was ~15 ops per layer): these
two ops do that work in one pass each. Same contracts as the TorchOps methods they stand in
for (fastdiff/ops/torch_backend.py); tests/test_cpu_fused.py compares them with those and with
fastdiff/ops/reference.py. They take fp32 CPU tensors only: `usable(...)` says whether a call
qualifies, and TorchOps keeps its torch composition for everything else (other dtypes, GPU).

Without the extension (no C compiler at install) `available()` is False, TorchOps runs the torch
composition and logs one warning: the tokens can differ only where fp32 rounding decides a tie."""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("fastdiff")

try:
    from .. import _cpu_ops as _ext
except ImportError as e:  # not built: see setup.py
    _ext, _WHY = None, str(e)
else:
    _WHY = ""

_warned = False


def available() -> bool:
    """True when fastdiff._cpu_ops was built; otherwise warns once (the fix in the message)."""
    global _warned
    if _ext is None and not _warned:
        _warned = True
        log.warning("fastdiff._cpu_ops is not built (%s): the CPU torch path runs unfused torch "
                    "ops (slower). Install a C compiler and reinstall fastdiff "
                    "(pip install -e .) to build it.", _WHY)
    return _ext is not None


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """Every given tensor is fp32 on the CPU, and the extension is built."""
    return all(t is None or (t.dtype == torch.float32 and t.is_cpu) for t in tensors) \
        and available()


def add_rms_norm(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 x, delta [..., d] (delta None: no add), weight [d] -> (s = x + delta, RMSNorm(s) *
    weight): one pass per row (TorchOps.add_rms_norm's contract)."""
    d = x.shape[-1]
    if weight.shape != (d,) or (delta is not None and delta.shape != x.shape):
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)}, delta "
                         f"{None if delta is None else tuple(delta.shape)}, weight "
                         f"{tuple(weight.shape)} do not match")
    x = x.contiguous()
    w = weight.contiguous()
    if delta is None:
        s = x
    else:
        delta = delta.contiguous()
        s = torch.empty_like(x)
    n = torch.empty_like(x)
    _ext.add_rms_norm(x.data_ptr(), 0 if delta is None else delta.data_ptr(), w.data_ptr(),
                      s.data_ptr(), n.data_ptr(), x.numel() // d if d else 0, d, float(eps))
    return s, n


def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, k_dest: torch.Tensor, v_dest: torch.Tensor, *, n_heads: int,
            n_kv_heads: int, head_dim: int, q_norm: Optional[torch.Tensor] = None,
            k_norm: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """TorchOps.rope_kv's contract on fp32 CPU tensors, in one pass: returns q [B, S, H, D]
    (contiguous); writes RoPE(k) and v into slot[b, s] of k_dest / v_dest (-1: the last slot)."""
    B, S, width = qkv.shape
    H, Hkv, D = n_heads, n_kv_heads, head_dim
    if width != (H + 2 * Hkv) * D:
        raise ValueError(f"rope_kv: qkv width {width} != (n_heads + 2 n_kv_heads) head_dim = "
                         f"{(H + 2 * Hkv) * D}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm go together: pass both or neither")
    if pos.dtype != torch.int64 or slot.dtype != torch.int32 or pos.shape != (B, S) or \
            slot.shape != (B, S):
        raise ValueError(f"rope_kv: pos must be int64 and slot int32, both [B, S] = {(B, S)}; "
                         f"got {pos.dtype} {tuple(pos.shape)}, {slot.dtype} {tuple(slot.shape)}")
    kshape = (B, Hkv, k_dest.shape[2], D)
    if tuple(k_dest.shape) != kshape or tuple(v_dest.shape) != kshape or \
            k_dest.stride(-1) != 1 or v_dest.stride(-1) != 1:
        raise ValueError(f"rope_kv: k_dest / v_dest must be {kshape} with a contiguous last dim")
    if cos.shape != sin.shape or cos.shape[-1] != D // 2:
        raise ValueError(f"rope_kv: cos/sin tables must be [positions, {D // 2}]")
    qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
    qn = None if q_norm is None else q_norm.contiguous()
    kn = None if k_norm is None else k_norm.contiguous()
    q = torch.empty(B, S, H, D, dtype=qkv.dtype)
    _ext.rope_kv(qkv.data_ptr(), B, S, H, Hkv, D, pos.data_ptr(), pos.stride(0), pos.stride(1),
                 slot.data_ptr(), slot.stride(0), slot.stride(1), cos.data_ptr(), sin.data_ptr(),
                 cos.shape[0], k_dest.data_ptr(), *k_dest.stride()[:3], v_dest.data_ptr(),
                 *v_dest.stride()[:3], k_dest.shape[2], q.data_ptr(),
                 0 if qn is None else qn.data_ptr(), 0 if kn is None else kn.data_ptr(),
                 float(eps))
    return q
