"""Test oracle: a literal, readable transcription of dllm-spec.md section 5 (Dream: the Qwen2
forward and Dream's `diffusion_generate` sampler) and of section 4 (Fast-dLLM blocks, threshold /
factor, prefix / dual cache) applied to Dream. Imports only torch and shares no code with the
engine: weights arrive as a dict of tensors with Dream's HF names, the config as a plain dict with
the Qwen2 / Dream config.json keys. Computes in float64. Never used at run time.

Randomness goes through a hook `uniform(kind, step, shape)` returning U[0, 1) noise for forward
number `step` (0 for the first forward of the row, +1 per forward):
  "gumbel" [B, L, V]: a token is drawn at temperature > 0 as the Gumbel-max
      argmax(z + g), g = -log(-log(u)), z = the tempered, top_p / top_k filtered logits;
  "random" [B, L]: `origin` commits a masked position when u < 1 - s/t;
  "alg" [B, L]: alg_temp > 0 picks the n committed positions as the Gumbel-top-n: the n largest
      conf / alg_temp + g over the masked positions.
Gumbel-max is exactly a draw from softmax(z) (Dream: torch.distributions.Categorical), and the
Gumbel-top-n exactly n draws without replacement from softmax(conf / alg_temp) (Dream:
torch.multinomial(..., replacement=False)). So, fed the engine's Philox noise at the same
(step, position, column), this is an exact literal of the sampler that the engine must match
token for token; the default hook (torch.rand) gives the sampler's distribution."""
from __future__ import annotations

import math

import torch

from .reference import rms_norm, rotate_half  # section 2's RMSNorm and RoPE, the same formulas

M = "model."


def _dims(cfg):
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or H
    return d, H, Hkv, cfg.get("head_dim") or d // H


def _rope(pos, cfg, hd):
    """pos [...] float64 -> cos, sin [..., hd] (angles pos * inv_freq duplicated as cat(f, f))."""
    inv_freq = cfg["rope_theta"] ** (-torch.arange(0, hd, 2).double() / hd)
    ang = pos[..., None] * inv_freq
    ang = torch.cat([ang, ang], -1)
    return ang.cos(), ang.sin()


def _lm_head(W, cfg):
    return W[M + "embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]


def _mlp(W, i, h, eps):
    w = lambda n: W[f"{M}layers.{i}.{n}"]  # noqa: E731
    m = rms_norm(h, w("post_attention_layernorm.weight"), eps)
    g = m @ w("mlp.gate_proj.weight").T
    u = m @ w("mlp.up_proj.weight").T
    return h + (g * torch.sigmoid(g) * u) @ w("mlp.down_proj.weight").T  # down(silu(gate) * up)


def _qkv(W, i, n):
    """n [..., d] -> q, k, v [..., H*hd | Hkv*hd] (with their biases)."""
    w = lambda p, t: W[f"{M}layers.{i}.self_attn.{p}_proj.{t}"]  # noqa: E731
    return tuple(n @ w(p, "weight").T + w(p, "bias") for p in "qkv")


def as_float64(weights: dict) -> dict:
    return {k: v.double() for k, v in weights.items()}  # a no-op for float64 tensors


def dream_logits(weights: dict, cfg: dict, x: torch.Tensor, attention_mask: torch.Tensor):
    """x [B, L] token ids, attention_mask [B, L] (True = real token; batches LEFT padded)
    -> UNshifted logits [B, L, vocab] float64 (the output at every position), bidirectional
    attention over the real tokens; token j of row b has RoPE position j - pad_b."""
    W = as_float64(weights)
    B, L = x.shape
    d, H, Hkv, hd = _dims(cfg)
    eps = cfg["rms_norm_eps"]
    pad = (~attention_mask.bool()).sum(1)  # left padding per row
    pos = (torch.arange(L)[None] - pad[:, None]).clamp(min=0).double()
    cos, sin = (t[:, None] for t in _rope(pos, cfg, hd))  # [B, 1, L, hd]
    key_ok = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: pads are never keys
    h = W[M + "embed_tokens.weight"][x]
    for i in range(cfg["num_hidden_layers"]):
        n = rms_norm(h, W[f"{M}layers.{i}.input_layernorm.weight"], eps)
        q, k, v = _qkv(W, i, n)
        q = q.view(B, L, H, hd).transpose(1, 2)
        k = k.view(B, L, Hkv, hd).transpose(1, 2)
        v = v.view(B, L, Hkv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)  # GQA
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        a = s.masked_fill(~key_ok, float("-inf")).softmax(-1) @ v  # no causal mask
        a = a.transpose(1, 2).reshape(B, L, H * hd)
        h = h + a @ W[f"{M}layers.{i}.self_attn.o_proj.weight"].T
        h = _mlp(W, i, h, eps)
    h = rms_norm(h, W[M + "norm.weight"], eps)
    return h @ _lm_head(W, cfg).T


def dream_logits_kv(weights: dict, cfg: dict, x: torch.Tensor, lo: int, hi: int, stored=None,
                    mode: str = "none", fresh_from: int | None = None):
    """ONE row x [L] (no padding: RoPE positions are absolute). Feed x[lo:hi].

    mode "none": attend to the fed tokens only (lo = 0, hi = L: a full forward).
    mode "prefix": keys = stored K/V of [0, fresh_from) + the fed tokens' own K/V of
        [fresh_from, hi).
    mode "dual": as prefix, plus stored K/V of [hi, L).
    fresh_from (default lo): fed positions in [lo, fresh_from) are queries only; their fresh K/V
    are computed but not used as keys (the stored ones are). stored: per layer (K [L, Hkv, hd],
    V) after RoPE, as returned by a full forward. Returns UNshifted logits [hi - lo, vocab]
    float64 and the fed tokens' per-layer (K, V) (after RoPE)."""
    W = as_float64(weights)
    d, H, Hkv, hd = _dims(cfg)
    eps = cfg["rms_norm_eps"]
    f = lo if fresh_from is None else fresh_from
    S = hi - lo
    cos, sin = (t[:, None] for t in _rope(torch.arange(lo, hi).double(), cfg, hd))  # [S, 1, hd]
    h = W[M + "embed_tokens.weight"][x[lo:hi]]
    fed = []
    for i in range(cfg["num_hidden_layers"]):
        n = rms_norm(h, W[f"{M}layers.{i}.input_layernorm.weight"], eps)
        q, k, v = _qkv(W, i, n)
        q, k, v = q.view(S, H, hd), k.view(S, Hkv, hd), v.view(S, Hkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        fed.append((k, v))
        if mode == "none":
            K, V = k, v
        elif mode in ("prefix", "dual"):
            sk, sv = stored[i][0].double(), stored[i][1].double()
            K, V = [sk[:f], k[f - lo:]], [sv[:f], v[f - lo:]]
            if mode == "dual":
                K.append(sk[hi:])
                V.append(sv[hi:])
            K, V = torch.cat(K), torch.cat(V)
        else:
            raise ValueError(mode)
        K, V = K.repeat_interleave(H // Hkv, 1), V.repeat_interleave(H // Hkv, 1)
        s = torch.einsum("qhd,khd->hqk", q, K) / math.sqrt(hd)  # bidirectional: no mask
        a = torch.einsum("hqk,khd->qhd", s.softmax(-1), V).reshape(S, H * hd)
        h = h + a @ W[f"{M}layers.{i}.self_attn.o_proj.weight"].T
        h = _mlp(W, i, h, eps)
    h = rms_norm(h, W[M + "norm.weight"], eps)
    return h @ _lm_head(W, cfg).T, fed


# ------------------------------------------------------------------ Dream's sample_tokens


def filter_logits(logits, temperature=0.0, top_p=None, top_k=None):
    """logits [..., V] -> Dream's tempered, filtered logits: / temperature (only if > 0), then
    top_p (only if < 1: drop a token once the cumulative probability BEFORE it exceeds top_p, so
    the first token past the boundary stays, the top-1 always), then top_k (drop the tokens below
    the k-th largest). Dropped logits are set to the dtype's minimum, not -inf."""
    lowest = torch.finfo(logits.dtype).min
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, stable=True)
        remove = sorted_logits.softmax(-1).cumsum(-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token past the boundary
        remove[..., 0] = False
        drop = torch.zeros_like(remove).scatter(-1, sorted_idx, remove)
        logits = logits.masked_fill(drop, lowest)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, lowest)
    return logits


def gumbel(u):
    return -torch.log(-torch.log(u.double()))


def sample_tokens(logits, alg, temperature, top_p, top_k, u_gumbel=None):
    """logits [N, V] (already shifted) -> (x0 [N], conf [N]) float64 as Dream's sample_tokens:
    x0 = argmax p (temperature 0) or the Gumbel-max draw from p (u_gumbel [N, V]);
    maskgit_plus (and origin, which does not use it): p[x0]; topk_margin: p_top1 - p_top2
    whatever x0 is; entropy: sum p log(p + 1e-10) (highest first). p = softmax of the
    filtered, tempered logits."""
    z = filter_logits(logits, temperature, top_p, top_k)
    p = z.softmax(-1)
    x0 = p.argmax(-1) if temperature == 0 else (z + gumbel(u_gumbel)).argmax(-1)
    if alg in ("maskgit_plus", "origin"):
        conf = p.gather(-1, x0[:, None])[:, 0]
    elif alg == "topk_margin":
        top2 = torch.sort(p, descending=True).values[:, :2]
        conf = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        conf = (p * torch.log(p + 1e-10)).sum(-1)
    else:
        raise ValueError(f"unknown alg {alg!r}")
    return x0, conf


def _default_uniform(kind, step, shape):
    return torch.rand(shape, dtype=torch.float64)


def _top_n(rank, n):
    """rank [L] float64 -> the n positions with the largest rank, ties: lowest position first."""
    return torch.sort(rank, descending=True, stable=True).indices[:n]


# ------------------------------------------------------------------ section 5: the sampler


def dream_generate(weights, cfg, prompt, attention_mask=None, *, steps, gen_length,
                   temperature=0.0, top_p=None, top_k=None, alg="maskgit_plus", alg_temp=None,
                   eps=1e-3, uniform=None):
    """prompt [B, P] (LEFT padded), attention_mask [B, P] or None -> x [B, P + gen_length].

    Dream's diffusion_generate: timesteps = float32 linspace(1, eps, steps + 1); at step i
    (t = t_i, s = t_{i+1}) one forward of the whole canvas, logits shifted
    (cat([logits[:, :1], logits[:, :-1]])); origin: each masked position committed when
    u < 1 - s/t (every one at the last step) with a token drawn from the filtered tempered
    distribution; other algs: n = int(num_masked * (1 - s/t)) (int(num_masked) at the last step),
    num_masked = the batch mean of MASK counts (float32, as Dream), the top-n masked positions by
    conf (ties: lowest position) or, alg_temp > 0, the Gumbel-top-n of conf / alg_temp.
    `uniform`: the noise hook of the module docstring (default torch.rand)."""
    if alg not in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        raise ValueError(f"unknown alg {alg!r}")
    uniform = uniform or _default_uniform
    weights = as_float64(weights)
    mask_id = cfg["mask_token_id"]
    B, Pl = prompt.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, Pl, dtype=torch.bool)
    x = torch.full((B, Pl + gen_length), mask_id, dtype=torch.long)
    x[:, :Pl] = prompt
    L = x.shape[1]
    am = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
    timesteps = torch.linspace(1, eps, steps + 1)  # float32, as Dream
    for i in range(steps):
        mask_index = x == mask_id
        logits = dream_logits(weights, cfg, x, am)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position j <- output j - 1
        V = logits.shape[-1]
        t, s = timesteps[i], timesteps[i + 1]
        u = (uniform("gumbel", i, (B, L, V)).expand(B, L, V).reshape(B * L, V)
             if temperature > 0 else None)
        x0, conf = sample_tokens(logits.reshape(B * L, V), alg, temperature, top_p, top_k, u)
        x0, conf = x0.view(B, L), conf.view(B, L)
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else torch.tensor(1.0)  # float32
            transfer = mask_index & (uniform("random", i, (B, L)).double() < p_transfer.double())
            x[transfer] = x0[transfer]
            continue
        num_mask_token = mask_index.sum() / mask_index.shape[0]  # float32 batch mean
        n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        if n <= 0:
            continue
        conf = torch.where(mask_index, conf, torch.full_like(conf, float("-inf")))
        if alg_temp:  # None and 0 both mean top-n
            conf = conf / alg_temp + gumbel(uniform("alg", i, (B, L)))
            conf = torch.where(mask_index, conf, torch.full_like(conf, float("-inf")))
        for b in range(B):
            idx = _top_n(conf[b], n)
            x[b, idx] = x0[b, idx]
    return x


# ------------------------------------------------------------------ section 4 applied to Dream


def dream_generate_fast(weights, cfg, prompt, *, gen_length, block_length, steps=None,
                        threshold=None, factor=None, cache="none", alg="maskgit_plus",
                        temperature=0.0, top_p=None, top_k=None, alg_temp=None, eps=1e-3,
                        uniform=None):
    """ONE prompt (a list of ids) -> (generated ids [gen_length], nfe): Fast-dLLM blocks on Dream.

    Blocks of block_length left to right; each loops until it has no MASK (fixed rule: at most
    steps_per_block = steps / n_blocks forwards). Fixed rule: the block's own Dream timesteps
    linspace(1, eps, steps_per_block + 1), n = int(block_masked * (1 - s/t)) (all at its last
    step), top-n by conf or alg_temp's Gumbel-top-n; origin per position as in dream_generate
    (so one block over the whole generation equals dream_generate). threshold: commit the
    block's masked positions with conf >= tau plus the most confident one; factor: the largest
    prefix of descending confidences with c_i >= 1 - f / (i + 1) (c_1 always).
    Shifted logits: block position p (absolute) is predicted from the output at p - 1.
    cache "prefix" / "dual": the block-start forward (i == 0) is a full one and stores every
    position's K/V; a later step feeds [b0 - 1, L) (prefix) or [b0 - 1, b1) (dual) and attends to
    the STORED K/V of [0, b0) (b0 - 1 included: its fresh K/V are not used as keys), the fed
    block's own fresh K/V of [b0, b1) (prefix: [b0, L)) and (dual) the stored K/V of [b1, L).
    Noise: `uniform(kind, step, shape)` with step = nfe before the forward, shapes [1, L, V] and
    [1, L] (absolute columns)."""
    fixed = threshold is None and factor is None
    if alg not in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        raise ValueError(f"unknown alg {alg!r}")
    if alg == "origin" and not fixed:
        raise ValueError("origin commits by chance: it has no threshold / factor form")
    uniform = uniform or _default_uniform
    weights = as_float64(weights)
    mask_id = cfg["mask_token_id"]
    Pl = len(prompt)
    x = torch.tensor(list(prompt) + [mask_id] * gen_length)
    L = len(x)
    assert gen_length % block_length == 0
    n_blocks = gen_length // block_length
    if fixed:
        assert steps % n_blocks == 0
        spb = steps // n_blocks
        timesteps = torch.linspace(1, eps, spb + 1)  # float32, as Dream
    nfe = 0
    for nb in range(n_blocks):
        b0, b1 = Pl + nb * block_length, Pl + (nb + 1) * block_length
        stored, i = None, 0
        while (x[b0:b1] == mask_id).any() and (not fixed or i < spb):
            if cache == "none" or i == 0:
                lo, hi, mode = 0, L, "none"
            else:
                lo, hi, mode = b0 - 1, (L if cache == "prefix" else b1), cache
            out, fed = dream_logits_kv(weights, cfg, x, lo, hi, stored, mode, fresh_from=b0)
            if cache != "none" and i == 0:
                stored = fed  # every position's K/V, from the block-start forward
            step = nfe
            nfe += 1
            logits = out[b0 - 1 - lo: b1 - 1 - lo]  # [block_length, V]: block position p <- p - 1
            V = logits.shape[-1]
            u = (uniform("gumbel", step, (1, L, V))[0, b0:b1] if temperature > 0 else None)
            x0, conf = sample_tokens(logits, alg, temperature, top_p, top_k, u)
            masked = x[b0:b1] == mask_id  # [block_length]
            if fixed:
                t, s = timesteps[i], timesteps[i + 1]
                if alg == "origin":
                    p_transfer = 1 - s / t if i < spb - 1 else torch.tensor(1.0)
                    ur = uniform("random", step, (1, L))[0, b0:b1].double()
                    chosen = (masked & (ur < p_transfer.double())).nonzero()[:, 0]
                else:
                    num_mask_token = masked.sum() / 1  # float32, as Dream (one row)
                    n = int(num_mask_token * (1 - s / t)) if i < spb - 1 else int(num_mask_token)
                    rank = conf
                    if alg_temp:
                        rank = conf / alg_temp + gumbel(uniform("alg", step, (1, L))[0, b0:b1])
                    rank = torch.where(masked, rank, torch.full_like(rank, float("-inf")))
                    chosen = _top_n(rank, n) if n > 0 else torch.zeros(0, dtype=torch.long)
            else:
                cands = [(float(conf[j]), j) for j in range(block_length) if masked[j]]
                cands.sort(key=lambda cj: (-cj[0], cj[1]))  # most confident first, ties: lowest
                if threshold is not None:
                    keep = [cands[0]] + [cj for cj in cands[1:] if cj[0] >= threshold]
                else:
                    n = 1
                    while n < len(cands) and cands[n][0] >= 1 - factor / (n + 2):
                        n += 1  # cands[n] is c_(n+1): condition c_i >= 1 - f / (i + 1)
                    keep = cands[:n]
                chosen = torch.tensor([j for _, j in keep], dtype=torch.long)
            x[b0 + chosen] = x0[chosen]
            i += 1
    return x[Pl:].tolist(), nfe
