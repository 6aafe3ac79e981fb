"""Test oracle: a literal, readable transcription of dllm-spec.md sections 2-3 (LLaDA's forward
and its reference `generate`). Imports only torch and shares no code with the engine: weights
arrive as a dict of tensors with the official names, the config as a plain dict. Computes in
float64. Never used at run time."""
from __future__ import annotations

import math

import torch

P = "model.transformer."


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(t):
    a, b = t.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def llada_logits(weights: dict, cfg: dict, x: torch.Tensor, attention_mask: torch.Tensor):
    """x [B, L] token ids, attention_mask [B, L] (True = real token; batches LEFT padded)
    -> logits [B, L, vocab] float64, bidirectional attention over the real tokens."""
    W = {k: v.double() for k, v in weights.items()}
    B, L = x.shape
    d, H = cfg["d_model"], cfg["n_heads"]
    Hkv = cfg.get("n_kv_heads") or H
    hd, eps = d // H, cfg["rms_norm_eps"]
    pad = (~attention_mask).sum(1)  # left padding per row
    pos = (torch.arange(L)[None] - pad[:, None]).clamp(min=0).double()  # token j -> j - pad_b
    inv_freq = cfg["rope_theta"] ** (-torch.arange(0, hd, 2).double() / hd)
    ang = pos[..., None] * inv_freq
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    key_ok = attention_mask[:, None, None, :]  # [B, 1, 1, L]
    h = W[P + "wte.weight"][x]
    for i in range(cfg["n_layers"]):
        w = lambda n: W[f"{P}blocks.{i}.{n}.weight"]  # noqa: E731
        n = rms_norm(h, w("attn_norm"), eps)
        q = (n @ w("q_proj").T).view(B, L, H, hd).transpose(1, 2)
        k = (n @ w("k_proj").T).view(B, L, Hkv, hd).transpose(1, 2)
        v = (n @ w("v_proj").T).view(B, L, Hkv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        a = s.masked_fill(~key_ok, float("-inf")).softmax(-1) @ v  # no causal mask
        h = h + a.transpose(1, 2).reshape(B, L, d) @ w("attn_out").T
        m = rms_norm(h, w("ff_norm"), eps)
        g = m @ w("ff_proj").T
        h = h + (g * torch.sigmoid(g) * (m @ w("up_proj").T)) @ w("ff_out").T
    h = rms_norm(h, W[P + "ln_f.weight"], eps)
    return (h @ W[P + "ff_out.weight"].T)[..., : cfg["vocab_size"]]


def num_transfer_tokens(block_mask_index, steps):
    mask_num = block_mask_index.sum(dim=1, keepdim=True)
    base, remainder = mask_num // steps, mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


def generate(weights, cfg, prompt, attention_mask=None, *, steps=128, gen_length=128,
             block_length=128, temperature=0.0, cfg_scale=0.0, remasking="low_confidence",
             logits_eos_inf=False, confidence_eos_eot_inf=False, eot_id=None, uniform=None):
    """prompt [B, P] (left padded), attention_mask [B, P] -> (x [B, P + gen_length], nfe).

    `uniform(kind, step, shape)` supplies U(0,1) noise ("gumbel": [B, L, V]; "random": [B, L])
    for step `step`; default torch.rand in float64 as the reference does."""
    mask_id, eos_id = cfg["mask_token_id"], cfg["eos_token_id"]
    if uniform is None:
        uniform = lambda kind, step, shape: torch.rand(shape, dtype=torch.float64)  # noqa: E731
    B, Pl = prompt.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, Pl, dtype=torch.bool)
    x = torch.full((B, Pl + gen_length), mask_id, dtype=torch.long)
    x[:, :Pl] = prompt
    am = torch.cat([attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool)], 1)
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks
    nfe, step = 0, 0
    for nb in range(num_blocks):
        lo, hi = Pl + nb * block_length, Pl + (nb + 1) * block_length
        k_sched = num_transfer_tokens(x[:, lo:hi] == mask_id, steps_per_block)
        for i in range(steps_per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = llada_logits(weights, cfg, torch.cat([x, un_x]), torch.cat([am, am]))
                logits, un_logits = both.chunk(2)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = llada_logits(weights, cfg, x, am)
            nfe += 1
            if logits_eos_inf:
                logits[:, :, eos_id] = float("-inf")
            if temperature == 0:
                x0 = logits.argmax(-1)
            else:
                u = uniform("gumbel", step, logits.shape).double()
                x0 = (logits.exp() / (-torch.log(u)) ** temperature).argmax(-1)
            if remasking == "low_confidence":
                p = logits.softmax(-1)
                conf = torch.gather(p, -1, x0[..., None])[..., 0]
            elif remasking == "random":
                conf = uniform("random", step, x0.shape).double()
            else:
                raise NotImplementedError(remasking)
            if confidence_eos_eot_inf:
                special = (x0 == eos_id) | ((x0 == eot_id) if eot_id is not None else False)
                conf = torch.where(special, torch.full_like(conf, -1.0), conf)
            conf[:, hi:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, torch.full_like(conf, float("-inf")))
            for j in range(B):
                # torch.topk, with ties (e.g. several EOS at confidence -1) broken toward the
                # lowest position: topk leaves their order unspecified, fastdiff fixes it.
                idx = torch.sort(conf[j], descending=True, stable=True).indices[: int(k_sched[j, i])]
                x[j, idx] = x0[j, idx]
            step += 1
    return x, nfe


# ------------------------------------------------------------------ section 4: Fast-dLLM


def llada_logits_kv(weights, cfg, x, lo, hi, stored=None, mode="none"):
    """One row. Feed x[lo:hi] (positions lo..hi-1) through the model.

    mode "none": attend to the fed tokens only (lo = 0, hi = len(x): a full forward).
    mode "prefix": attend to stored K/V of positions [0, lo) plus the fed tokens' own.
    mode "dual": attend to stored K/V of [0, lo) and [hi, L) plus the fed tokens' own.
    stored: per layer (K [L, Hkv, hd], V) as computed by the block-start full forward.
    Returns logits [hi - lo, vocab] float64 and the fed tokens' per-layer (K, V) (after RoPE)."""
    W = {k: v.double() for k, v in weights.items()}
    d, H = cfg["d_model"], cfg["n_heads"]
    Hkv = cfg.get("n_kv_heads") or H
    hd, eps = d // H, cfg["rms_norm_eps"]
    S = hi - lo
    pos = torch.arange(lo, hi).double()  # absolute positions
    inv_freq = cfg["rope_theta"] ** (-torch.arange(0, hd, 2).double() / hd)
    ang = torch.cat([pos[:, None] * inv_freq] * 2, -1)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # [S, 1, hd]
    h = W[P + "wte.weight"][x[lo:hi]]
    fed = []
    for i in range(cfg["n_layers"]):
        w = lambda n: W[f"{P}blocks.{i}.{n}.weight"]  # noqa: E731
        n = rms_norm(h, w("attn_norm"), eps)
        q = (n @ w("q_proj").T).view(S, H, hd)
        k = (n @ w("k_proj").T).view(S, Hkv, hd)
        v = (n @ w("v_proj").T).view(S, Hkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        fed.append((k, v))
        if mode == "none":
            K, V = k, v
        elif mode == "prefix":
            K, V = torch.cat([stored[i][0][:lo], k]), torch.cat([stored[i][1][:lo], v])
        elif mode == "dual":
            K = torch.cat([stored[i][0][:lo], k, stored[i][0][hi:]])
            V = torch.cat([stored[i][1][:lo], v, stored[i][1][hi:]])
        else:
            raise ValueError(mode)
        K, V = K.double().repeat_interleave(H // Hkv, 1), V.double().repeat_interleave(H // Hkv, 1)
        s = torch.einsum("qhd,khd->hqk", q, K) / math.sqrt(hd)  # bidirectional: no mask
        a = torch.einsum("hqk,khd->qhd", s.softmax(-1), V).reshape(S, d)
        h = h + a @ w("attn_out").T
        m = rms_norm(h, w("ff_norm"), eps)
        g = m @ w("ff_proj").T
        h = h + (g * torch.sigmoid(g) * (m @ w("up_proj").T)) @ w("ff_out").T
    h = rms_norm(h, W[P + "ln_f.weight"], eps)
    return (h @ W[P + "ff_out.weight"].T)[..., : cfg["vocab_size"]], fed


def generate_fast(weights, cfg, prompt, *, gen_length, block_length, steps=None, threshold=None,
                  factor=None, cache="none", stop_at_eos=False, temperature=0.0,
                  remasking="low_confidence", logits_eos_inf=False,
                  confidence_eos_eot_inf=False, eot_id=None, uniform=None):
    """ONE prompt (a list of ids) -> (generated ids [gen_length], nfe), per dllm-spec section 4.

    Fixed schedule when threshold and factor are None (steps per block as in section 3);
    threshold: commit masked in-block positions with conf >= tau plus the most confident one;
    factor: commit the largest prefix of descending confidences with c_i >= 1 - f / (i + 1).
    cache "prefix" / "dual": the block-start forward is a full one and stores every position's
    K/V; further steps of the block feed x[block_start:] (prefix) or the block only (dual).
    stop_at_eos: once an EOS/EoT is committed with everything before it committed, the rest
    of the row becomes EOS and decoding ends. `uniform(kind, step, shape)` as in `generate`,
    with shape [1, L, V] for "gumbel" and [1, L] for "random"."""
    mask_id, eos_id = cfg["mask_token_id"], cfg["eos_token_id"]
    stop_ids = [eos_id] + ([eot_id] if eot_id is not None else [])
    if uniform is None:
        uniform = lambda kind, step, shape: torch.rand(shape, dtype=torch.float64)  # noqa: E731
    Pl = len(prompt)
    x = torch.tensor(list(prompt) + [mask_id] * gen_length)
    L = len(x)
    nfe = 0
    fixed = threshold is None and factor is None
    spb = steps // (gen_length // block_length) if fixed else None

    def predict(lo, hi, stored, mode):
        nonlocal nfe
        logits, fed = llada_logits_kv(weights, cfg, x, lo, hi, stored, mode)
        logits = logits.clone()
        step = nfe
        nfe += 1
        if logits_eos_inf:
            logits[:, eos_id] = float("-inf")
        if temperature == 0:
            x0 = logits.argmax(-1)
        else:
            u = uniform("gumbel", step, (1, L, logits.shape[-1]))[0, lo:hi].double()
            x0 = (logits.exp() / (-torch.log(u)) ** temperature).argmax(-1)
        if remasking == "low_confidence":
            conf = logits.softmax(-1).gather(-1, x0[:, None])[:, 0]
        else:
            conf = uniform("random", step, (1, L))[0, lo:hi].double()
        if confidence_eos_eot_inf:
            special = torch.tensor([int(t) in stop_ids for t in x0])
            conf = torch.where(special, torch.full_like(conf, -1.0), conf)
        return x0, conf, fed

    for nb in range(gen_length // block_length):
        b0, b1 = Pl + nb * block_length, Pl + (nb + 1) * block_length
        if fixed:
            k_sched = num_transfer_tokens((x[None, b0:b1] == mask_id), spb)[0]
        stored, i = None, 0
        while (x[b0:b1] == mask_id).any() and (not fixed or i < spb):
            if cache == "none" or i == 0:
                lo, hi, mode = 0, L, "none"
            else:
                lo, hi, mode = b0, (L if cache == "prefix" else b1), cache
            x0, conf, fed = predict(lo, hi, stored, mode)
            if cache != "none" and i == 0:
                stored = fed  # every position's K/V, from the block-start forward
            # confidences of the block's masked positions, by absolute position
            cands = [(float(conf[p - lo]), p) for p in range(b0, b1) if x[p] == mask_id]
            cands.sort(key=lambda cp: (-cp[0], cp[1]))  # most confident first, ties: lowest pos
            if fixed:
                chosen = cands[: int(k_sched[i])]
            elif threshold is not None:
                chosen = [cands[0]] + [cp for cp in cands[1:] if cp[0] >= threshold]
            else:
                n = 1
                while n < len(cands) and cands[n][0] >= 1 - factor / (n + 2):
                    n += 1  # cands[n] is c_(n+1): condition c_i >= 1 - f / (i + 1)
                chosen = cands[:n]
            for _, p in chosen:
                x[p] = x0[p - lo]
            i += 1
            if stop_at_eos:
                gen = x[Pl:].tolist()
                first = next((j for j, t in enumerate(gen) if t in stop_ids), None)
                if first is not None and mask_id not in gen[:first]:
                    x[Pl + first + 1:] = eos_id
                    return x[Pl:].tolist(), nfe
    return x[Pl:].tolist(), nfe
