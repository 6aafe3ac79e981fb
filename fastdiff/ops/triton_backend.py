"""The Triton backend: attention, the fused LM head + confidence and select-and-commit run as
Triton kernels (fastdiff.kernels); rms_norm, RoPE and silu-mul stay on the torch backend until a
benchmark shows a fused kernel pays (torch.matmul/cuBLAS keeps the big projections). Falls back
to torch only where a kernel lacks the shape: head dims outside attention.HEAD_DIMS, blocks longer
than select_commit.MAX_BLOCK_L.

Same contracts as fastdiff/ops/reference.py and TorchOps."""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels import attention as _attention
from ..kernels import lm_head_confidence as _lm_head
from ..kernels import select_commit as _select
from .torch_backend import TorchOps


class TritonOps(TorchOps):
    """Ops a model and the denoising loop call; no host syncs in any of them."""

    name = "triton"

    @staticmethod
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kv_start: torch.Tensor, kv_end: torch.Tensor) -> torch.Tensor:
        """q [B, Sq, H, D], k/v [B, Skv, Hkv, D] (strided, last dim contiguous), kv_start/kv_end
        [B] int -> [B, Sq, H, D]. Head dims the kernel lacks go to torch SDPA."""
        if q.shape[-1] not in _attention.HEAD_DIMS:
            return TorchOps.attention(q, k, v, kv_start, kv_end)
        return _attention.attention(q, k, v, kv_start.to(torch.int32), kv_end.to(torch.int32))

    @staticmethod
    def lm_head_confidence(hidden: torch.Tensor, row_map: torch.Tensor, weight: torch.Tensor, *,
                           mode: str, temperature: float, seed: torch.Tensor, step: torch.Tensor,
                           pos_base: torch.Tensor, eos_id: int, eot_id: Optional[int],
                           suppress_eos: bool, eos_eot_conf: bool):
        """hidden [B, S, d], row_map int32 [B, Lb], W [V, d] -> x0 int64 [B, Lb], conf fp32
        [B, Lb]; logits never reach memory."""
        return _lm_head.lm_head_confidence(
            hidden.contiguous() if hidden.stride(-1) != 1 else hidden,
            row_map.to(torch.int32), weight, mode=mode, temperature=temperature, seed=seed,
            step=step, pos_base=pos_base, eos_id=eos_id, eot_id=eot_id,
            suppress_eos=suppress_eos, eos_eot_conf=eos_eot_conf)

    @staticmethod
    def select_topk_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                           block_start: torch.Tensor, k: torch.Tensor,
                           k_max: Optional[int] = None) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start/k [B] -> commit [B, Lb]:
        the k highest finite confidences per row, lowest index first among ties. k_max bounds
        every k (default Lb)."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_topk_commit(x, x0, conf, block_start, k)
        return _select.select_commit(x, x0, conf, block_start, k=k, k_max=k_max)

    @staticmethod
    def select_threshold_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                                block_start: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start [B], tau fp32 [B] ->
        commit [B, Lb]: finite conf >= tau, plus the single most confident per row."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_threshold_commit(x, x0, conf, block_start, tau)
        return _select.select_commit(x, x0, conf, block_start, tau=tau)

    @staticmethod
    def select_factor_commit(x: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                             block_start: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """x [B, L] (updated in place), x0/conf [B, Lb], block_start [B], factor fp32 [B] ->
        commit [B, Lb]: the largest sorted prefix with c_i >= 1 - f / (i + 1), c_1 always."""
        if conf.shape[1] > _select.MAX_BLOCK_L:
            return TorchOps.select_factor_commit(x, x0, conf, block_start, factor)
        return _select.select_commit(x, x0, conf, block_start, factor=factor)
