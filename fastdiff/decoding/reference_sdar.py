"""Test oracle: a literal, readable transcription of dllm-spec.md section 6 (SDAR block diffusion:
the Qwen3 forward with per-head QK-norm, block-causal attention over an absolute grid, the exact
K/V cache of finished blocks, and the per-block sampler). Imports only torch and shares no code
with the engine: weights arrive as a dict of tensors with SDAR's HF names, the config as a plain
dict with SDAR's config.json keys (head_dim read, never derived). Computes in float64, one
unpadded row at a time. Never used at run time.

Randomness goes through a hook `uniform(kind, step, shape)`; the only kind is "gumbel", shape
[total, V]: U(0, 1) noise for denoising forward number `step` of the row (0 for its first; the
prefill and the store forwards do not count), row = ABSOLUTE position of the canvas, column =
vocab id. A token is drawn at temperature > 0 as the Gumbel-max argmax(z + g), g = -log(-log(u)),
z = the tempered, top_k / top_p filtered logits: exactly a draw from softmax(z) (SDAR:
torch.multinomial). Fed the engine's Philox noise at the same (step, position, column), this is
an exact literal of the sampler that the engine must match token for token; the default hook
(torch.rand) gives the sampler's distribution."""
from __future__ import annotations

import math

import torch

from .reference import rms_norm, rotate_half  # section 2's RMSNorm and RoPE, the same formulas

M = "model."
REMASKING = ("low_confidence_static", "low_confidence_dynamic", "sequential")
CONFIDENCE = ("eval", "filtered")


def as_float64(weights: dict) -> dict:
    return {k: v.double() for k, v in weights.items()}  # a no-op for float64 tensors




def _dims(cfg):
    H = cfg["num_attention_heads"]
    return H, cfg.get("num_key_value_heads") or H, cfg["head_dim"]  # head_dim: explicit


def _rope(pos, cfg, hd):
    """pos [S] -> cos, sin [S, 1, hd]: angles pos * theta^(-arange(0, hd, 2) / hd), cat(f, f)."""
    inv_freq = float(cfg["rope_theta"]) ** (-torch.arange(0, hd, 2).double() / hd)
    ang = pos.double()[:, None] * inv_freq
    ang = torch.cat([ang, ang], -1)
    return ang.cos()[:, None], ang.sin()[:, None]


def _linear(W, name, x, bias):
    y = x @ W[name + ".weight"].T
    return y + W[name + ".bias"] if bias else y


def _lm_head(W, cfg):
    return W[M + "embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]


def _qkv(W, cfg, i, n, pos):
    """n [S, d] (normed hidden) at absolute positions pos [S] -> q [S, H, hd], k, v [S, Hkv, hd]:
    q and k RMS-normed per head (q_norm / k_norm over hd) BEFORE RoPE; v as projected."""
    H, Hkv, hd = _dims(cfg)
    eps, bias = cfg["rms_norm_eps"], bool(cfg.get("attention_bias"))
    p = f"{M}layers.{i}.self_attn."
    S = n.shape[0]
    q = _linear(W, p + "q_proj", n, bias).view(S, H, hd)
    k = _linear(W, p + "k_proj", n, bias).view(S, Hkv, hd)
    v = _linear(W, p + "v_proj", n, bias).view(S, Hkv, hd)
    q, k = rms_norm(q, W[p + "q_norm.weight"], eps), rms_norm(k, W[p + "k_norm.weight"], eps)
    cos, sin = _rope(pos, cfg, hd)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def _attend(W, cfg, i, h, q, K, V, allowed):
    """q [S, H, hd], K/V [T, Hkv, hd], allowed [S, T] bool -> h + o_proj(softmax attention)."""
    H, Hkv, hd = _dims(cfg)
    K, V = K.repeat_interleave(H // Hkv, 1), V.repeat_interleave(H // Hkv, 1)  # GQA: j*g..j*g+g-1
    s = torch.einsum("qhd,khd->hqk", q, K) * hd ** -0.5
    s = s.masked_fill(~allowed[None], float("-inf"))
    a = torch.einsum("hqk,khd->qhd", s.softmax(-1), V).reshape(q.shape[0], H * hd)
    return h + _linear(W, f"{M}layers.{i}.self_attn.o_proj", a, bool(cfg.get("attention_bias")))


def _mlp(W, cfg, i, h):
    w = lambda n: W[f"{M}layers.{i}.{n}.weight"]  # noqa: E731
    m = rms_norm(h, w("post_attention_layernorm"), cfg["rms_norm_eps"])
    g, u = m @ w("mlp.gate_proj").T, m @ w("mlp.up_proj").T
    return h + (g * torch.sigmoid(g) * u) @ w("mlp.down_proj").T  # down(silu(gate) * up)


def _layers(W, cfg, tokens, pos, keys_of):
    """The decoder stack. keys_of(i, k, v) -> (K, V, allowed) for layer i given the fed tokens'
    own k, v. Returns logits [S, V] float64 and the fed tokens' per-layer (k, v)."""
    W = as_float64(W)
    eps = cfg["rms_norm_eps"]
    h = W[M + "embed_tokens.weight"][torch.as_tensor(tokens)]
    fed = []
    for i in range(cfg["num_hidden_layers"]):
        n = rms_norm(h, W[f"{M}layers.{i}.input_layernorm.weight"], eps)
        q, k, v = _qkv(W, cfg, i, n, pos)
        fed.append((k, v))
        h = _mlp(W, cfg, i, _attend(W, cfg, i, h, q, *keys_of(i, k, v)))
    return rms_norm(h, W[M + "norm.weight"], eps) @ _lm_head(W, cfg).T, fed


def block_causal_logits(weights: dict, cfg: dict, x, block_length: int):
    """x [L] ids at absolute positions 0..L-1 -> (logits [L, V] float64, per-layer (K, V)
    [L, Hkv, hd] after k_norm and RoPE). Block-causal: query q sees key k iff
    k // block_length <= q // block_length (grid from position 0)."""
    x = torch.as_tensor(x)
    pos = torch.arange(len(x))
    blk = pos // block_length
    allowed = blk[None, :] <= blk[:, None]  # [q, k]
    return _layers(weights, cfg, x, pos, lambda i, k, v: (k, v, allowed))


def cached_block_logits(weights: dict, cfg: dict, block, start: int, cache):
    """One block `block` [S] at absolute positions start..start+S-1 against `cache` (per layer
    (K, V) of positions 0..start-1, or None when start == 0): keys = cache + the block's own
    fresh K/V, no mask (every cached position is in an earlier block, the block sees itself both
    ways). The cache is read, never written. -> (logits [S, V], the block's per-layer (K, V))."""
    block = torch.as_tensor(block)
    pos = torch.arange(start, start + len(block))
    T = start + len(block)

    def keys_of(i, k, v):
        K = k if cache is None else torch.cat([cache[i][0], k])
        V = v if cache is None else torch.cat([cache[i][1], v])
        assert K.shape[0] == T, "the cache must hold exactly the positions before the block"
        return K, V, torch.ones(len(block), T, dtype=torch.bool)
    return _layers(weights, cfg, block, pos, keys_of)


# ------------------------------------------------------------------ the sampler


def schedule(block_length: int, steps: int) -> list[int]:
    """get_num_transfer_tokens: n_i = B // steps, plus one for each of the first B % steps."""
    return [block_length // steps + (1 if i < block_length % steps else 0) for i in range(steps)]


def filter_logits(z, top_k=None, top_p=None):
    """z [N, V] (already tempered) -> SDAR's filtered logits: top_k (0 / None = off: keep the
    logits >= the k-th largest, the others -inf), then top_p (None / >= 1 = off: sort
    descending, drop a token once the cumulative probability BEFORE it exceeds p; the top-1 is
    always kept; -inf)."""
    if top_k:
        kth = torch.topk(z, min(top_k, z.shape[-1])).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_z, idx = torch.sort(z, descending=True, stable=True)
        cum = sorted_z.softmax(-1).cumsum(-1)
        remove = torch.zeros_like(cum, dtype=torch.bool)
        remove[..., 1:] = cum[..., :-1] > top_p  # cumulative probability before the token
        z = z.masked_fill(torch.zeros_like(remove).scatter(-1, idx, remove), float("-inf"))
    return z


def gumbel(u):
    return -torch.log(-torch.log(u.double()))


def draw(logits, temperature=0.0, top_k=None, top_p=None, confidence="eval", u=None):
    """logits [N, V] float64 -> (x0 [N], conf [N] float64).
    T > 0: z = filter(logits / T), x0 = argmax(z + gumbel(u)) (u [N, V]: a draw from softmax(z));
    T == 0: x0 = argmax(logits) (the eval greedy semantics), z = filter(logits).
    conf "eval": softmax(logits / T)[x0] UNFILTERED (T == 0: softmax(logits)[x0]);
    "filtered": softmax(z)[x0]."""
    if confidence not in CONFIDENCE:
        raise ValueError(f"unknown confidence {confidence!r}")
    tempered = logits / temperature if temperature > 0 else logits
    z = filter_logits(tempered, top_k, top_p)
    x0 = (z + gumbel(u)).argmax(-1) if temperature > 0 else logits.argmax(-1)
    p = (tempered if confidence == "eval" else z).softmax(-1)
    return x0, p.gather(-1, x0[:, None])[:, 0]


def _top_n(conf, n):
    """conf [S] -> the n positions of largest conf, ties: lowest position first."""
    return torch.sort(conf, descending=True, stable=True).indices[:n].tolist()


def commit_positions(conf, masked, n, remasking, threshold=None) -> list[int]:
    """conf [S] float64, masked [S] bool (positions of the block), quota n -> the block
    positions to commit. conf is -inf at non-masked positions, and a non-masked position is
    never committed (fastdiff's deviation from the script, which can overwrite them)."""
    conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
    if remasking == "sequential":  # the n positions from the first MASK
        first = int(masked.int().argmax())
        chosen = list(range(first, min(first + n, len(masked))))
    elif remasking == "low_confidence_static":
        chosen = _top_n(conf, n)
    elif remasking == "low_confidence_dynamic":
        high = (conf > threshold).nonzero()[:, 0].tolist()  # strict
        chosen = high if len(high) >= n else _top_n(conf, n)
    else:
        raise ValueError(f"unknown remasking {remasking!r}; allowed: {REMASKING}")
    return [j for j in chosen if masked[j]]


def _default_uniform(kind, step, shape):
    return torch.rand(shape, dtype=torch.float64)


def sdar_generate(weights, cfg, prompt, *, gen_length, block_length, denoising_steps,
                  remasking="low_confidence_static", threshold=None, temperature=0.0, top_k=None,
                  top_p=None, confidence="eval", stop_ids=None, uniform=None, mask_id=None):
    """ONE prompt (a list of ids, unpadded) -> (x [total] list of ids, nfe), section 6:
    total = ceil((P + G) / B) * B; x = [prompt ; MASK * (total - P)]; if P >= B one block-causal
    prefill forward of x[:floor(P/B)*B] stores its K/V (1 NFE); then per block j from floor(P/B):
    at most steps + 1 times { if the block has no MASK: a store forward appends its K/V (1 NFE),
    break; else a denoising forward of the block against the cache (1 NFE), draw, and commit per
    `remasking` with quota n_i = schedule(B, steps)[i] }; after the block, if any stop id is in
    x[P:], stop (later blocks stay MASK). mask_id defaults to cfg["mask_token_id"]."""
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; allowed: {REMASKING}")
    if remasking == "low_confidence_dynamic" and threshold is None:
        raise ValueError("low_confidence_dynamic needs a threshold")
    uniform = uniform or _default_uniform
    weights = as_float64(weights)
    mask_id = cfg["mask_token_id"] if mask_id is None else mask_id
    B, steps = block_length, denoising_steps
    P = len(prompt)
    num_blocks = math.ceil((P + gen_length) / B)
    total = num_blocks * B
    x = torch.tensor(list(prompt) + [mask_id] * (total - P))
    quotas = schedule(B, steps)
    nfe, step = 0, 0  # step: the row's denoising forwards so far (the noise counter)
    cache = None
    if P >= B:  # block-causal prefill of the full prompt blocks
        _, cache = block_causal_logits(weights, cfg, x[: P // B * B], B)
        nfe += 1
    for j in range(P // B, num_blocks):
        b0, b1 = j * B, (j + 1) * B
        for i in range(steps + 1):
            masked = x[b0:b1] == mask_id
            if not masked.any():  # store forward: the finished block's K/V join the cache
                _, fed = cached_block_logits(weights, cfg, x[b0:b1], b0, cache)
                cache = fed if cache is None else [(torch.cat([ck, k]), torch.cat([cv, v]))
                                                   for (ck, cv), (k, v) in zip(cache, fed)]
                nfe += 1
                break
            logits, _ = cached_block_logits(weights, cfg, x[b0:b1], b0, cache)  # no store
            nfe += 1
            u = uniform("gumbel", step, (total, logits.shape[-1]))[b0:b1] \
                if temperature > 0 else None
            step += 1
            x0, conf = draw(logits, temperature, top_k, top_p, confidence, u)
            for p in commit_positions(conf, masked, quotas[i], remasking, threshold):
                x[b0 + p] = x0[p]
        if stop_ids and any(int(t) in set(stop_ids) for t in x[P:]):
            break
    return x.tolist(), nfe


def decoded_length(x, prompt_len: int, block_length: int, mask_id: int) -> int:
    """The generated positions up to the end of the last decoded block of an sdar_generate
    output: trailing blocks left all-MASK after a stop are not part of it."""
    end = len(x)
    while end - block_length >= prompt_len and all(t == mask_id for t in x[end - block_length:end]):
        end -= block_length
    return end - prompt_len
