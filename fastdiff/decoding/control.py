"""The loop's control decisions on the device: advance the block, refresh or cached step, stop.

`Control.update` is a pure-torch mirror of the CUDA control kernel (csrc/control.cu), line for
line, on the same device tensors: run before each step, it decides the due step (block, i) from
the canvas and the rows' active flags, with no host read. The CUDA-graph WHILE runner runs the
kernel inside the graph; the host-replay fallback and the CPU tests run this mirror (or the
kernel without conditionals) and read the flags between steps.

Rules (equal tokens and NFE to `loop.denoise`): a block is complete when no active row has a
MASK left in it (rows that finished wait for the others: their step is a no-op that counts no
NFE); then, or after max_steps steps, the block pointer advances (once per update); the first
step of a block is the refresh forward; the generation stops after the last block or when no
row is active (early stop froze them all). For the fixed schedule the kernel also writes each
row's k for the due step: the block's M masks at its start spread as M // steps each, one more
for the first M % steps steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .policies import scheduled_k
from .state import DecodeState

# control words, int32 ctl[CTL_WORDS]; the same indices as csrc/fastdiff.h
CTL_BLOCK, CTL_STEP, CTL_REFRESH, CTL_RUNNING, CTL_BRANCH, CTL_ITERS, CTL_ERROR, CTL_SEQ = range(8)
CTL_WORDS = 8


@dataclass(frozen=True)
class ControlSpec:
    """Sizes and the loop's shape for one generation. steps_per_block: the fixed schedule's
    steps (0: threshold / factor); phases: 2 when refresh and cached steps are different graphs;
    per_block: one graph set per block (the step's spans depend on the block start)."""

    block_length: int
    n_blocks: int
    steps_per_block: int
    max_steps: int
    phases: int = 2
    per_block: bool = False

    def __post_init__(self) -> None:
        if self.block_length < 1 or self.n_blocks < 1 or self.max_steps < 1:
            raise ValueError(f"block_length, n_blocks and max_steps must be >= 1: {self}")
        if self.steps_per_block < 0 or self.phases not in (1, 2):
            raise ValueError(f"steps_per_block must be >= 0 and phases 1 or 2: {self}")

    @classmethod
    def for_request(cls, req, state: DecodeState, *, per_block: bool = False) -> "ControlSpec":
        Lb = req.block_length
        steps = req.policy.steps_per_block or 0
        return cls(block_length=Lb, n_blocks=state.gen_length // Lb, steps_per_block=steps,
                   max_steps=req.policy.max_steps(Lb),
                   phases=2 if req.strategy.needs_store else 1, per_block=per_block)

    @property
    def max_iters(self) -> int:
        return self.n_blocks * self.max_steps

    @property
    def n_branches(self) -> int:
        return (self.n_blocks if self.per_block else 1) * self.phases


class Flags(NamedTuple):
    """The control words as host ints (one device-to-host read)."""

    block: int
    step: int
    refresh: bool
    running: bool
    branch: int
    iters: int
    error: bool


class Control:
    """Device control state of one generation: ctl int32 [CTL_WORDS], k / m0 int64 [B]."""

    def __init__(self, state: DecodeState, spec: ControlSpec) -> None:
        dev, B = state.x.device, state.batch
        self.spec = spec
        self.ctl = torch.empty(CTL_WORDS, dtype=torch.int32, device=dev)
        self.k = torch.zeros(B, dtype=torch.int64, device=dev)
        self.m0 = torch.zeros(B, dtype=torch.int64, device=dev)
        self._cols = torch.arange(spec.block_length, device=dev)  # [Lb]
        init = [0] * CTL_WORDS
        init[CTL_STEP], init[CTL_RUNNING], init[CTL_BRANCH] = -1, 1, -1
        self._init = torch.tensor(init, dtype=torch.int32).to(dev)
        self.reset()

    def reset(self) -> None:
        """Before a generation: no step taken yet (a device copy: no host sync)."""
        self.ctl.copy_(self._init)

    def _block_masks(self, state: DecodeState, block: torch.Tensor) -> torch.Tensor:
        """[B] int64 MASK count of every row (frozen too) in block `block` (0-d; 0 past the end)."""
        s = self.spec
        b = block.clamp(0, s.n_blocks - 1).long()
        cols = state.prompt_len + b * s.block_length + self._cols  # [Lb]
        masks = (state.x.index_select(1, cols) == state.mask_id).sum(1)
        return torch.where(block < s.n_blocks, masks, 0)

    def update(self, state: DecodeState) -> None:
        """Decide the due step from the state after the previous one (device ops only). A row
        cancelled in state.cancel (when the state has that field) counts as not active."""
        s, ctl = self.spec, self.ctl
        cancel = getattr(state, "cancel", None)  # bool [B], set by the host mid-generation
        rows = state.active if cancel is None else state.active & ~cancel  # [B] live rows
        running = ctl[CTL_RUNNING] != 0
        block, i = ctl[CTL_BLOCK], ctl[CTL_STEP] + 1
        masks = self._block_masks(state, block)
        live = (rows & (masks > 0)).any()
        adv = ~(live & (i < s.max_steps))  # block complete or out of steps: advance, once
        block = block + adv.int()
        i = torch.where(adv, 0, i)
        masks = torch.where(adv, self._block_masks(state, block), masks)
        done = (block >= s.n_blocks) | ~rows.any()
        error = ~done & (ctl[CTL_ITERS] >= s.max_iters)
        done = ~running | done | error
        go = ~done
        if s.steps_per_block > 0:
            self.m0.copy_(torch.where(go & (i == 0), masks, self.m0))
            self.k.copy_(torch.where(go, scheduled_k(self.m0, s.steps_per_block, i), self.k))
        phase = ((i > 0) & (s.phases == 2)).int()
        branch = torch.where(go, (block * s.phases if s.per_block else 0) + phase, -1)
        new = torch.stack([
            torch.where(go, block, ctl[CTL_BLOCK]), torch.where(go, i, ctl[CTL_STEP]),
            (go & (i == 0)).int(), go.int(), branch,
            ctl[CTL_ITERS] + go.int(), (ctl[CTL_ERROR] != 0).int() | (running & error).int(),
            ctl[CTL_SEQ]]).to(torch.int32)
        ctl.copy_(new)

    def read(self) -> Flags:
        """The host read between steps (host replay and tests only)."""
        w = self.ctl.tolist()
        return Flags(w[CTL_BLOCK], w[CTL_STEP], bool(w[CTL_REFRESH]), bool(w[CTL_RUNNING]),
                     w[CTL_BRANCH], w[CTL_ITERS], bool(w[CTL_ERROR]))

    def cuda_spec(self, ext, state: DecodeState):
        """The same control for the CUDA kernel: fastdiff._C.ControlSpec on these tensors
        (state.cancel, when the state has one, is read by address: keep that tensor)."""
        s = self.spec
        fixed = s.steps_per_block > 0
        cancel = getattr(state, "cancel", None)
        if cancel is not None and (cancel.dtype != torch.bool or cancel.shape != (state.batch,)
                                   or cancel.device != state.x.device
                                   or not cancel.is_contiguous()):
            raise ValueError(f"state.cancel must be a contiguous bool [{state.batch}] tensor on "
                             f"{state.x.device}, got {cancel.dtype} {tuple(cancel.shape)} on "
                             f"{cancel.device}")
        return ext.ControlSpec(
            x=state.x.data_ptr(), active=state.active.data_ptr(), ctl=self.ctl.data_ptr(),
            k=self.k.data_ptr() if fixed else 0, m0=self.m0.data_ptr() if fixed else 0,
            mask_id=state.mask_id, batch=state.batch, length=state.x.shape[1],
            prompt_len=state.prompt_len, block_length=s.block_length, n_blocks=s.n_blocks,
            steps_per_block=s.steps_per_block, max_steps=s.max_steps, phases=s.phases,
            per_block=int(s.per_block), max_iters=s.max_iters,
            cancel=0 if cancel is None else cancel.data_ptr())
