"""Scoring (x0 + confidence) and unmasking policies: objects the one denoising loop consults.

Each is configured once per request; inside a step they only launch device ops."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import GenerationConfig
from .state import DecodeState


@dataclass(frozen=True)
class Scorer:
    """Fused LM head + confidence (design.md step 2) for one request's settings."""

    mode: str  # the score: GenerationConfig.score (the LM-head kernel's confidence modes)
    temperature: float
    eos_id: int
    eot_id: Optional[int]
    suppress_eos: bool
    eos_eot_conf: bool
    top_p: Optional[float] = None  # Dream's / SDAR's filters (on the tempered logits)
    top_k: Optional[int] = None
    filter_order: str = "top_p_first"  # Dream's; SDAR: "top_k_first"
    conf_filtered: bool = True  # False: SDAR's evaluation confidence (unfiltered p[x0])

    @classmethod
    def from_config(cls, gen: GenerationConfig, eos_id: int, eot_id: Optional[int]) -> "Scorer":
        top_p = gen.top_p if gen.top_p is not None and gen.top_p < 1 else None  # 1: no filter
        sdar = gen.family == "sdar"
        return cls(mode=gen.score, temperature=float(gen.temperature), eos_id=eos_id,
                   eot_id=eot_id, suppress_eos=gen.logits_eos_inf,
                   eos_eot_conf=gen.confidence_eos_eot_inf, top_p=top_p, top_k=gen.top_k,
                   filter_order="top_k_first" if sdar else "top_p_first",
                   conf_filtered=not sdar or gen.confidence == "filtered")

    def __call__(self, ops, hidden: torch.Tensor, row_map: torch.Tensor, lm_head: torch.Tensor,
                 state: DecodeState, pos_base: torch.Tensor):
        """hidden [B, S, d], row_map [B, Lb] -> x0 [B, Lb] int64, conf [B, Lb] fp32. With
        top-p / top-k the scores come from the filtered distribution (an unfused path: the
        block rows' logits are materialized, dllm-spec.md section 5's filter order)."""
        if self.top_p is not None or self.top_k is not None:
            return ops.lm_head_confidence_filtered(
                hidden, row_map, lm_head, mode=self.mode, temperature=self.temperature,
                top_p=self.top_p, top_k=self.top_k, seed=state.seed, step=state.step,
                pos_base=pos_base, eos_id=self.eos_id, eot_id=self.eot_id,
                suppress_eos=self.suppress_eos, eos_eot_conf=self.eos_eot_conf,
                order=self.filter_order, conf_filtered=self.conf_filtered)
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

    ends_blocks_early = False  # k_i >= 1 while steps <= MASKs (LLaDA: steps <= gen_length)

    def __init__(self, steps_per_block: int) -> None:
        self.steps_per_block = steps_per_block
        self.prepare_steps = steps_per_block  # the step's prepare op derives k (m0 schedule)

    def max_steps(self, block_length: int) -> int:
        return self.steps_per_block

    def live_bound(self, block_length: int, i: int) -> int:
        """The most MASKs a block row can have left before step i: a row that had m MASKs
        has m - i (m // s) - min(m % s, i) (each step commits its full k while MASKs are
        left), which grows with m, so m = Lb bounds every row."""
        Lb, s = block_length, self.steps_per_block
        return max(0, Lb - i * (Lb // s) - min(Lb % s, i))

    prepare_ratios = None

    def bind(self, state: DecodeState) -> None:
        """Nothing to allocate: k lives in the step's prepared tensors."""

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               prep, i=None) -> torch.Tensor:
        """Commit the step's k tokens per row into state.x and count the step for the rows that
        took part; returns the commit mask [B, Lb]."""
        Lb = conf.shape[1]
        return ops.select_topk_commit(state.x, x0, conf, prep.block_start, prep.k,
                                      k_max=-(-Lb // self.steps_per_block), step=state.step,
                                      nfe=state.nfe)


def dream_ratios(steps: int, device, eps: float = 1e-3) -> torch.Tensor:
    """Dream's per-step transfer ratio 1 - s/t (fp32) for t, s consecutive entries of
    linspace(1, eps, steps + 1) (float32, on `device` as Dream computes it), and 1 at the last
    step (everything left is committed)."""
    t = torch.linspace(1, eps, steps + 1, device=device)  # float32
    r = 1 - t[1:] / t[:-1]
    r[-1] = 1.0
    return r


class _TimestepPolicy:
    """Dream's fixed rules over steps_per_block timesteps of a block (dllm-spec.md section 5):
    step i transfers with ratio r_i = 1 - s/t (1 at the last step), read from a device table
    by the step index (a host int, or a device scalar in captured graphs)."""

    prepare_steps = 0  # k is not LLaDA's schedule
    uses_ratios = False  # the step's prepare op derives k from the ratio table
    ends_blocks_early = False  # the quota leaves MASKs until r = 1 at the last step

    def __init__(self, steps_per_block: int) -> None:
        self.steps_per_block = steps_per_block
        self._ratios: Optional[torch.Tensor] = None

    @property
    def prepare_ratios(self) -> Optional[torch.Tensor]:
        return self._ratios if self.uses_ratios else None

    def max_steps(self, block_length: int) -> int:
        return self.steps_per_block

    def live_bound(self, block_length: int, i: int) -> int:
        """Origin commits by chance: no bound below the block length."""
        return block_length

    def bind(self, state: DecodeState) -> None:
        if self._ratios is None or self._ratios.device != state.x.device:
            self._ratios = dream_ratios(self.steps_per_block, state.x.device)

    def ratio(self, i) -> torch.Tensor:
        """r_i as a 0-d fp32 device tensor."""
        if isinstance(i, int):
            return self._ratios[i]
        return self._ratios.index_select(0, i.reshape(1).long())[0]


class QuotaPolicy(_TimestepPolicy):
    """Dream's top-n rule: n = int(masked * r_i) with `masked` the block's MASK count now
    (the batch mean in Dream's sampler, which equals every row's count there: one n per step
    for all rows); the n best by confidence, or with alg_temp > 0 n positions sampled without
    replacement from softmax(conf / alg_temp) (Gumbel-top-n, Philox stream 2). n is the
    step's k from the prepare op (the ratio table is its input)."""

    uses_ratios = True

    def __init__(self, steps_per_block: int, alg_temp: float = 0.0) -> None:
        super().__init__(steps_per_block)
        self.alg_temp = alg_temp
        self._bounds: dict[int, list[int]] = {}  # block length -> bound before each step

    def live_bound(self, block_length: int, i: int) -> int:
        """A row with m MASKs keeps m - int(m r_j) after step j, which grows with m: iterate
        from m = Lb with each ratio lowered by 1e-6 (the device's fp32 product may round up,
        never by that much), so the bound is never below the true count."""
        if block_length not in self._bounds:
            m, bounds = block_length, []
            for r in dream_ratios(self.steps_per_block, "cpu").tolist():
                bounds.append(m)
                m -= max(0, math.floor(m * (r - 1e-6)))
            self._bounds[block_length] = bounds
        return self._bounds[block_length][i]

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               prep, i=None) -> torch.Tensor:
        if self.alg_temp > 0:
            conf = ops.gumbel_scores(conf, self.alg_temp, seed=state.seed, step=state.step,
                                     pos_base=prep.pos_base)
        return ops.select_topk_commit(state.x, x0, conf, prep.block_start, prep.k,
                                      step=state.step, nfe=state.nfe)


class OriginPolicy(_TimestepPolicy):
    """Dream's origin rule: each masked position is committed when its uniform draw (the
    `random` score, Philox stream 1) is below r_i = 1 - s/t (all at the last step)."""

    ends_blocks_early = True  # the draws may commit a block's last MASK before its last step

    def commit(self, ops, state: DecodeState, x0: torch.Tensor, conf: torch.Tensor,
               prep, i=None) -> torch.Tensor:
        return ops.select_below_commit(state.x, x0, conf, prep.block_start, self.ratio(i),
                                       step=state.step, nfe=state.nfe)


class _PerRowValuePolicy:
    """A rule with one number per request (tau or f), held per row on the device so captured
    graphs read it from memory; a block runs until it has no MASK left. Subclasses name their
    select op (ops.<op>(x, x0, conf, block_start, values))."""

    steps_per_block = None
    prepare_steps = 0
    prepare_ratios = None
    ends_blocks_early = True  # a block runs until its MASKs are gone
    op: str

    def __init__(self, value: float) -> None:
        self.value = value
        self._values: Optional[torch.Tensor] = None  # [B] fp32

    def max_steps(self, block_length: int) -> int:
        return block_length  # every step commits at least one token per live row

    def live_bound(self, block_length: int, i: int) -> int:
        """Every step commits at least one token of a row that has MASKs left."""
        return max(0, block_length - i)

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
               prep, i=None) -> torch.Tensor:
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
    """The unmasking policy of a (resolved) request: its rule (GenerationConfig.rule)."""
    rule = gen.rule
    if rule == "threshold":
        return ThresholdPolicy(float(gen.threshold))
    if rule == "factor":
        return FactorPolicy(float(gen.factor))
    if rule == "quota":
        return QuotaPolicy(gen.steps_per_block, float(gen.alg_temp or 0.0))
    if rule == "origin":
        return OriginPolicy(gen.steps_per_block)
    return TopKSchedule(gen.steps_per_block)
