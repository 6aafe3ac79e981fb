"""The practical torch backend: model dtype, SDPA, matmul. The CPU path and the GPU fallback.

Same contracts as fastdiff/ops/reference.py; tests compare the two."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import cpu_fused, cpu_gemm
from . import reference as ref
from . import step_torch


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


def _scored_rows(hidden: torch.Tensor, row_map: torch.Tensor, pos_base: torch.Tensor):
    """The rows the LM head multiplies, each once -> (rows [B, N, d], their generation
    positions [B, N] int64 (the Philox counters), back [B, Lb] int64 or None).

    hidden with >= Lb rows: the block positions' rows (hidden itself when it has exactly Lb,
    row j being position j), positions pos_base + j, back None. Fewer rows than Lb: a
    compacted feed (compact_live), where hidden row c is scored at the one block position j
    with row_map[b, j] == c (padding rows at none: they get position pos_base, unread);
    back = row_map clamped, to gather the rows' results to block positions."""
    B, Lb = row_map.shape
    j = torch.arange(Lb, device=hidden.device)
    n = hidden.shape[1]
    if n >= Lb:
        rows = hidden if n == Lb else hidden.gather(
            1, row_map.long().clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        return rows, pos_base[:, None].long() + j[None], None
    dst = torch.where(row_map >= 0, row_map.long(), n)  # unscored positions to a dump column
    at = torch.zeros(B, n + 1, dtype=torch.int64, device=hidden.device).scatter_(
        1, dst, j.expand(B, Lb))[:, :n]
    return hidden, pos_base[:, None].long() + at, row_map.long().clamp(min=0)


def _topk_mask(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, Lb] bool: the k[b] highest finite confidences of each row, lowest index first among
    ties (a stable descending sort, then each position's rank)."""
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return (rank < k[:, None]) & torch.isfinite(conf)


def _commit(x: torch.Tensor, x0: torch.Tensor, commit: torch.Tensor,
            block_start: torch.Tensor) -> torch.Tensor:
    """x[b, block_start[b] + j] = x0[b, j] where commit[b, j] (in place); returns commit."""
    pos = block_start[:, None].long() + torch.arange(commit.shape[1], device=x.device)[None]
    x.scatter_(1, pos, torch.where(commit, x0.to(x.dtype), x.gather(1, pos)))
    return commit


class TorchOps:
    """Ops a model and the denoising loop call; no host syncs in any of them."""

    name = "torch"
    step_prepare = staticmethod(step_torch.step_prepare)
    freeze_finished = staticmethod(step_torch.freeze_finished)
    # On the CPU the eager loop feeds a cached step's last layer and LM head only the block
    # positions still MASKed (compact_live): both are compute bound there, so half the rows is
    # half the time. Not on a GPU (either backend): at batch 1 the LM head streams its weight
    # whatever the row count, and eager steps keep the captured graphs' shapes (same kernels).
    compacts_rows = True  # (the loop compacts on CPU tensors only)

    @staticmethod
    def compact_live(rows: torch.Tensor, row_map: torch.Tensor, n: int):
        """rows int64 [B, Lb] (the fed-token index of each block position), row_map int32
        [B, Lb] (j where scored, else -1), n >= every row's scored count -> (rows' [B, n]: the
        fed-token indices of each row's scored positions in position order, then unscored
        ones as padding; row_map' [B, Lb]: the index into rows' of each scored position, -1
        elsewhere). The forward then runs its last layer on rows' alone and the LM head scores
        each of them once (_scored_rows)."""
        live = row_map >= 0
        order = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices[:, :n]
        return rows.gather(1, order), torch.where(live, live.cumsum(1, dtype=torch.int32) - 1, -1)

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [..., d], weight [d] -> [..., d]: fp32 normalize, cast back, times weight."""
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            return F.rms_norm(x, x.shape[-1:], weight, eps)  # one fused op, the same math
        return F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype) * weight

    @staticmethod
    def add_rms_norm(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """x, delta [..., d] (delta None: no add), weight [d] -> (s = x + delta, rms_norm(s)),
        both in x.dtype; s is the residual stream the next block adds to. fp32 on a CPU: one
        fused pass (cpu_fused)."""
        if cpu_fused.usable(x, delta, weight):
            return cpu_fused.add_rms_norm(x, delta, weight, eps)
        s = x if delta is None else x + delta
        return s, TorchOps.rms_norm(s, weight, eps)

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
    def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, k_dest: torch.Tensor, v_dest: torch.Tensor, *, n_heads: int,
                n_kv_heads: int, head_dim: int, q_norm: Optional[torch.Tensor] = None,
                k_norm: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
        """qkv [B, S, (H + 2 Hkv) D], pos int64 [B, S], slot int32 [B, S], cos/sin fp32
        [T, D/2], k_dest/v_dest [B, Hkv, Tkv, D], q_norm/k_norm [D] or None -> q [B, S, H, D]
        after (QK-norm and) RoPE; writes RoPE(k) and v of token s into slot[b, s] of k_dest /
        v_dest. A slot of -1 goes to the destination's last slot, which a KV store keeps as a
        never-read trash slot (the Triton kernel skips it). q_norm/k_norm (both or neither):
        each q / k head is RMS-normalized in fp32 (weight product too) before the fp32 RoPE."""
        if (q_norm is None) != (k_norm is None):
            raise ValueError("q_norm and k_norm go together: pass both or neither")
        if cpu_fused.usable(qkv, cos, sin, k_dest, v_dest, q_norm, k_norm):  # one fused pass
            return cpu_fused.rope_kv(qkv, pos, slot, cos, sin, k_dest, v_dest, n_heads=n_heads,
                                     n_kv_heads=n_kv_heads, head_dim=head_dim, q_norm=q_norm,
                                     k_norm=k_norm, eps=eps)
        B, S, _ = qkv.shape
        H, Hkv, D = n_heads, n_kv_heads, head_dim
        t = qkv.view(B, S, H + 2 * Hkv, D)
        c, s = cos[pos][:, :, None], sin[pos][:, :, None]  # [B, S, 1, D/2]
        qk = t[:, :, :H + Hkv].float()
        if q_norm is not None:
            w = torch.cat([q_norm.float().expand(H, D), k_norm.float().expand(Hkv, D)])
            qk = qk * torch.rsqrt(qk.pow(2).mean(-1, keepdim=True) + eps) * w  # [B, S, H+Hkv, D]
        a, b = qk[..., :D // 2], qk[..., D // 2:]
        rot = torch.cat([a * c - b * s, b * c + a * s], dim=-1).to(qkv.dtype)
        T = k_dest.shape[2]
        idx = (torch.where(slot < 0, T - 1, slot).long(),)
        bidx = torch.arange(B, device=qkv.device)[:, None].expand(B, S)
        k_dest.transpose(1, 2).index_put_((bidx,) + idx, rot[:, :, H:])
        v_dest.transpose(1, 2).index_put_((bidx,) + idx, t[:, :, H + Hkv:])
        return rot[:, :, :H]

    @staticmethod
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kv_start: torch.Tensor, kv_end: torch.Tensor, *, block_causal: int = 0,
                  q_start: int = 0, kv_full: bool = False) -> torch.Tensor:
        """q [B, Sq, H, D], k/v [B, Skv, Hkv, D], kv_start/kv_end [B] int -> [B, Sq, H, D].
        kv_full: the caller knows (on the host) that kv_start is 0 and kv_end Skv in every row,
        so no span mask is built (without block_causal SDPA then runs unmasked, ~15% faster on
        a CPU).
        block_causal = Bk > 0: query m (key column q_start + m) also needs key block n // Bk <=
        its own block (one [B, 1, Sq, Skv] boolean mask; the prefill); 0: no causal mask. A
        query with no allowed key gets zeros (as the Triton kernel): SDPA's result for a fully
        masked row differs by device and backend (zeros on the CPU, NaN in some CUDA kernels),
        and a NaN written into a padding slot's K/V would poison later masked reads."""
        j = None if kv_full and block_causal == 0 else torch.arange(k.shape[1], device=q.device)
        mask = None if kv_full else \
            ((j[None] >= kv_start[:, None]) & (j[None] < kv_end[:, None]))[:, None, None, :]
        if block_causal > 0:
            m = q_start + torch.arange(q.shape[1], device=q.device)  # [Sq] key column
            causal = j[None] // block_causal <= m[:, None] // block_causal  # [Sq, Skv]
            mask = causal if mask is None else mask & causal  # [B, 1, Sq, Skv] or [Sq, Skv]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, enable_gqa=k.shape[2] != q.shape[2])
        if block_causal > 0:  # the prefill: padding queries of a padded row see no key
            out = torch.where(mask.any(-1, keepdim=True), out, 0.0)
        return out.transpose(1, 2)

    @staticmethod
    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """gate, up [..., m] -> silu(gate) * up in gate.dtype."""
        return F.silu(gate) * up

    @staticmethod
    def silu_mul_packed(gu: torch.Tensor) -> torch.Tensor:
        """gu [..., 2m] = [gate | up] (one concatenated GEMM's output) -> silu(gate) * up."""
        gate, up = gu.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                           mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                           pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                           suppress_eos: bool, eos_eot_conf: bool):
        """hidden [B, S, d], row_map int32 [B, Lb], W [V, d] -> x0 int64 [B, Lb], conf fp32 [B, Lb].

        Logits in the model dtype, statistics in fp32; see reference.lm_head_confidence."""
        dev = hidden.device
        rows, pos, back = _scored_rows(hidden, row_map, pos_base)
        logits = cpu_gemm.linear(rows, weight).float()  # [B, N, V]
        if suppress_eos:
            logits[..., eos_id] = float("-inf")
        if temperature == 0 and mode == "low_confidence":  # p(argmax) = 1 / sum exp(l - max)
            top, x0 = logits.max(-1)
            conf = (logits - top[..., None]).exp_().sum(-1).reciprocal_()
            return TorchOps._finish_conf(conf, x0, row_map, eos_id, eot_id, eos_eot_conf, back)
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
        return TorchOps._finish_conf(conf, x0, row_map, eos_id, eot_id, eos_eot_conf, back)

    @staticmethod
    def _finish_conf(conf, x0, row_map, eos_id: int, eot_id: Optional[int], eos_eot_conf: bool,
                     back: Optional[torch.Tensor] = None):
        """Scored rows' results to block positions (back: see _scored_rows), the EOS/EoT
        confidence rule, then -inf where not scored -> (x0, conf) [B, Lb]."""
        if back is not None:
            x0, conf = x0.gather(1, back), conf.gather(1, back)
        if eos_eot_conf:
            special = x0 == eos_id
            if eot_id is not None:
                special = special | (x0 == eot_id)
            conf = torch.where(special, -1.0, conf)
        return x0, torch.where(row_map >= 0, conf, float("-inf"))

    @staticmethod
    def lm_head_confidence_filtered(hidden: torch.Tensor, row_map: torch.Tensor,
                                    weight: torch.Tensor, *, mode: str, temperature: float,
                                    top_p: Optional[float], top_k: Optional[int],
                                    seed: torch.Tensor, step: torch.Tensor,
                                    pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                                    suppress_eos: bool, eos_eot_conf: bool,
                                    order: str = "top_p_first", conf_filtered: bool = True):
        """lm_head_confidence with Dream's top-p / top-k filters (unfused: the block rows'
        logits [B, Lb, V] are materialized in fp32). z = logits / T (T > 0), filtered
        (reference.filter_logits), p = softmax(z); x0 = argmax(z) at T = 0, else the
        Gumbel-max sample argmax(z + G) (stream 0, as unfiltered); conf by mode from p:
        maskgit_plus p[x0], maxprob, margin top1 - top2, neg_entropy sum p log p; random U.
        order "top_p_first" (Dream: top_p then top_k, dtype-minimum fill) or "top_k_first"
        (SDAR: top_k then top_p, -inf fill); conf_filtered False scores p of the unfiltered
        tempered distribution (SDAR's evaluation sampler) while x0 is drawn filtered."""
        if mode == "low_confidence":
            raise ValueError("top_p / top_k filter the Dream scores; low_confidence (LLaDA's "
                             "untempered probability) has no filtered form")
        dev = hidden.device
        rows, pos, back = _scored_rows(hidden, row_map, pos_base)
        logits = cpu_gemm.linear(rows, weight).float()  # [B, N, V]
        if suppress_eos:
            logits[..., eos_id] = float("-inf")
        zt = logits / temperature if temperature > 0 else logits
        z = ref.filter_logits(zt, top_p, top_k, order=order)
        if temperature == 0:
            x0 = z.argmax(-1)
        else:
            u = ref.uniform(seed[:, None, None], step[:, None, None], pos[..., None],
                            torch.arange(z.shape[-1], device=dev)[None, None], stream=0)
            x0 = (z + ref.gumbel(u)).argmax(-1)
        if mode == "random":
            conf = ref.uniform(seed[:, None], step[:, None], pos, 0, stream=1)
        else:
            conf = _tempered_conf(z if conf_filtered else zt, x0, mode, 0.0)  # already tempered
        return TorchOps._finish_conf(conf, x0, row_map, eos_id, eot_id, eos_eot_conf, back)

    @staticmethod
    def select_dynamic_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                              block_start: torch.Tensor, k: torch.Tensor, tau: torch.Tensor,
                              step: Optional[torch.Tensor] = None,
                              nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """SDAR's low_confidence_dynamic rule per row: H = finite conf > tau[b] (strict); all
        of H when |H| >= k[b], else the k[b] highest (lowest index first among ties). x in
        place; step / nfe +1 for the rows that took part. Returns the commit mask [B, Lb]."""
        step_torch.count_step(conf, step, nfe)
        above = torch.isfinite(conf) & (conf > tau[:, None])
        commit = torch.where((above.sum(1) >= k)[:, None], above, _topk_mask(conf, k))
        return _commit(x, x0, commit, block_start)

    @staticmethod
    def gumbel_scores(conf: torch.Tensor, alg_temp: float, *, seed: torch.Tensor,
                      step: torch.Tensor, pos_base: torch.Tensor) -> torch.Tensor:
        """conf / alg_temp + Gumbel noise where finite (reference.gumbel_scores)."""
        return ref.gumbel_scores(conf, alg_temp, seed=seed, step=step, pos_base=pos_base)

    @staticmethod
    def select_below_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                            block_start: torch.Tensor, p: torch.Tensor,
                            step: Optional[torch.Tensor] = None,
                            nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dream's origin rule: commit every finite conf (a uniform draw) < p (0-d fp32); x in
        place; step / nfe +1 for the rows that took part. Returns the commit mask [B, Lb]."""
        step_torch.count_step(conf, step, nfe)
        commit = torch.isfinite(conf) & (conf < p)
        return _commit(x, x0, commit, block_start)

    @staticmethod
    def select_topk_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                           block_start: torch.Tensor, k: torch.Tensor,
                           k_max: Optional[int] = None, step: Optional[torch.Tensor] = None,
                           nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start/k [B] -> per-row commit
        mask [B, Lb]: the k highest finite confidences, lowest index first among ties.
        step / nfe [B] (optional): +1 for every row with a finite confidence (it took part)."""
        step_torch.count_step(conf, step, nfe)
        return _commit(x, x0, _topk_mask(conf, k), block_start)

    @staticmethod
    def select_threshold_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                                block_start: torch.Tensor, tau: torch.Tensor,
                                step: Optional[torch.Tensor] = None,
                                nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Commit every finite conf >= tau[b] plus the row's single most confident position
        (lowest index among ties). x [B, L] in place; returns the commit mask [B, Lb]."""
        step_torch.count_step(conf, step, nfe)
        finite = torch.isfinite(conf)
        best = conf.argmax(1, keepdim=True)  # first maximum
        top = torch.zeros_like(finite).scatter_(1, best, True) & finite
        commit = top | (finite & (conf >= tau[:, None]))
        return _commit(x, x0, commit, block_start)

    @staticmethod
    def select_factor_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                             block_start: torch.Tensor, factor: torch.Tensor,
                             step: Optional[torch.Tensor] = None,
                             nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sort finite confidences descending c_1 >= c_2 >= ... (ties: lowest index first) and
        commit the largest prefix with c_i >= 1 - f / (i + 1); c_1 always. Returns the mask."""
        step_torch.count_step(conf, step, nfe)
        Lb = conf.shape[1]
        srt = torch.sort(conf, dim=1, descending=True, stable=True)
        i = torch.arange(1, Lb + 1, device=conf.device, dtype=torch.float32)[None]  # 1-based
        ok = (srt.values >= 1 - factor[:, None].float() / (i + 1)) & torch.isfinite(srt.values)
        ok[:, 0] = torch.isfinite(srt.values[:, 0])
        keep = ok.to(torch.int32).cumprod(1).bool()  # the prefix up to the first failure
        commit = torch.zeros_like(keep).scatter_(1, srt.indices, keep)
        return _commit(x, x0, commit, block_start)
