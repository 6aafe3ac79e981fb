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
