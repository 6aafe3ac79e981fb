"""Flash attention forward with GQA, strided k/v, per-row key ranges and an optional
block-causal mask.

GQA packing: the GROUP query heads that share a KV head are one program's rows (row r of KV
head hk is query head hk * GROUP + r // Sq, position r % Sq), so each K/V tile is loaded once
for all of them. One program per (row block, batch x KV head[, KV split]). Each walks its keys
[lo, hi) in BLOCK_N tiles with an online softmax (exp2, fp32 statistics). For short query
blocks (Sq <= 64, the block-decoding step against a long cache) the keys are split across
programs so a batch-1 step fills the GPU; each split writes an unnormalized partial (acc, max,
sum) and _attention_combine_kernel merges them. BLOCK_CAUSAL (block diffusion's prefill, key
block <= query block, query m at key column q_start + m): each row's first disallowed key is
lim = ((q_start + m) // bk + 1) * bk; a program stops at the largest lim of its rows (the key
tiles above it are never loaded: about half the work of a square prefill) and masks per row in
the tiles it visits. (One loop: a separate unmasked loop for the interior tiles cost ~20
registers, and the unaligned head-dim-128 [64 x 32] tile then spilled on sm_90.)
Semantics: fastdiff.ops.reference.attention; a query with no allowed key gets zeros (the
reference gives NaN)."""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._checks import per_row_contiguous

LOG2E = 1.4426950408889634
HEAD_DIMS = (32, 64, 128)
MAX_GRID_Y = 65535  # CUDA's limit on a launch grid's second dimension (B * Hkv here)
SPLIT_MAX_SQ = 64  # split-KV path for query blocks up to this length


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, start_ptr, end_ptr, po_ptr, pml_ptr,
                      Sq, Hkv, GROUP, qk_scale, chunk, q_start, bk,
                      sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      SPLIT: tl.constexpr, BLOCK_CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
                      IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)  # batch x KV head
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    lo = tl.load(start_ptr + b)
    hi = tl.load(end_ptr + b)
    if SPLIT:
        pid_s = tl.program_id(2)
        lo = tl.maximum(lo, pid_s * chunk)
        hi = tl.minimum(hi, (pid_s + 1) * chunk)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # packed rows of this KV head
    offs_d = tl.arange(0, HEAD_DIM)
    mmask = offs_r < GROUP * Sq
    h = hk * GROUP + offs_r // Sq  # [BLOCK_M] query head of each row
    offs_m = offs_r % Sq  # its query position
    if BLOCK_CAUSAL:
        lim = ((q_start + offs_m) // bk + 1) * bk  # [BLOCK_M] first key past the row's block
        hi = tl.minimum(hi, tl.max(tl.where(mmask, lim, 0), axis=0))  # skip the tiles above
        lim = tl.minimum(lim, hi)  # [BLOCK_M] each row's keys: [lo, lim)
    q = tl.load(q_ptr + b.to(tl.int64) * sqb + h[:, None] * sqh + offs_m[:, None] * sqs
                + offs_d[None, :], mask=mmask[:, None], other=0.0)  # [BLOCK_M, D]
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b.to(tl.int64) * skb + hk * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk * svh
    # block-causal: a row may have no allowed key in its first tiles; a finite floor keeps
    # exp2(m_i - m_new) and exp2(s - m_new) at 0 instead of NaN (-inf - -inf)
    m_i = tl.full((BLOCK_M,), -1.0e30 if BLOCK_CAUSAL else float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    n_lo = tl.where(lo < hi, (lo // BLOCK_N) * BLOCK_N, hi)  # aligned tiles, each with a valid key
    for n0 in range(n_lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = (offs_n >= lo) & (offs_n < hi)
        kt = tl.load(k_base + offs_n[None, :].to(tl.int64) * sks + offs_d[:, None],
                     mask=nmask[None, :], other=0.0)  # [D, BLOCK_N]
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * svs + offs_d[None, :],
                    mask=nmask[:, None], other=0.0)  # [BLOCK_N, D]
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        if BLOCK_CAUSAL:  # per row: lo <= key < lim (as a difference: `offs_n < lim` made
            # ptxas spill the fp32 [32 x 128] split tile, a tile-relative form the [32 x 32] one)
            s = tl.where(nmask[None, :] & (offs_n[None, :] - lim[:, None] < 0),
                         s * qk_scale, float("-inf"))
        else:
            s = tl.where(nmask[None, :], s * qk_scale, float("-inf"))  # log2 domain
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    if SPLIT:
        row = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * (GROUP * Sq) + offs_r
        tl.store(po_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mmask[:, None])
        tl.store(pml_ptr + row * 2, m_i, mask=mmask)
        tl.store(pml_ptr + row * 2 + 1, l_i, mask=mmask)
    else:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + b.to(tl.int64) * sob + h[:, None] * soh + offs_m[:, None] * sos
                 + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=mmask[:, None])


@triton.jit
def _attention_combine_kernel(po_ptr, pml_ptr, o_ptr, Sq, Hkv, GROUP, BH, n_splits, sob, sos,
                              soh, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)  # batch x KV head, packed rows as in _attention_kernel
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mmask = offs_r < GROUP * Sq
    h = hk * GROUP + offs_r // Sq
    offs_m = offs_r % Sq
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    for sp in range(0, n_splits):
        row = (sp * BH + pid_bh).to(tl.int64) * (GROUP * Sq) + offs_r
        pm = tl.load(pml_ptr + row * 2, mask=mmask, other=float("-inf"))
        pl = tl.load(pml_ptr + row * 2 + 1, mask=mmask, other=0.0)
        pa = tl.load(po_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=mmask[:, None],
                     other=0.0)
        nm = tl.maximum(m, pm)
        safe = tl.where(nm == float("-inf"), 0.0, nm)
        a = tl.where(m == float("-inf"), 0.0, tl.exp2(m - safe))
        c = tl.where(pm == float("-inf"), 0.0, tl.exp2(pm - safe))
        l = l * a + pl * c
        acc = acc * a[:, None] + pa * c[:, None]
        m = nm
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    tl.store(o_ptr + b.to(tl.int64) * sob + h[:, None] * soh + offs_m[:, None] * sos
             + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=mmask[:, None])


# ----------------------------------------------------------------------------- launcher


def pick_config(Sq: int, D: int, dtype: torch.dtype) -> dict:
    """Tile sizes, warps and pipelining depth for a (packed) row count and head dim: Sq here is
    GROUP x the query length, the rows one program block walks.

    Every choice compiles without register spills on sm_90 (ptxas -v, aligned or not, split or
    not: tests/_compile_sm90.py). 64-key tiles at head_dim 128, or 4 warps on a [64, 64]
    accumulator, reach 255 registers and spill; with 8 warps ptxas caps itself near 128."""
    block_m = max(16, triton.next_power_of_2(Sq)) if Sq <= SPLIT_MAX_SQ else \
        (128 if D <= 64 and dtype != torch.float32 else 64)
    if dtype == torch.float32:  # IEEE fp32 dot runs on FMA units: not a fast path, small tiles
        block_m = min(block_m, 32)
        small = block_m == 16
        return {"BLOCK_M": block_m, "BLOCK_N": 16 if small else 32,
                "num_warps": 4 if small else 8, "num_stages": 2}
    return {"BLOCK_M": block_m, "BLOCK_N": 32 if D == 128 or block_m == 16 else 64,
            "num_warps": 8 if block_m * D >= 2048 else 4, "num_stages": 3}


def combine_warps(block_m: int, D: int) -> int:
    """Warps of the split-KV combine: 8 from a [64, 64] accumulator on (4 spill on sm_90)."""
    return 8 if block_m * D >= 4096 else 4


def launch_configs():
    """(dtype, head_dim, split, config) for every choice pick_config / the launcher can make
    (BLOCK_CAUSAL, a constexpr independent of the tiles, doubles each)."""
    out = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for D in HEAD_DIMS:
            for sq in (16, 32, 64):
                for split in (False, True):
                    item = (dt, D, split, pick_config(sq, D, dt))
                    if item not in out:
                        out.append(item)
            for split in (False, True):  # packed GQA rows > 64 of a short, split query block
                big = (dt, D, split, pick_config(SPLIT_MAX_SQ + 1, D, dt))
                if big not in out:
                    out.append(big)
    return out


def _num_splits(n_programs: int, Skv: int, block_n: int, device: torch.device) -> int:
    """Enough KV splits that a short query block gives about two programs per SM."""
    n_kv_tiles = triton.cdiv(Skv, block_n)
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2
    return max(1, min(n_kv_tiles, target // max(1, n_programs)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_start: torch.Tensor,
              kv_end: torch.Tensor, *, block_causal: int = 0, q_start: int = 0,
              num_splits: Optional[int] = None) -> torch.Tensor:
    """q [B, Sq, H, D], k/v [B, Skv, Hkv, D] (H % Hkv == 0, any strides with the last dim
    contiguous), kv_start/kv_end int32 [B] -> out [B, Sq, H, D] in q.dtype: row b attends to keys
    [start_b, end_b); block_causal = Bk > 0 adds key block <= query block: query m, at key column
    q_start + m in every row, sees key n only if n // Bk <= (q_start + m) // Bk (0: no causal
    mask). num_splits overrides the KV split count (Sq <= 64)."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q [B, Sq, H, D], k/v [B, Skv, Hkv, D]; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    B, Sq, H, D = q.shape
    _, Skv, Hkv, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D or Hkv < 1 or H % Hkv:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} disagree (batch, "
                         f"head_dim, or H not a multiple of Hkv)")
    if D not in HEAD_DIMS:
        raise ValueError(f"head_dim {D} unsupported; supported: {HEAD_DIMS}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k.dtype != q.dtype \
            or v.dtype != q.dtype:
        raise ValueError(f"q/k/v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.stride(3) != 1 or k.stride(3) != 1 or v.stride(3) != 1:
        raise ValueError("q, k and v need a contiguous last (head_dim) dimension")
    for name, t in (("kv_start", kv_start), ("kv_end", kv_end)):
        if t.shape != (B,) or t.dtype != torch.int32 or t.device != q.device:
            raise ValueError(f"{name} must be int32 [B={B}] on {q.device}, got {t.dtype} "
                             f"{tuple(t.shape)} on {t.device}")
    per_row_contiguous(kv_start=kv_start, kv_end=kv_end)
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if B * Hkv > MAX_GRID_Y:
        raise ValueError(f"batch x kv_heads = {B * Hkv} exceeds the launch grid's second "
                         f"dimension ({MAX_GRID_Y}); split the batch")
    if block_causal < 0 or q_start < 0:
        raise ValueError(f"block_causal={block_causal} and q_start={q_start} must be >= 0")
    out = torch.empty((B, Sq, H, D), dtype=q.dtype, device=q.device)
    if B == 0 or Sq == 0:
        return out
    group = H // Hkv
    rows = group * Sq  # packed rows per KV head
    cfg = pick_config(rows, D, q.dtype)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    grid_m = triton.cdiv(rows, bm)
    splits = 1
    if Sq <= SPLIT_MAX_SQ:
        splits = num_splits if num_splits is not None else \
            _num_splits(grid_m * B * Hkv, Skv, bn, q.device)
    chunk = triton.cdiv(triton.cdiv(max(Skv, 1), splits), bn) * bn  # keys per split
    splits = max(1, triton.cdiv(Skv, chunk))
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    qk_scale = LOG2E / math.sqrt(D)
    if splits > 1:
        po = torch.empty((splits, B * Hkv, rows, D), dtype=torch.float32, device=q.device)
        pml = torch.empty((splits, B * Hkv, rows, 2), dtype=torch.float32, device=q.device)
    else:
        po = pml = out
    _attention_kernel[(grid_m, B * Hkv, splits)](
        q, k, v, out, kv_start, kv_end, po, pml, Sq, Hkv, group, qk_scale, chunk, q_start,
        max(block_causal, 1),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, SPLIT=splits > 1, BLOCK_CAUSAL=block_causal > 0,
        UPCAST=interpret, IEEE=q.dtype == torch.float32 or interpret,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if splits > 1:
        _attention_combine_kernel[(grid_m, B * Hkv)](
            po, pml, out, Sq, Hkv, group, B * Hkv, splits, out.stride(0), out.stride(1),
            out.stride(2), HEAD_DIM=D, BLOCK_M=bm, num_warps=combine_warps(bm, D))
    return out
