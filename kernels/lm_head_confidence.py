"""Fused LM head + confidence: logits = hidden @ W^T are never written to memory.

Pass 1 (_lm_head_partial_kernel), grid (row blocks, vocabulary splits): each program multiplies
BLOCK_N scored rows by its contiguous range of vocabulary tiles (so the [V, d] weight is read
once per step when the rows fit one block) and keeps running per-row statistics of the scored
distribution z = logit * scale (scale 1, or 1/T for the Dream modes): max, second max, sum exp,
entropy sum, and the winner (argmax of logit / T + Gumbel, or of the logit at T = 0) with its z.
Pass 2 (_lm_head_combine_kernel), one program per BLOCK_R rows: merges the splits and turns the
statistics into x0 and the confidence. Semantics: fastdiff.ops.reference.lm_head_confidence."""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._checks import per_row_contiguous

MODES = {"low_confidence": 0, "random": 1, "maskgit_plus": 2, "maxprob": 3, "margin": 4,
         "neg_entropy": 5}
NEG_INF = tl.constexpr(float("-inf"))
# partial stats per (split, row): max, 2nd max, sum exp, entropy sum, winner key, winner z
N_FIELDS = tl.constexpr(6)


@triton.jit
def _uniform(seed, col, pos, step, STREAM: tl.constexpr):
    """U[0, 1) fp32 as reference.uniform: Philox(key=seed, counter=(col, pos, step, stream))."""
    r, _, _, _ = tl.philox(seed, col.to(tl.uint32), pos.to(tl.uint32), step.to(tl.uint32), STREAM)
    x = r.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10


@triton.jit
def _empty_stats(R: tl.constexpr):
    """Running stats of R rows before any tile: max, second max, sum-exp, entropy sum, Gumbel
    winner key, its index, its scaled logit."""
    neg = tl.full((R,), NEG_INF, tl.float32)
    zero = tl.zeros((R,), tl.float32)
    return neg, neg, zero, zero, neg, tl.zeros((R,), tl.int32), neg


@triton.jit
def _merge(m, m2, s, e, wk, wi, wz, tm, tm2, ts, te, tk, ti, tz):
    """Merge running stats with a later chunk's (same row vectors); earlier chunk wins ties.
    s = sum exp(z - m), e = sum exp(z - m) * (z - m), relative to each side's own max."""
    nm = tl.maximum(m, tm)
    safe = tl.where(nm == NEG_INF, 0.0, nm)
    a = tl.where(m == NEG_INF, 0.0, tl.exp(m - safe))
    c = tl.where(tm == NEG_INF, 0.0, tl.exp(tm - safe))
    e_new = a * (e + tl.where(m == NEG_INF, 0.0, m - safe) * s) \
        + c * (te + tl.where(tm == NEG_INF, 0.0, tm - safe) * ts)
    s_new = a * s + c * ts
    m2_new = tl.maximum(tl.minimum(m, tm), tl.maximum(m2, tm2))
    better = tk > wk
    return (nm, m2_new, s_new, e_new, tl.where(better, tk, wk), tl.where(better, ti, wi),
            tl.where(better, tz, wz))


@triton.jit
def _lm_head_partial_kernel(h_ptr, rowmap_ptr, w_ptr, seed_ptr, step_ptr, posb_ptr, part_ptr,
                            pidx_ptr, N, Lb, d, V, n_tiles, tiles_per_split,
                            stride_hb, stride_hs, stride_rm, stride_w, scale, temperature,
                            suppress_id, SAMPLE: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                            BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # flattened (b, j)
    rmask = rows < N
    b = rows // Lb
    j = rows % Lb
    src = tl.maximum(tl.load(rowmap_ptr + b * stride_rm + j, mask=rmask, other=0), 0)
    h_row = h_ptr + b.to(tl.int64) * stride_hb + src.to(tl.int64) * stride_hs  # [BLOCK_N]
    if SAMPLE:
        seed = tl.load(seed_ptr + b, mask=rmask, other=0).to(tl.int64)
        step = tl.load(step_ptr + b, mask=rmask, other=0)
        pos = tl.load(posb_ptr + b, mask=rmask, other=0) + j
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = tl.arange(0, BLOCK_V)
    m, m2, s, e, wk, wi, wz = _empty_stats(BLOCK_N)
    t_lo = pid_s * tiles_per_split
    t_hi = tl.minimum(t_lo + tiles_per_split, n_tiles)
    for t in range(t_lo, t_hi):
        cols = t * BLOCK_V + offs_v  # [BLOCK_V]
        cmask = cols < V
        w_row = w_ptr + cols.to(tl.int64) * stride_w
        acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        for k0 in range(0, d, BLOCK_K):
            kk = k0 + offs_k
            kmask = kk < d
            hk = tl.load(h_row[:, None] + kk[None, :], mask=rmask[:, None] & kmask[None, :],
                         other=0.0)
            wt = tl.load(w_row[None, :] + kk[:, None], mask=kmask[:, None] & cmask[None, :],
                         other=0.0)  # [BLOCK_K, BLOCK_V]
            if UPCAST:
                hk = hk.to(tl.float32)
                wt = wt.to(tl.float32)
            if IEEE:
                acc = tl.dot(hk, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(hk, wt, acc)
        logit = tl.where(cmask[None, :], acc, NEG_INF)
        logit = tl.where(cols[None, :] == suppress_id, NEG_INF, logit)  # -1: none
        z = logit * scale
        tm = tl.max(z, axis=1)
        targ = tl.argmax(z, axis=1, tie_break_left=True)
        tm2 = tl.max(tl.where(offs_v[None, :] == targ[:, None], NEG_INF, z), axis=1)
        safe = tl.where(tm == NEG_INF, 0.0, tm)
        zr = z - safe[:, None]
        pe = tl.where(z == NEG_INF, 0.0, tl.exp(zr))
        ts = tl.sum(pe, axis=1)
        te = tl.sum(tl.where(z == NEG_INF, 0.0, pe * zr), axis=1)
        if SAMPLE:
            u = _uniform(seed[:, None], cols[None, :], pos[:, None], step[:, None], 0)
            key = logit / temperature - tl.log(-tl.log(u))
            tk = tl.max(key, axis=1)
            ka = tl.argmax(key, axis=1, tie_break_left=True)
            tz = tl.max(tl.where(offs_v[None, :] == ka[:, None], z, NEG_INF), axis=1)
        else:
            tk = tm
            ka = targ
            tz = tm
        m, m2, s, e, wk, wi, wz = _merge(m, m2, s, e, wk, wi, wz, tm, tm2, ts, te, tk,
                                         t * BLOCK_V + ka, tz)
    base = part_ptr + pid_s * N_FIELDS * N + rows
    tl.store(base, m, mask=rmask)
    tl.store(base + N, m2, mask=rmask)
    tl.store(base + 2 * N, s, mask=rmask)
    tl.store(base + 3 * N, e, mask=rmask)
    tl.store(base + 4 * N, wk, mask=rmask)
    tl.store(base + 5 * N, wz, mask=rmask)
    tl.store(pidx_ptr + pid_s * N + rows, wi, mask=rmask)


@triton.jit
def _lm_head_combine_kernel(part_ptr, pidx_ptr, rowmap_ptr, seed_ptr, step_ptr, posb_ptr,
                            x0_ptr, conf_ptr, N, Lb, n_splits, stride_rm, eos_id, eot_id,
                            MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < N
    offs_s = tl.arange(0, BLOCK_S)
    m, m2, s, e, wk, wi, wz = _empty_stats(BLOCK_R)
    for s0 in range(0, n_splits, BLOCK_S):
        sp = s0 + offs_s  # [BLOCK_S]
        msk = (sp[:, None] < n_splits) & rmask[None, :]
        ptr = part_ptr + sp[:, None] * (N_FIELDS * N) + rows[None, :]  # [BLOCK_S, BLOCK_R]
        pm = tl.load(ptr, mask=msk, other=NEG_INF)
        pm2 = tl.load(ptr + N, mask=msk, other=NEG_INF)
        ps = tl.load(ptr + 2 * N, mask=msk, other=0.0)
        pe = tl.load(ptr + 3 * N, mask=msk, other=0.0)
        pk = tl.load(ptr + 4 * N, mask=msk, other=NEG_INF)
        pz = tl.load(ptr + 5 * N, mask=msk, other=NEG_INF)
        pi = tl.load(pidx_ptr + sp[:, None] * N + rows[None, :], mask=msk, other=0)
        tm = tl.max(pm, axis=0)
        am = tl.argmax(pm, axis=0, tie_break_left=True)
        tm2 = tl.maximum(tl.max(tl.where(offs_s[:, None] == am[None, :], NEG_INF, pm), axis=0),
                         tl.max(pm2, axis=0))
        safe = tl.where(tm == NEG_INF, 0.0, tm)
        a = tl.where(pm == NEG_INF, 0.0, tl.exp(pm - safe[None, :]))
        ts = tl.sum(a * ps, axis=0)
        te = tl.sum(a * (pe + tl.where(pm == NEG_INF, 0.0, pm - safe[None, :]) * ps), axis=0)
        tk = tl.max(pk, axis=0)
        ak = tl.argmax(pk, axis=0, tie_break_left=True)
        win = offs_s[:, None] == ak[None, :]
        ti = tl.sum(tl.where(win, pi, 0), axis=0)
        tz = tl.max(tl.where(win, pz, NEG_INF), axis=0)
        m, m2, s, e, wk, wi, wz = _merge(m, m2, s, e, wk, wi, wz, tm, tm2, ts, te, tk, ti, tz)
    b = rows // Lb
    j = rows % Lb
    if MODE == 1:  # random
        seed = tl.load(seed_ptr + b, mask=rmask, other=0).to(tl.int64)
        step = tl.load(step_ptr + b, mask=rmask, other=0)
        pos = tl.load(posb_ptr + b, mask=rmask, other=0) + j
        conf = _uniform(seed, tl.zeros_like(j), pos, step, 1)
    elif MODE == 3:  # maxprob
        conf = 1.0 / s
    elif MODE == 4:  # margin
        conf = (1.0 - tl.exp(m2 - m)) / s
    elif MODE == 5:  # neg_entropy = sum p log p
        conf = e / s - tl.log(s)
    else:  # low_confidence / maskgit_plus: p[x0]
        conf = tl.exp(wz - m) / s
    conf = tl.where((wi == eos_id) | (wi == eot_id), -1.0, conf)  # ids -1: rule off
    scored = tl.load(rowmap_ptr + b * stride_rm + j, mask=rmask, other=-1) >= 0
    conf = tl.where(scored, conf, NEG_INF)
    tl.store(x0_ptr + rows, wi.to(tl.int64), mask=rmask)
    tl.store(conf_ptr + rows, conf, mask=rmask)


# ----------------------------------------------------------------------------- launcher

BLOCK_R = 16
BLOCK_S = 64


def pick_config(N: int, dtype: torch.dtype) -> dict:
    """Rows per program (the weight is re-read once per row block), vocabulary tile, K chunk.

    Every choice compiles without register spills on sm_90 (ptxas -v, aligned or not, with and
    without SAMPLE: tests/_compile_sm90.py). 8 warps and modest [BLOCK_K, BLOCK_V] weight tiles
    (8-16 KB, three loads in flight with 4 stages) keep the weight streaming once per row block
    without the 255-register cliff that [128, 128] tiles at 4 warps hit."""
    if dtype == torch.float32:  # IEEE fp32 dot runs on FMA units: not a fast path, one shape
        return {"BLOCK_N": 32, "BLOCK_V": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3}
    block_n = 16 if N <= 16 else (32 if N <= 32 else 64)
    return {"BLOCK_N": block_n, "BLOCK_V": 128 if block_n == 16 else 64, "BLOCK_K": 64,
            "num_warps": 8, "num_stages": 4}


def launch_configs():
    """(dtype, partial-kernel config) pairs pick_config can return, for the compile test."""
    out = []
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for n in (16, 32, 64):
            cfg = pick_config(n, dt)
            if (dt, cfg) not in out:
                out.append((dt, cfg))
    return out


def _num_splits(n_row_blocks: int, n_tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: few programs, but still several splits to merge
        target = 4
    return max(1, min(n_tiles, triton.cdiv(target, n_row_blocks)))


def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                       mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                       pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                       suppress_eos: bool, eos_eot_conf: bool,
                       num_splits: Optional[int] = None):
    """hidden [B, S, d], row_map int32 [B, Lb] (-1 = not scored), W [V, d], seed/step/pos_base
    int [B] -> x0 int64 [B, Lb], conf fp32 [B, Lb] (-inf where not scored).

    Same semantics as reference.lm_head_confidence; logits never reach memory. num_splits
    overrides the vocabulary split count (tests)."""
    if mode not in MODES:
        raise ValueError(f"unknown confidence mode {mode!r}; allowed: {tuple(MODES)}")
    if hidden.dim() != 3 or row_map.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"expected hidden [B, S, d], row_map [B, Lb], W [V, d]; got "
                         f"{tuple(hidden.shape)}, {tuple(row_map.shape)}, {tuple(weight.shape)}")
    B, S, d = hidden.shape
    V = weight.shape[0]
    Lb = row_map.shape[1]
    dev = hidden.device
    if row_map.shape[0] != B or weight.shape[1] != d:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, row_map "
                         f"{tuple(row_map.shape)}, W {tuple(weight.shape)}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16) or \
            weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and W must share one of fp32/fp16/bf16, got {hidden.dtype}, "
                         f"{weight.dtype}")
    if row_map.dtype != torch.int32:
        raise ValueError(f"row_map must be int32, got {row_map.dtype}")
    if hidden.stride(2) != 1 or weight.stride(1) != 1 or row_map.stride(1) != 1:
        raise ValueError("hidden, W and row_map need a contiguous last dimension")
    for name, t in (("seed", seed), ("step", step), ("pos_base", pos_base)):
        if t.shape != (B,) or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be an int32/int64 [B={B}] tensor, got {t.dtype} "
                             f"{tuple(t.shape)}")
    for name, t in (("row_map", row_map), ("weight", weight), ("seed", seed), ("step", step),
                    ("pos_base", pos_base)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device}, hidden on {dev}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 <= eos_id < V or (eot_id is not None and not 0 <= eot_id < V):
        raise ValueError(f"eos_id={eos_id} / eot_id={eot_id} must be token ids in [0, {V})")
    per_row_contiguous(seed=seed, step=step, pos_base=pos_base)
    N = B * Lb
    if N == 0:
        return (torch.empty((B, Lb), dtype=torch.int64, device=dev),
                torch.empty((B, Lb), dtype=torch.float32, device=dev))
    cfg = pick_config(N, hidden.dtype)
    n_row_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    n_tiles = triton.cdiv(V, cfg["BLOCK_V"])
    splits = num_splits if num_splits is not None else _num_splits(n_row_blocks, n_tiles, dev)
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(splits, n_tiles)))
    splits = triton.cdiv(n_tiles, tiles_per_split)
    sample = temperature > 0
    scale = 1.0 / temperature if sample and mode not in ("low_confidence", "random") else 1.0
    part = torch.empty((splits, N_FIELDS.value, N), dtype=torch.float32, device=dev)
    pidx = torch.empty((splits, N), dtype=torch.int32, device=dev)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    _lm_head_partial_kernel[(n_row_blocks, splits)](
        hidden, row_map, weight, seed, step, pos_base, part, pidx, N, Lb, d, V, n_tiles,
        tiles_per_split, hidden.stride(0), hidden.stride(1), row_map.stride(0),
        weight.stride(0), scale, float(temperature) if sample else 1.0,
        eos_id if suppress_eos else -1, SAMPLE=sample, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_V=cfg["BLOCK_V"], BLOCK_K=cfg["BLOCK_K"],
        UPCAST=interpret or hidden.dtype == torch.float32,
        IEEE=hidden.dtype == torch.float32 or interpret,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    x0 = torch.empty((B, Lb), dtype=torch.int64, device=dev)
    conf = torch.empty((B, Lb), dtype=torch.float32, device=dev)
    _lm_head_combine_kernel[(triton.cdiv(N, BLOCK_R),)](
        part, pidx, row_map, seed, step, pos_base, x0, conf, N, Lb, splits, row_map.stride(0),
        eos_id if eos_eot_conf else -1, eot_id if eos_eot_conf and eot_id is not None else -1,
        MODE=MODES[mode], BLOCK_R=BLOCK_R, BLOCK_S=BLOCK_S, num_warps=4)
    return x0, conf
