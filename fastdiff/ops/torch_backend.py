"""The practical torch backend: model dtype, SDPA, matmul. The CPU path and the GPU fallback.

Same contracts as fastdiff/ops/reference.py; tests compare the two."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import reference as ref


def _tempered_conf(logits: torch.Tensor, x0: torch.Tensor, mode: str, temperature: float):
    """Dream-style confidences from softmax(logits / T) (softmax(logits) at T = 0)."""
    logp = (logits / temperature if temperature > 0 else logits).log_softmax(-1)
    if mode == "maskgit_plus":  # the sampled token's probability
        return logp.gather(-1, x0[..., None])[..., 0].exp()
    if mode == "maxprob":
        return logp.max(-1).values.exp()
    if mode == "margin":
        top2 = logp.topk(2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if mode == "neg_entropy":
        p = logp.exp()
        return (p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    raise ValueError(f"unknown confidence mode {mode!r}; allowed: {ref.CONF_MODES}")


def _commit(x: torch.Tensor, x0: torch.Tensor, commit: torch.Tensor,
            block_start: torch.Tensor) -> torch.Tensor:
    """x[b, block_start[b] + j] = x0[b, j] where commit[b, j] (in place); returns commit."""
    pos = block_start[:, None].long() + torch.arange(commit.shape[1], device=x.device)[None]
    x.scatter_(1, pos, torch.where(commit, x0.to(x.dtype), x.gather(1, pos)))
    return commit


class TorchOps:
    """Ops a model and the denoising loop call; no host syncs in any of them."""

    name = "torch"

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [..., d], weight [d] -> [..., d]: fp32 normalize, cast back, times weight."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight

    @staticmethod
    def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
        """positions [B, S] -> cos, sin [B, S, head_dim] fp32."""
        return ref.rope_cos_sin(positions, head_dim, theta)

    @staticmethod
    def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """t [B, S, H, D] -> rotated copy in t.dtype (fp32 math, rotate-half form)."""
        tf = t.float()
        half = tf.shape[-1] // 2
        rot = torch.cat([-tf[..., half:], tf[..., :half]], dim=-1)
        return (tf * cos[:, :, None] + rot * sin[:, :, None]).to(t.dtype)

    @staticmethod
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kv_start: torch.Tensor, kv_end: torch.Tensor) -> torch.Tensor:
        """q [B, Sq, H, D], k/v [B, Skv, Hkv, D], kv_start/kv_end [B] int -> [B, Sq, H, D]."""
        j = torch.arange(k.shape[1], device=q.device)
        valid = (j[None] >= kv_start[:, None]) & (j[None] < kv_end[:, None])  # [B, Skv]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=valid[:, None, None, :], enable_gqa=k.shape[2] != q.shape[2])
        return out.transpose(1, 2)

    @staticmethod
    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """gate, up [..., m] -> silu(gate) * up in gate.dtype."""
        return F.silu(gate) * up

    @staticmethod
    def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                           mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                           pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                           suppress_eos: bool, eos_eot_conf: bool):
        """hidden [B, S, d], row_map int32 [B, Lb], W [V, d] -> x0 int64 [B, Lb], conf fp32 [B, Lb].

        Logits in the model dtype, statistics in fp32; see reference.lm_head_confidence."""
        B, Lb = row_map.shape
        dev = hidden.device
        rows = hidden.gather(1, row_map.long().clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = (rows @ weight.T).float()  # [B, Lb, V]
        if suppress_eos:
            logits[..., eos_id] = float("-inf")
        pos = pos_base[:, None].long() + torch.arange(Lb, device=dev)[None]  # [B, Lb]
        if temperature == 0:
            x0 = logits.argmax(-1)
        else:
            u = ref.uniform(seed[:, None, None], step[:, None, None], pos[..., None],
                            torch.arange(logits.shape[-1], device=dev)[None, None], stream=0)
            x0 = (logits / temperature + ref.gumbel(u)).argmax(-1)
        if mode == "low_confidence":
            conf = torch.exp(logits.gather(-1, x0[..., None])[..., 0] - logits.logsumexp(-1))
        elif mode == "random":
            conf = ref.uniform(seed[:, None], step[:, None], pos, 0, stream=1)
        else:
            conf = _tempered_conf(logits, x0, mode, temperature)
        if eos_eot_conf:
            special = x0 == eos_id
            if eot_id is not None:
                special = special | (x0 == eot_id)
            conf = torch.where(special, torch.full_like(conf, -1.0), conf)
        conf = torch.where(row_map >= 0, conf, torch.full_like(conf, float("-inf")))
        return x0, conf

    @staticmethod
    def select_topk_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                           block_start: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start/k [B] -> per-row commit
        mask [B, Lb]: the k highest finite confidences, lowest index first among ties."""
        Lb = conf.shape[1]
        order = torch.sort(conf, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(Lb, device=conf.device).expand_as(order))
        commit = (rank < k[:, None]) & torch.isfinite(conf)
        return _commit(x, x0, commit, block_start)

    @staticmethod
    def select_threshold_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                                block_start: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Commit every finite conf >= tau[b] plus the row's single most confident position
        (lowest index among ties). x [B, L] in place; returns the commit mask [B, Lb]."""
        finite = torch.isfinite(conf)
        best = conf.argmax(1, keepdim=True)  # first maximum
        top = torch.zeros_like(finite).scatter_(1, best, True) & finite
        commit = top | (finite & (conf >= tau[:, None]))
        return _commit(x, x0, commit, block_start)

    @staticmethod
    def select_factor_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                             block_start: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Sort finite confidences descending c_1 >= c_2 >= ... (ties: lowest index first) and
        commit the largest prefix with c_i >= 1 - f / (i + 1); c_1 always. Returns the mask."""
        Lb = conf.shape[1]
        srt = torch.sort(conf, dim=1, descending=True, stable=True)
        i = torch.arange(1, Lb + 1, device=conf.device, dtype=torch.float32)[None]  # 1-based
        ok = (srt.values >= 1 - factor[:, None].float() / (i + 1)) & torch.isfinite(srt.values)
        ok[:, 0] = torch.isfinite(srt.values[:, 0])
        keep = ok.to(torch.int32).cumprod(1).bool()  # the prefix up to the first failure
        commit = torch.zeros_like(keep).scatter_(1, srt.indices, keep)
        return _commit(x, x0, commit, block_start)
