"""QK-norm + RoPE on q and k + KV-store write in one launch, from the fused Q/K/V GEMM's output.

Grid (B * S tokens, head tiles): each program takes BLOCK_H consecutive heads of one token from
the [q heads | k heads | v heads] row, gathers cos/sin at the token's position from a [T, D/2]
table, optionally RMS-normalizes each q / k head vector by q_norm / k_norm (QK_NORM: Qwen3 /
SDAR; statistics and weight product in fp32, as flash-attn's rms_norm_fn), rotates q and k heads
in fp32 (rotate-half form: lo' = lo cos - hi sin, hi' = hi cos + lo sin), rounds once, and writes
q heads to a new [B, S, H, D] tensor, rotated k heads and unrotated v heads to the token's slot
of k_dest / v_dest (skipped where slot < 0). A head tile may straddle the q / k / v boundaries;
masks pick the destination per head. Semantics: fastdiff.ops.reference.rope_kv."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from fastdiff.kernels._rounding import bf16_rne, cast

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
TILE = 1024  # elements per half-head tile of a program (BLOCK_H * BLOCK_HALF)


@triton.jit
def _rope_kv_kernel(qkv_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
                    qn_ptr, kn_ptr, eps,
                    S, T, T_kv, H, HKV, stride_qkv_b, stride_qkv_s, stride_pos, stride_slot,
                    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
                    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr,
                    QK_NORM: tl.constexpr, BF16_RNE: tl.constexpr):
    tok = tl.program_id(0)
    b = (tok // S).to(tl.int64)
    s = tok % S
    j = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] head in [q | k | v]
    i = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF]
    im = i < HALF
    pos = tl.load(pos_ptr + b * stride_pos + s).to(tl.int64)
    slot = tl.load(slot_ptr + b * stride_slot + s).to(tl.int64)
    # comparisons on blocks, not scalars: triton 3.9's interpreter rejects a scalar
    # comparison broadcast into a mask (it carries int32, not int1)
    pi = pos + tl.zeros_like(i)
    pm = im & (pi >= 0) & (pi < T)  # out-of-table positions read zeros instead of memory
    c = tl.load(cos_ptr + pos * HALF + i, mask=pm, other=0.0)[None, :]  # [1, BLOCK_HALF]
    sn = tl.load(sin_ptr + pos * HALF + i, mask=pm, other=0.0)[None, :]
    m = (j < H + 2 * HKV)[:, None] & im[None, :]  # [BLOCK_H, BLOCK_HALF]
    src = qkv_ptr + b * stride_qkv_b + s.to(tl.int64) * stride_qkv_s \
        + j[:, None].to(tl.int64) * (2 * HALF) + i[None, :]
    lo = tl.load(src, mask=m, other=0.0).to(tl.float32)
    hi = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
    is_v = (j >= H + HKV)[:, None]
    if QK_NORM:  # x * rsqrt(mean(x^2) + eps) * w per head vector, all fp32 (masked lanes are 0)
        rstd = tl.rsqrt(tl.sum(lo * lo + hi * hi, axis=1) / (2 * HALF) + eps)[:, None]
        is_q = (j < H)[:, None]
        w_lo = tl.where(is_q, tl.load(qn_ptr + i, mask=im, other=0.0).to(tl.float32)[None, :],
                        tl.load(kn_ptr + i, mask=im, other=0.0).to(tl.float32)[None, :])
        w_hi = tl.where(is_q,
                        tl.load(qn_ptr + HALF + i, mask=im, other=0.0).to(tl.float32)[None, :],
                        tl.load(kn_ptr + HALF + i, mask=im, other=0.0).to(tl.float32)[None, :])
        lo = tl.where(is_v, lo, lo * rstd * w_lo)
        hi = tl.where(is_v, hi, hi * rstd * w_hi)
    lo_r = tl.where(is_v, lo, lo * c - hi * sn)
    hi_r = tl.where(is_v, hi, hi * c + lo * sn)
    dt = q_ptr.dtype.element_ty
    lo_o = cast(lo_r, dt, BF16_RNE)
    hi_o = cast(hi_r, dt, BF16_RNE)
    # q heads j < H -> q[b, s, j]
    qm = m & (j < H)[:, None]
    qd = q_ptr + tok.to(tl.int64) * H * (2 * HALF) + j[:, None] * (2 * HALF) + i[None, :]
    tl.store(qd, lo_o, mask=qm)
    tl.store(qd + HALF, hi_o, mask=qm)
    # k heads H <= j < H + HKV -> k_dest[b, j - H, slot]; v heads -> v_dest[b, j - H - HKV, slot]
    sl = slot + tl.zeros_like(i)[None, :]
    stored = (sl >= 0) & (sl < T_kv)  # [1, BLOCK_HALF]
    km = m & ((j >= H) & (j < H + HKV))[:, None] & stored
    kd = k_ptr + b * stride_kb + (j[:, None] - H).to(tl.int64) * stride_kh + slot * stride_kt \
        + i[None, :]
    tl.store(kd, lo_o, mask=km)
    tl.store(kd + HALF, hi_o, mask=km)
    vm = m & is_v & stored
    vd = v_ptr + b * stride_vb + (j[:, None] - H - HKV).to(tl.int64) * stride_vh \
        + slot * stride_vt + i[None, :]
    tl.store(vd, lo_o, mask=vm)
    tl.store(vd + HALF, hi_o, mask=vm)


def pick_config(head_dim: int, n_heads_total: int) -> dict:
    """Launch heuristic: half-head block, heads per program (about TILE elements), warps."""
    block_half = triton.next_power_of_2(head_dim // 2)
    block_h = min(triton.next_power_of_2(n_heads_total), max(1, TILE // block_half))
    return {"BLOCK_HALF": block_half, "BLOCK_H": block_h,
            "num_warps": 4 if block_h * block_half >= 512 else 1, "num_stages": 1}


def launch_configs(shapes=((32, 32, 128), (28, 4, 128), (32, 8, 128))) -> list:
    """(head_dim, config) for every choice pick_config makes at (H, Hkv, D) shapes (default:
    LLaDA-8B, Dream-7B and SDAR-4B/8B)."""
    out = []
    for H, Hkv, D in shapes:
        item = (D, pick_config(D, H + 2 * Hkv))
        if item not in out:
            out.append(item)
    return out


def _check(name: str, t: torch.Tensor, shape: tuple, dtypes: tuple, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {list(shape)}, got {list(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be one of {dtypes}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, qkv on {device}")
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} needs a contiguous last dimension, got strides {t.stride()}")


def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, k_dest: torch.Tensor, v_dest: torch.Tensor, *, n_heads: int,
            n_kv_heads: int, head_dim: int, q_norm: Optional[torch.Tensor] = None,
            k_norm: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    """qkv [B, S, (H + 2 Hkv) D], pos int [B, S], slot int [B, S], cos/sin fp32 [T, D/2],
    k_dest/v_dest [B, Hkv, T_kv, D], q_norm/k_norm [D] or None -> q [B, S, H, D] (RoPE'd); k/v
    written at the slots.

    qkv is [q heads | k heads | v heads] in fp32/fp16/bf16 (any batch / token strides, last dim
    contiguous). Returns a new contiguous q = RoPE(q heads); writes k_dest[b, h, slot[b, s]] =
    RoPE(k head h) and v_dest[b, h, slot[b, s]] = v head h where 0 <= slot < T_kv (-1: not
    stored; the slots of a row must be distinct). pos must lie in [0, T) (outside, cos = sin = 0
    is read: no out-of-bounds access). k_dest/v_dest are strided views (last dim contiguous),
    e.g. a layer's slice of the KV store. cos/sin: reference.rope_cos_sin of positions 0..T-1,
    first half. q_norm/k_norm (both or neither; qkv's dtype, contiguous): every q / k head vector
    is first RMS-normalized, x * rsqrt(mean(x^2) + eps) * w in fp32 (QK-norm before RoPE, Qwen3 /
    SDAR), with one rounding after RoPE. Semantics: reference.rope_kv."""
    H, Hkv, D = n_heads, n_kv_heads, head_dim
    if H < 1 or Hkv < 1 or H % Hkv:
        raise ValueError(f"n_heads={H} must be a positive multiple of n_kv_heads={Hkv}")
    if D < 2 or D % 2 or D > MAX_HEAD_DIM:
        raise ValueError(f"head_dim={D} must be even and in [2, {MAX_HEAD_DIM}]")
    if qkv.dim() != 3 or qkv.shape[2] != (H + 2 * Hkv) * D:
        raise ValueError(f"qkv must be [B, S, (H + 2 Hkv) D = {(H + 2 * Hkv) * D}], got "
                         f"{list(qkv.shape)}")
    B, S, _ = qkv.shape
    dev = qkv.device
    _check("qkv", qkv, qkv.shape, FLOATS, dev)
    _check("pos", pos, (B, S), (torch.int64, torch.int32), dev)
    _check("slot", slot, (B, S), (torch.int32, torch.int64), dev)
    if cos.dim() != 2 or cos.shape[1] != D // 2:
        raise ValueError(f"cos must be [T, D/2 = {D // 2}], got {list(cos.shape)}")
    T = cos.shape[0]
    for name, t in (("cos", cos), ("sin", sin)):
        _check(name, t, (T, D // 2), (torch.float32,), dev)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if k_dest.dim() != 4:
        raise ValueError(f"k_dest must be [B, Hkv, T_kv, D], got {list(k_dest.shape)}")
    T_kv = k_dest.shape[2]
    for name, t in (("k_dest", k_dest), ("v_dest", v_dest)):
        _check(name, t, (B, Hkv, T_kv, D), (qkv.dtype,), dev)
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm go together: pass both or neither")
    for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
        if w is not None:
            _check(name, w, (D,), (qkv.dtype,), dev)
    q = torch.empty((B, S, H, D), dtype=qkv.dtype, device=dev)
    if B * S == 0:
        return q
    cfg = pick_config(D, H + 2 * Hkv)
    grid = (B * S, triton.cdiv(H + 2 * Hkv, cfg["BLOCK_H"]))
    _rope_kv_kernel[grid](
        qkv, pos, slot, cos, sin, q, k_dest, v_dest,
        qkv if q_norm is None else q_norm, qkv if k_norm is None else k_norm, float(eps),
        S, T, T_kv, H, Hkv,
        qkv.stride(0), qkv.stride(1), pos.stride(0), slot.stride(0),
        k_dest.stride(0), k_dest.stride(1), k_dest.stride(2),
        v_dest.stride(0), v_dest.stride(1), v_dest.stride(2),
        HALF=D // 2, BLOCK_HALF=cfg["BLOCK_HALF"], BLOCK_H=cfg["BLOCK_H"],
        QK_NORM=q_norm is not None, BF16_RNE=bf16_rne(qkv.dtype), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return q
