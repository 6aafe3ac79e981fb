"""Per-generation device state: every quantity a step reads or changes lives in a tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeState:
    """Left-padded canvas and per-row counters for one batch.

    x [B, L] int64: prompt (left padded) then gen_length positions (MASK at start);
    positions [B, L] int64: RoPE positions, token j of row b at j - pad_b (pads clamped to 0);
    kv_start/kv_end [B] int32: the row's valid keys [pad_b, L); seed [B] int64: Philox key;
    step [B] int64: the row's forward counter (Philox counter); nfe [B] int32: forwards the row
    took part in; active [B] bool: False once a row is frozen by early stop."""

    x: torch.Tensor
    positions: torch.Tensor
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    seed: torch.Tensor
    step: torch.Tensor
    nfe: torch.Tensor
    active: torch.Tensor
    prompt_len: int  # P: generation starts at column P in every row
    gen_length: int
    mask_id: int

    # tensor fields by role: the per-row counters a step changes, with x all that a step writes
    COUNTERS = ("step", "nfe", "active")
    STEPPED = ("x",) + COUNTERS
    TENSORS = ("x", "positions", "kv_start", "kv_end", "seed") + COUNTERS

    @classmethod
    def from_prompts(cls, prompts: list[list[int]], gen_length: int, *, mask_id: int, pad_id: int,
                     seeds: list[int], device: torch.device) -> "DecodeState":
        B, P = len(prompts), max(len(p) for p in prompts)
        L = P + gen_length
        rows = [[pad_id] * (P - len(p)) + list(p) + [mask_id] * gen_length for p in prompts]
        pads = torch.tensor([P - len(p) for p in prompts], dtype=torch.int32)
        x = torch.tensor(rows, dtype=torch.int64)
        positions = (torch.arange(L)[None] - pads[:, None].long()).clamp(min=0)
        return cls(x=x.to(device), positions=positions.to(device),
                   kv_start=pads.to(device), kv_end=torch.full((B,), L, dtype=torch.int32,
                                                               device=device),
                   seed=torch.tensor(seeds, dtype=torch.int64, device=device),
                   step=torch.zeros(B, dtype=torch.int64, device=device),
                   nfe=torch.zeros(B, dtype=torch.int32, device=device),
                   active=torch.ones(B, dtype=torch.bool, device=device),
                   prompt_len=P, gen_length=gen_length, mask_id=mask_id)

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    def generated(self) -> torch.Tensor:
        """[B, gen_length] view of the generation region."""
        return self.x[:, self.prompt_len:]

    def live_masks(self, start: int, length: int) -> torch.Tensor:
        """[B, length] bool: still-masked block positions of rows not frozen."""
        return (self.x[:, start:start + length] == self.mask_id) & self.active[:, None]

    def freeze_finished(self, stop_ids: torch.Tensor, eos_id: int) -> None:
        """Early stop (dllm-spec.md section 4), on the device: a row whose first EOS/EoT in the
        generation has every position before it committed gets EOS after it and is frozen."""
        gen = self.x[:, self.prompt_len:]  # [B, G] view
        G = gen.shape[1]
        cols = torch.arange(G, device=gen.device)[None]
        is_stop = torch.isin(gen, stop_ids)
        first = torch.where(is_stop.any(1), is_stop.to(torch.int32).argmax(1), G)[:, None]
        masks_before = ((gen == self.mask_id) & (cols < first)).any(1)
        done = self.active & is_stop.any(1) & ~masks_before  # [B]
        gen.copy_(torch.where(done[:, None] & (cols > first), eos_id, gen))
        self.active &= ~done
