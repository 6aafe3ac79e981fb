"""Scoring (x0 + confidence) and unmasking policies: objects the one denoising loop consults.

Each is configured once per request; inside a step they only launch device ops."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..config import GenerationConfig
from .state import DecodeState


@dataclass(frozen=True)
class Scorer:
    """Fused LM head + confidence (design.md step 2) for one request's settings."""

    mode: str  # "low_confidence" | "random"
    temperature: float
    eos_id: int
    eot_id: Optional[int]
    suppress_eos: bool
    eos_eot_conf: bool

    @classmethod
    def from_config(cls, gen: GenerationConfig, eos_id: int, eot_id: Optional[int]) -> "Scorer":
        return cls(mode=gen.remasking, temperature=float(gen.temperature), eos_id=eos_id,
                   eot_id=eot_id, suppress_eos=gen.logits_eos_inf,
                   eos_eot_conf=gen.confidence_eos_eot_inf)

    def __call__(self, ops, hidden: torch.Tensor, row_map: torch.Tensor, lm_head: torch.Tensor,
                 state: DecodeState, pos_base: torch.Tensor):
        """hidden [B, S, d], row_map [B, Lb] -> x0 [B, Lb] int64, conf [B, Lb] fp32."""
        return ops.lm_head_confidence(
            hidden, row_map, lm_head, mode=self.mode, temperature=self.temperature,
            seed=state.seed, step=state.step, pos_base=pos_base, eos_id=self.eos_id,
            eot_id=self.eot_id, suppress_eos=self.suppress_eos, eos_eot_conf=self.eos_eot_conf)


class TopKSchedule:
    """LLaDA's fixed schedule: a block's M masks spread over `steps` steps, M // steps each,
    one more for the first M % steps steps (computed per row on the device)."""

    def max_steps(self, block_length: int) -> int:
        return self.steps_per_block

    def __init__(self, steps_per_block: int) -> None:
        self.steps_per_block = steps_per_block
        self._base: Optional[torch.Tensor] = None
        self._rem: Optional[torch.Tensor] = None

    def begin_block(self, state: DecodeState, start: int, length: int) -> None:
        masked = (state.x[:, start:start + length] == state.mask_id).sum(1)  # [B]
        self._base = masked // self.steps_per_block
        self._rem = masked % self.steps_per_block

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               block_start: torch.Tensor, i: int) -> torch.Tensor:
        """Commit step i's k tokens per row into state.x; returns the commit mask [B, Lb]."""
        k = self._base + (self._rem > i).to(self._base.dtype)  # [B]
        return ops.select_topk_commit(state.x, x0, conf, block_start, k)


class ThresholdPolicy:
    """Fast-dLLM threshold rule: commit every masked in-block position with conf >= tau, and
    always the single most confident one; the block runs until it has no MASK left."""

    steps_per_block = None

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self._tau: Optional[torch.Tensor] = None

    def max_steps(self, block_length: int) -> int:
        return block_length  # every step commits at least one token per live row

    def begin_block(self, state: DecodeState, start: int, length: int) -> None:
        if self._tau is None:
            self._tau = torch.full((state.batch,), self.tau, dtype=torch.float32,
                                   device=state.x.device)

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               block_start: torch.Tensor, i: int) -> torch.Tensor:
        return ops.select_threshold_commit(state.x, x0, conf, block_start, self._tau)


class FactorPolicy(ThresholdPolicy):
    """Fast-dLLM factor rule: commit the largest prefix of the descending confidences with
    c_i >= 1 - f / (i + 1) (c_1 always)."""

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               block_start: torch.Tensor, i: int) -> torch.Tensor:
        return ops.select_factor_commit(state.x, x0, conf, block_start, self._tau)


def make_policy(gen: GenerationConfig):
    """The unmasking policy of a request: fixed top-k schedule, threshold or factor."""
    if gen.threshold is not None:
        return ThresholdPolicy(float(gen.threshold))
    if gen.factor is not None:
        return FactorPolicy(float(gen.factor))
    return TopKSchedule(gen.steps_per_block)
