"""Oracles for every op: written for clarity in fp32/fp64, never optimized.

They define what the torch backend and the Triton/CUDA kernels must compute; tests compare
against them. Semantics: shared/docs/dllm-spec.md; contracts: shared/docs/design.md "Kernels".
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# ----------------------------------------------------------------------------- model ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., d], weight [d] -> [..., d] in x.dtype: normalize in fp32, cast back, times weight."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y.to(x.dtype) * weight


def add_rms_norm(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                 eps: float):
    """x [N, d], delta [N, d] or None, weight [d] -> (s, y): the residual sum s = x + delta in
    x.dtype (x itself when delta is None) and y = rms_norm(s, weight, eps)."""
    s = x if delta is None else x + delta
    return s, rms_norm(s, weight, eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """positions [B, S] int -> cos, sin [B, S, head_dim] fp32 (angles duplicated as cat(f, f))."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32,
                                       device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, S, hd/2]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t [B, S, H, D], cos/sin [B, S, D] -> rotated t in t.dtype (computed in fp32)."""
    tf = t.float()
    half = tf.shape[-1] // 2
    rot = torch.cat([-tf[..., half:], tf[..., :half]], dim=-1)  # rotate_half([a, b]) = [-b, a]
    return (tf * cos[:, :, None] + rot * sin[:, :, None]).to(t.dtype)


def qk_norm(t: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """t [..., D], weight [D] -> fp32 t * rsqrt(mean(t^2) + eps) * weight: statistics and the
    weight product in fp32, no rounding (flash-attn's rms_norm_fn before its final cast; Qwen3 /
    SDAR per-head QK-norm)."""
    tf = t.float()
    return tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor, k_dest: torch.Tensor, v_dest: torch.Tensor, *, n_heads: int,
            n_kv_heads: int, head_dim: int, q_norm: Optional[torch.Tensor] = None,
            k_norm: Optional[torch.Tensor] = None, eps: float = 1e-6):
    """qkv [B, S, (H + 2 Hkv) D] ([q heads | k heads | v heads]), pos [B, S] int (RoPE
    position), slot [B, S] int (KV slot; -1 = not stored), cos/sin fp32 [T, D/2] (angles of
    positions 0..T-1, one copy of each frequency), k_dest/v_dest [B, Hkv, T_kv, D], q_norm/k_norm
    [D] or None (both or neither) -> (q [B, S, H, D] rotated, k, v: copies of k_dest / v_dest
    with k[b, :, slot[b, s]] = rotated k heads and v[b, :, slot[b, s]] = v heads where slot >= 0).
    With q_norm/k_norm every q / k head is qk_norm'ed (fp32) before RoPE (fp32): one rounding."""
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm go together: pass both or neither")
    B, S, _ = qkv.shape
    H, Hkv, D = n_heads, n_kv_heads, head_dim
    q, k_new, v_new = qkv.view(B, S, H + 2 * Hkv, D).split([H, Hkv, Hkv], dim=2)
    c = cos[pos.long()]  # [B, S, D/2]
    s = sin[pos.long()]
    c, s = torch.cat([c, c], dim=-1), torch.cat([s, s], dim=-1)  # as rope_cos_sin: [B, S, D]
    if q_norm is not None:
        q = apply_rope(qk_norm(q, q_norm, eps), c, s).to(qkv.dtype)
        k_new = apply_rope(qk_norm(k_new, k_norm, eps), c, s).to(qkv.dtype)
    else:
        q, k_new = apply_rope(q, c, s), apply_rope(k_new, c, s)
    k, v = k_dest.clone(), v_dest.clone()
    for b in range(B):
        for i in range(S):
            t = int(slot[b, i])
            if t >= 0:
                k[b, :, t] = k_new[b, i]
                v[b, :, t] = v_new[b, i]
    return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              kv_start: torch.Tensor, kv_end: torch.Tensor, *, block_causal: int = 0,
              q_start: int = 0) -> torch.Tensor:
    """Attention. q [B, Sq, H, D], k/v [B, Skv, Hkv, D] (H % Hkv == 0), kv_start/kv_end [B]
    int: row b attends to keys [start_b, end_b) -> [B, Sq, H, D] in q.dtype. block_causal = Bk
    > 0: query m sits at key column q_start + m and also needs n // Bk <= (q_start + m) // Bk
    (key block <= query block, the grid from column 0); 0: no causal mask. A query with no
    allowed key gives NaN here (the kernels give zeros)."""
    B, Sq, H, D = q.shape
    rep = H // k.shape[2]
    kf = k.double().repeat_interleave(rep, dim=2)
    vf = v.double().repeat_interleave(rep, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), kf) / math.sqrt(D)
    j = torch.arange(k.shape[1], device=q.device)
    valid = (j[None] >= kv_start[:, None].long()) & (j[None] < kv_end[:, None].long())  # [B, Skv]
    valid = valid[:, None, :]  # [B, 1 | Sq, Skv]
    if block_causal > 0:
        m = q_start + torch.arange(Sq, device=q.device)  # key column of each query
        valid = valid & (j[None, :] // block_causal <= m[:, None] // block_causal)[None]
    scores = scores.masked_fill(~valid[:, None], float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vf)
    return out.to(q.dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [..., m] -> silu(gate) * up, computed in fp32, returned in gate.dtype."""
    g = gate.float()
    return (g * torch.sigmoid(g) * up.float()).to(gate.dtype)


# ----------------------------------------------------------------------------- randomness

_M32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor):
    """32x32 -> (hi, lo) 32-bit halves. The int64 product may wrap (two's complement); the
    masked halves are still exact (checked by the Random123 known-answer tests)."""
    p = b * a
    return (p >> 32) & _M32, p & _M32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32-10 on int64 tensors holding uint32 values; same rounds as triton's tl.philox."""
    dev = next((t.device for t in (c0, c1, c2, c3, k0, k1) if isinstance(t, torch.Tensor)), None)
    c0, c1, c2, c3, k0, k1 = (torch.as_tensor(t, dtype=torch.int64, device=dev) & _M32
                              for t in (c0, c1, c2, c3, k0, k1))
    c0, c1, c2, c3, k0, k1 = torch.broadcast_tensors(c0, c1, c2, c3, k0, k1)
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo32(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo32(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def uniform(seed: torch.Tensor, step: torch.Tensor, pos: torch.Tensor, col: torch.Tensor,
            stream: int = 0) -> torch.Tensor:
    """Counter-based U[0, 1) fp32 keyed by (seed, step, position, column, stream), broadcasting.

    Philox key = (seed low 32 bits, seed high 32 bits); counter = (col, pos, step, stream);
    first output word -> float exactly as triton's uint_to_uniform_float. Stream 0 is the Gumbel
    noise (col = vocab id), stream 1 the `random` remasking confidence (col = 0)."""
    seed = torch.as_tensor(seed, dtype=torch.int64)
    r, _, _, _ = philox4x32(col, pos, step, stream, seed & _M32, seed >> 32)
    r = torch.where(r >= 2**31, r - 2**32, r)  # bitcast to int32
    r = torch.where(r < 0, -r - 1, r)
    return r.float() * 4.6566127342e-10


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from U[0, 1): -log(-log(u)); u == 0 gives -inf (never wins)."""
    return -torch.log(-torch.log(u))


# ----------------------------------------------------------------------------- decoding ops

CONF_MODES = ("low_confidence", "random", "maskgit_plus", "maxprob", "margin", "neg_entropy")


def _confidence(logits: torch.Tensor, x0: torch.Tensor, mode: str, temperature: float,
                u_random: torch.Tensor) -> torch.Tensor:
    """logits [..., V] fp64 (EOS already suppressed), x0 [...] -> conf [...] fp64 for one mode.

    low_confidence scores the untempered softmax; the Dream modes score the tempered one
    p = softmax(logits / T) (T = 0: softmax(logits)), without top-p / top-k filtering."""
    if mode == "low_confidence":
        return logits.softmax(-1).gather(-1, x0[..., None])[..., 0]
    if mode == "random":
        return u_random.double()
    if mode not in CONF_MODES:
        raise ValueError(f"unknown confidence mode {mode!r}; allowed: {CONF_MODES}")
    p = (logits / temperature if temperature > 0 else logits).softmax(-1)
    if mode == "maskgit_plus":  # Dream: probability of the drawn token
        return p.gather(-1, x0[..., None])[..., 0]
    if mode == "maxprob":
        return p.max(-1).values
    if mode == "margin":  # Dream topk_margin: top1 - top2, whatever token is drawn
        top2 = p.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    # neg_entropy: sum p log p (Dream adds 1e-10 inside the log; fastdiff does not), 0 log 0 = 0
    return torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)


def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                       mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                       pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                       suppress_eos: bool, eos_eot_conf: bool):
    """hidden [B, S, d], row_map int32 [B, Lb] (-1 = not scored), W [V, d], seed/step/pos_base [B]
    -> x0 int64 [B, Lb], conf fp32 [B, Lb] (-inf where not scored).

    Block position j of row b scores hidden[b, row_map[b, j]] (row 0 where not scored) and has
    generation position pos_base[b] + j (the Philox counter). x0 = argmax(logits) at temperature
    0 (lowest index among ties), else the Gumbel-max sample argmax(logits / T + G), G from
    stream 0 with column = vocab id. Modes (CONF_MODES):
      low_confidence: softmax(logits)[x0] (untempered; LLaDA)
      random:         U[0, 1) from stream 1, column 0 (LLaDA)
      maskgit_plus:   p[x0] with p = softmax(logits / T) (softmax(logits) at T = 0; Dream)
      maxprob:        max p;  margin: p_top1 - p_top2;  neg_entropy: sum p log p.
    suppress_eos sets logits[EOS] = -inf first; eos_eot_conf gives positions whose x0 is EOS or
    EoT confidence -1."""
    if mode not in CONF_MODES:
        raise ValueError(f"unknown confidence mode {mode!r}; allowed: {CONF_MODES}")
    B, Lb = row_map.shape
    dev = hidden.device
    scored = row_map >= 0
    rows = hidden[torch.arange(B, device=dev)[:, None], row_map.long().clamp(min=0)]  # [B, Lb, d]
    logits = rows.double() @ weight.double().T  # [B, Lb, V]
    V = logits.shape[-1]
    if suppress_eos:
        logits[..., eos_id] = float("-inf")
    pos = (pos_base[:, None].long() + torch.arange(Lb, device=dev)[None])  # [B, Lb]
    if temperature == 0:
        x0 = logits.argmax(-1)
    else:
        u = uniform(seed[:, None, None], step[:, None, None], pos[..., None],
                    torch.arange(V, device=dev)[None, None], stream=0)
        x0 = (logits / temperature + gumbel(u).double()).argmax(-1)
    u_random = uniform(seed[:, None], step[:, None], pos, 0, stream=1)
    conf = _confidence(logits, x0, mode, temperature, u_random)
    if eos_eot_conf:
        special = x0 == eos_id
        if eot_id is not None:
            special |= x0 == eot_id
        conf = torch.where(special, torch.full_like(conf, -1.0), conf)
    conf = torch.where(scored, conf, torch.full_like(conf, float("-inf")))
    return x0, conf.float()


def _top_p(z: torch.Tensor, top_p: float, fill: float) -> torch.Tensor:
    srt, idx = torch.sort(z, dim=-1, descending=True)
    drop = srt.softmax(-1).cumsum(-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # the first token past the boundary stays
    drop[..., 0] = False
    return z.masked_fill(torch.zeros_like(drop).scatter_(-1, idx, drop), fill)


def _top_k(z: torch.Tensor, top_k: int, fill: float) -> torch.Tensor:
    k = min(top_k, z.shape[-1])
    return z.masked_fill(z < torch.topk(z, k, dim=-1).values[..., -1:], fill)


def filter_logits(z: torch.Tensor, top_p: Optional[float], top_k: Optional[int], *,
                  order: str = "top_p_first") -> torch.Tensor:
    """Top-p / top-k filters on (tempered) logits z [..., V]. top_p: sorted descending, drop
    tokens whose cumulative probability before them already exceeds top_p (the first token
    past the boundary and the top-1 always stay); top_k: drop tokens below the k-th largest.
    order "top_p_first": Dream's (dllm-spec.md section 5), dropped logits become the dtype's
    minimum (not -inf); "top_k_first": SDAR's (section 6), dropped logits become -inf.
    top_p None or 1 / top_k None or 0: that filter is off."""
    if order not in ("top_p_first", "top_k_first"):
        raise ValueError(f"order={order!r}: allowed 'top_p_first', 'top_k_first'")
    fill = torch.finfo(z.dtype).min if order == "top_p_first" else float("-inf")
    use_p, use_k = top_p is not None and top_p < 1, bool(top_k)
    if order == "top_k_first" and use_k:
        z = _top_k(z, top_k, fill)
    if use_p:
        z = _top_p(z, top_p, fill)
    if order == "top_p_first" and use_k:
        z = _top_k(z, top_k, fill)
    return z


def gumbel_scores(conf: torch.Tensor, alg_temp: float, *, seed: torch.Tensor,
                  step: torch.Tensor, pos_base: torch.Tensor) -> torch.Tensor:
    """conf [B, Lb] fp32 (-inf: not a candidate) -> conf / alg_temp + Gumbel noise (Philox
    stream 2, column 0, at generation position pos_base + j): the top n of these are n
    positions drawn without replacement from softmax(conf / alg_temp) (Dream's alg_temp)."""
    Lb = conf.shape[1]
    pos = pos_base[:, None].long() + torch.arange(Lb, device=conf.device)[None]
    g = gumbel(uniform(seed[:, None], step[:, None], pos, 0, stream=2))
    return torch.where(torch.isfinite(conf), conf / alg_temp + g, conf)


def _per_row(value, B: int) -> list:
    """A float or a [B] tensor -> B Python floats."""
    vals = value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else [float(value)]
    return [float(v) for v in (vals * B if len(vals) == 1 else vals)]


def _commit_ranked(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                   block_start: torch.Tensor, count_fn) -> torch.Tensor:
    """Per row: order the finite confidences descending (lowest index first among ties), let
    count_fn(b, [c_1, c_2, ...]) say how many of them to commit, write x0 there. -> new canvas."""
    x = x.clone()
    for b in range(x.shape[0]):
        order = sorted(range(conf.shape[1]), key=lambda j: (-float(conf[b, j]), j))
        order = [j for j in order if math.isfinite(float(conf[b, j]))]
        n = count_fn(b, [float(conf[b, j]) for j in order])
        for j in order[:n]:
            x[b, int(block_start[b]) + j] = x0[b, j]
    return x


def select_topk_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                       block_start: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x [B, L] canvas, x0/conf [B, Lb], block_start [B], k [B] -> new canvas: per row, the k
    finite-confidence block positions with the highest conf (lowest index wins ties) get x0."""
    return _commit_ranked(x, x0, conf, block_start, lambda b, c: int(k[b]))


def select_threshold_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                            block_start: torch.Tensor, tau) -> torch.Tensor:
    """x [B, L] canvas, x0/conf [B, Lb], block_start [B], tau float or [B] -> new canvas: per
    row, every finite-confidence block position with conf >= tau, and always the single most
    confident one (lowest index among ties), gets x0 (Fast-dLLM threshold decoding)."""
    taus = _per_row(tau, x.shape[0])

    def count(b, c):
        return max(sum(ci >= taus[b] for ci in c), 1) if c else 0
    return _commit_ranked(x, x0, conf, block_start, count)


def select_factor_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                         block_start: torch.Tensor, factor) -> torch.Tensor:
    """x [B, L] canvas, x0/conf [B, Lb], block_start [B], factor float or [B] -> new canvas: per
    row, sort the finite confidences descending c_1 >= c_2 >= ... and commit the largest prefix
    with c_i >= 1 - f / (i + 1) (c_1 always; Fast-dLLM's factor rule without its last-index
    quirk)."""
    fs = _per_row(factor, x.shape[0])

    def count(b, c):
        n = 0
        while n < len(c) and c[n] >= 1.0 - fs[b] / (n + 2):  # c[n] is c_{n+1}
            n += 1
        return max(n, 1) if c else 0
    return _commit_ranked(x, x0, conf, block_start, count)


def count_step(step: torch.Tensor, nfe: torch.Tensor, conf: torch.Tensor) -> None:
    """step [B] int, nfe [B] int, conf [B, Lb], in place: step[b] and nfe[b] += 1 for every row
    b with at least one finite confidence (the row took part in this step)."""
    took = torch.isfinite(conf).any(dim=1)
    step += took.to(step.dtype)
    nfe += took.to(nfe.dtype)


def freeze_finished(x: torch.Tensor, active: torch.Tensor, prompt_len: int,
                    stop_ids: torch.Tensor, eos_id: int, mask_id: int):
    """Early stop (dllm-spec.md section 4). x [B, L] canvas, active
    [B] bool, generation region x[:, prompt_len:], stop_ids [n] -> (new canvas, new active):
    a row still active whose first stop token in the generation has no MASK before it gets
    eos_id at every generation position after that token and becomes inactive."""
    x, active = x.clone(), active.clone()
    stops = set(stop_ids.reshape(-1).tolist())
    for b in range(x.shape[0]):
        gen = x[b, prompt_len:].tolist()
        first = next((j for j, tok in enumerate(gen) if tok in stops), None)
        if not bool(active[b]) or first is None or mask_id in gen[:first]:
            continue
        x[b, prompt_len + first + 1:] = eos_id
        active[b] = False
    return x, active


# ----------------------------------------------------------------------------- step bookkeeping


def step_prepare(x: torch.Tensor, positions: torch.Tensor, active: torch.Tensor,
                 cancel: Optional[torch.Tensor], m0: Optional[torch.Tensor], *, block: int,
                 i: int, prompt_len: int, block_length: int, lo: Optional[int], S: int,
                 write_from_block: bool, steps: int, mask_id: int, shift: int = 0,
                 ratios: Optional[torch.Tensor] = None) -> dict:
    """What one denoising step feeds, scores and may commit (returns new tensors; inputs are
    not changed). The block starts at bs = prompt_len + block * block_length; the fed columns
    are [lo, lo + S) (lo None: bs). Per row b:
    ids / pos [S]: x / positions at the fed columns; slot [S]: the column (its KV slot), or -1
    for columns < bs when write_from_block; active: active and not cancelled; for block
    position j: rows[j] = bs + j - lo (its fed index), row_map[j] = j if x[b, bs + j] is MASK
    and the row is active, else -1; block_start = bs, pos_base = bs - prompt_len; with steps
    > 0: m0 = the block's MASK count at i == 0 (else unchanged) and LLaDA's schedule
    k = m0 // steps + (1 if m0 % steps > i else 0). shift (0 | 1, shifted logits): lo None is
    bs - shift and rows[j] = bs + j - shift - lo. ratios [n] fp32 (Dream's quota; steps == 0):
    k = trunc(float32(block MASK count) * ratios[i])."""
    B = x.shape[0]
    Lb = block_length
    bs = prompt_len + block * Lb
    lo = bs - shift if lo is None else lo
    out = {name: [] for name in ("ids", "pos", "slot", "rows", "row_map", "active", "m0", "k")}
    for b in range(B):
        act = bool(active[b]) and not (cancel is not None and bool(cancel[b]))
        cols = list(range(lo, lo + S))
        out["ids"].append([int(x[b, c]) for c in cols])
        out["pos"].append([int(positions[b, c]) for c in cols])
        out["slot"].append([c if not write_from_block or c >= bs else -1 for c in cols])
        is_mask = [int(x[b, bs + j]) == mask_id for j in range(Lb)]
        out["rows"].append([bs + j - shift - lo for j in range(Lb)])
        out["row_map"].append([j if is_mask[j] and act else -1 for j in range(Lb)])
        out["active"].append(act)
        if steps > 0:
            m = sum(is_mask) if i == 0 else int(m0[b])
            out["m0"].append(m)
            out["k"].append(m // steps + (1 if m % steps > i else 0))
        elif ratios is not None:
            prod = torch.tensor(float(sum(is_mask)), dtype=torch.float32) * ratios[i].float()
            out["k"].append(int(prod))
    i64, i32 = torch.int64, torch.int32
    res = {"ids": torch.tensor(out["ids"], dtype=i64).view(B, S),
           "pos": torch.tensor(out["pos"], dtype=i64).view(B, S),
           "slot": torch.tensor(out["slot"], dtype=i32).view(B, S),
           "rows": torch.tensor(out["rows"], dtype=i64).view(B, Lb),
           "row_map": torch.tensor(out["row_map"], dtype=i32).view(B, Lb),
           "block_start": torch.full((B,), bs, dtype=i32),
           "pos_base": torch.full((B,), bs - prompt_len, dtype=i64),
           "active": torch.tensor(out["active"], dtype=torch.bool)}
    if steps > 0:
        res["m0"] = torch.tensor(out["m0"], dtype=i64)
    if out["k"]:
        res["k"] = torch.tensor(out["k"], dtype=i64)
    return res
