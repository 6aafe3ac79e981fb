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


def scheduled_k(masked: torch.Tensor, steps: int, i) -> torch.Tensor:
    """LLaDA's schedule: tokens to commit at step i (int or device tensor) of a block that had
    `masked` [B] masks: masked // steps, one more for the first masked % steps steps."""
    return masked // steps + (masked % steps > i).to(masked.dtype)


class TopKSchedule:
    """LLaDA's fixed schedule, per row on the device: the step's k (scheduled_k of the block's
    MASK count at its first step) comes from the step's prepare op."""

    def __init__(self, steps_per_block: int) -> None:
        self.steps_per_block = steps_per_block

    def max_steps(self, block_length: int) -> int:
        return self.steps_per_block

    def bind(self, state: DecodeState) -> None:
        """Nothing to allocate: k lives in the step's prepared tensors."""

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               prep) -> torch.Tensor:
        """Commit the step's k tokens per row into state.x and count the step for the rows that
        took part; returns the commit mask [B, Lb]."""
        Lb = conf.shape[1]
        return ops.select_topk_commit(state.x, x0, conf, prep.block_start, prep.k,
                                      k_max=-(-Lb // self.steps_per_block), step=state.step,
                                      nfe=state.nfe)


class _PerRowValuePolicy:
    """A rule with one number per request (tau or f), held per row on the device so captured
    graphs read it from memory; a block runs until it has no MASK left. Subclasses name their
    select op (ops.<op>(x, x0, conf, block_start, values))."""

    steps_per_block = None
    op: str

    def __init__(self, value: float) -> None:
        self.value = value
        self._values: Optional[torch.Tensor] = None  # [B] fp32

    def max_steps(self, block_length: int) -> int:
        return block_length  # every step commits at least one token per live row

    def bind(self, state: DecodeState) -> None:
        """Allocate the per-row values on the state's device (once per policy)."""
        if self._values is None:
            self._values = torch.full((state.batch,), self.value, dtype=torch.float32,
                                      device=state.x.device)

    def set_value(self, value: float) -> None:
        """A new request's value for this (possibly graph-captured) policy: a device fill."""
        self.value = value
        if self._values is not None:
            self._values.fill_(value)

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               prep) -> torch.Tensor:
        """Commit into state.x by the subclass's select op and count the step for the rows
        that took part; returns the commit mask [B, Lb]."""
        return getattr(ops, self.op)(state.x, x0, conf, prep.block_start, self._values,
                                     step=state.step, nfe=state.nfe)


class ThresholdPolicy(_PerRowValuePolicy):
    """Fast-dLLM threshold rule: commit every masked in-block position with conf >= tau, and
    always the single most confident one."""

    op = "select_threshold_commit"


class FactorPolicy(_PerRowValuePolicy):
    """Fast-dLLM factor rule: commit the largest prefix of the descending confidences with
    c_i >= 1 - f / (i + 1) (c_1 always)."""

    op = "select_factor_commit"


def make_policy(gen: GenerationConfig):
    """The unmasking policy of a request: fixed top-k schedule, threshold or factor."""
    if gen.threshold is not None:
        return ThresholdPolicy(float(gen.threshold))
    if gen.factor is not None:
        return FactorPolicy(float(gen.factor))
    return TopKSchedule(gen.steps_per_block)
