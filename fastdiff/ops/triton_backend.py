"""The Triton backend: every op of a denoising step except the GEMMs runs as a Triton kernel
(fastdiff.kernels): residual add + RMSNorm, RoPE + KV-store write, attention, SiLU * up, the
fused LM head + confidence, the step's bookkeeping, select-and-commit (with the step counters)
and the early-stop test. torch.matmul / cuBLAS keeps the four projections of a layer (Q/K/V and
gate/up concatenated at load). Falls back to torch only where a kernel lacks the shape: head
dims outside attention.HEAD_DIMS, blocks longer than select_commit.MAX_BLOCK_L.

Same contracts as fastdiff/ops/reference.py and TorchOps."""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels import add_rms_norm as _add_rms_norm
from ..kernels import attention as _attention
from ..kernels import freeze_finished as _freeze
from ..kernels import lm_head_confidence as _lm_head
from ..kernels import rope_kv as _rope_kv
from ..kernels import select_commit as _select
from ..kernels import silu_mul as _silu_mul
from ..kernels import step_prepare as _prepare
from .torch_backend import TorchOps


class TritonOps(TorchOps):
    """Ops a model and the denoising loop call; no host syncs in any of them."""

    name = "triton"
    step_prepare = staticmethod(_prepare.step_prepare)
    compacts_rows = False  # see TorchOps.compacts_rows

    @staticmethod
    def add_rms_norm(x: torch.Tensor, delta: Optional[torch.Tensor], weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """x, delta [..., d] -> (s = x + delta, rms_norm(s)) in one launch."""
        d = x.shape[-1]
        s, y = _add_rms_norm.add_rms_norm(
            x.reshape(-1, d), None if delta is None else delta.reshape(-1, d), weight, eps)
        return s.view(x.shape), y.view(x.shape)

    @staticmethod
    def rope_kv(qkv: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, k_dest: torch.Tensor, v_dest: torch.Tensor, *, n_heads: int,
                n_kv_heads: int, head_dim: int, q_norm: Optional[torch.Tensor] = None,
                k_norm: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
        """(QK-norm +) RoPE of q and k and the KV-store write of k and v in one launch (slot -1:
        skipped)."""
        return _rope_kv.rope_kv(qkv, pos, slot, cos, sin, k_dest, v_dest, n_heads=n_heads,
                                n_kv_heads=n_kv_heads, head_dim=head_dim, q_norm=q_norm,
                                k_norm=k_norm, eps=eps)

    @staticmethod
    def silu_mul_packed(gu: torch.Tensor) -> torch.Tensor:
        """gu [..., 2m] = [gate | up] -> silu(gate) * up [..., m] in one launch."""
        out = _silu_mul.silu_mul(gu.reshape(-1, gu.shape[-1]))
        return out.view(*gu.shape[:-1], gu.shape[-1] // 2)

    @staticmethod
    def freeze_finished(x: torch.Tensor, active: torch.Tensor, prompt_len: int,
                        stop_ids: torch.Tensor, eos_id: int, mask_id: int) -> None:
        _freeze.freeze_finished(x, active, prompt_len, stop_ids, eos_id, mask_id)

    @staticmethod
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kv_start: torch.Tensor, kv_end: torch.Tensor, *, block_causal: int = 0,
                  q_start: int = 0, kv_full: bool = False) -> torch.Tensor:
        """q [B, Sq, H, D], k/v [B, Skv, Hkv, D] (strided, last dim contiguous), kv_start/kv_end
        [B] int32 -> [B, Sq, H, D]; block_causal = Bk > 0: key block <= the query's block (query
        m at column q_start + m). Head dims the kernel lacks go to torch SDPA. kv_full (every
        row's span is all keys) changes nothing here: the kernel reads the spans anyway."""
        if q.shape[-1] not in _attention.HEAD_DIMS:
            return TorchOps.attention(q, k, v, kv_start, kv_end, block_causal=block_causal,
                                      q_start=q_start, kv_full=kv_full)
        return _attention.attention(q, k, v, kv_start, kv_end, block_causal=block_causal,
                                    q_start=q_start)

    @staticmethod
    def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                           mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                           pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                           suppress_eos: bool, eos_eot_conf: bool):
        """hidden [B, S, d], row_map int32 [B, Lb], W [V, d] -> x0 int64 [B, Lb], conf fp32
        [B, Lb]; logits never reach memory."""
        return _lm_head.lm_head_confidence(
            hidden, row_map, weight, mode=mode, temperature=temperature, seed=seed,
            step=step, pos_base=pos_base, eos_id=eos_id, eot_id=eot_id,
            suppress_eos=suppress_eos, eos_eot_conf=eos_eot_conf)

    @staticmethod
    def select_topk_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                           block_start: torch.Tensor, k: torch.Tensor,
                           k_max: Optional[int] = None, step: Optional[torch.Tensor] = None,
                           nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start/k [B] -> commit [B, Lb]:
        the k highest finite confidences per row, lowest index first among ties. k_max bounds
        every k (default Lb); step / nfe +1 for the rows that took part."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_topk_commit(x, x0, conf, block_start, k, step=step, nfe=nfe)
        return _select.select_commit(x, x0, conf, block_start, k=k, k_max=k_max, step=step,
                                     nfe=nfe)

    @staticmethod
    def select_threshold_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                                block_start: torch.Tensor, tau: torch.Tensor,
                                step: Optional[torch.Tensor] = None,
                                nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start [B], tau fp32 [B] ->
        commit [B, Lb]: finite conf >= tau, plus the single most confident per row."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_threshold_commit(x, x0, conf, block_start, tau, step=step,
                                                    nfe=nfe)
        return _select.select_commit(x, x0, conf, block_start, tau=tau, step=step, nfe=nfe)

    @staticmethod
    def select_factor_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                             block_start: torch.Tensor, factor: torch.Tensor,
                             step: Optional[torch.Tensor] = None,
                             nfe: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start [B], factor fp32 [B] ->
        commit [B, Lb]: the largest sorted prefix with c_i >= 1 - f / (i + 1), c_1 always."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_factor_commit(x, x0, conf, block_start, factor, step=step,
                                                 nfe=nfe)
        return _select.select_commit(x, x0, conf, block_start, factor=factor, step=step,
                                     nfe=nfe)
