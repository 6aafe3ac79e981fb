"""Per-generation device state: every quantity a step reads or changes lives in a tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class DecodeState:
    """Left-padded canvas and per-row counters for one batch.

    x [B, L] int64: prompt (left padded) then gen_length positions (MASK at start);
    positions [B, L] int64: RoPE positions, token j of row b at j - pad_b (pads clamped to 0);
    kv_start/kv_end [B] int32: the row's valid keys [pad_b, L); seed [B] int64: Philox key;
    step [B] int64: the row's forward counter (Philox counter); nfe [B] int32: forwards the row
    took part in; active [B] bool: False once a row is frozen (early stop or cancel); cancel
    [B] bool: set by the host to cancel a row while the loop runs (the next step freezes it;
    only the host writes it); m0 [B] int64: the current block's MASK count at its first step
    (the fixed schedule's k derives from it)."""

    x: torch.Tensor
    positions: torch.Tensor
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    seed: torch.Tensor
    step: torch.Tensor
    nfe: torch.Tensor
    active: torch.Tensor
    cancel: torch.Tensor
    m0: torch.Tensor
    prompt_len: int  # P: generation starts at column P in every row
    gen_length: int
    mask_id: int
    # block diffusion: row b's generation starts at column gen_start[b] (its own grid);
    # None: at prompt_len in every row
    gen_start: Optional[torch.Tensor] = None
    # host fact, fixed per request: no row has padding, so every row attends every key
    # [0, L) (kv_start 0, kv_end L) and the torch attention can skip its mask
    pad_free: bool = False

    # tensor fields by role: the per-row counters a step changes, with x all that a step writes
    COUNTERS = ("step", "nfe", "active")
    STEPPED = ("x", "m0") + COUNTERS
    TENSORS = ("x", "positions", "kv_start", "kv_end", "seed", "cancel", "m0") + COUNTERS

    @classmethod
    def from_prompts(cls, prompts: list[list[int]], gen_length: int, *, mask_id: int, pad_id: int,
                     seeds: list[int], device: torch.device) -> "DecodeState":
        P = max(len(p) for p in prompts)
        return cls.from_padded(prompts, [P - len(p) for p in prompts], P + gen_length,
                               mask_id=mask_id, pad_id=pad_id, seeds=seeds, device=device,
                               prompt_len=P, gen_length=gen_length)

    @classmethod
    def from_padded(cls, prompts: list[list[int]], pads: list[int], length: int, *, mask_id: int,
                    pad_id: int, seeds: list[int], device: torch.device, prompt_len: int,
                    gen_length: int, gen_start: Optional[list[int]] = None) -> "DecodeState":
        """Row b = pads[b] pad tokens, the prompt, MASK up to `length` columns; positions
        column - pad (clamped to 0); keys [pad, length); fresh counters."""
        B, L = len(prompts), length
        rows = [[pad_id] * pad + list(p) + [mask_id] * (L - pad - len(p))
                for p, pad in zip(prompts, pads)]
        pad_t = torch.tensor(pads, dtype=torch.int32)
        positions = (torch.arange(L)[None] - pad_t[:, None].long()).clamp(min=0)
        return cls(x=torch.tensor(rows, dtype=torch.int64).to(device),
                   positions=positions.to(device), kv_start=pad_t.to(device),
                   kv_end=torch.full((B,), L, dtype=torch.int32, device=device),
                   seed=torch.tensor(seeds, dtype=torch.int64, device=device),
                   step=torch.zeros(B, dtype=torch.int64, device=device),
                   nfe=torch.zeros(B, dtype=torch.int32, device=device),
                   active=torch.ones(B, dtype=torch.bool, device=device),
                   cancel=torch.zeros(B, dtype=torch.bool, device=device),
                   m0=torch.zeros(B, dtype=torch.int64, device=device),
                   prompt_len=prompt_len, gen_length=gen_length, mask_id=mask_id,
                   gen_start=None if gen_start is None else
                   torch.tensor(gen_start, dtype=torch.int64, device=device),
                   pad_free=max(pads, default=0) == 0)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def generated(self) -> torch.Tensor:
        """[B, gen_length] view of the generation region (a gathered copy with gen_start)."""
        if self.gen_start is None:
            return self.x[:, self.prompt_len:]
        cols = self.gen_start[:, None] + torch.arange(self.gen_length, device=self.x.device)
        return self.x.gather(1, cols)

    def live_masks(self, start: int, length: int) -> torch.Tensor:
        """[B, length] bool: still-masked block positions of rows not frozen."""
        return (self.x[:, start:start + length] == self.mask_id) & \
            (self.active & ~self.cancel)[:, None]
