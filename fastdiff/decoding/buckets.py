"""Shape buckets of the graph runner: batches and prompt lengths round up so a few captured
graphs serve every request; padding rows are frozen and prompts left padded, which leaves each
row's result unchanged."""
from __future__ import annotations

import torch

from .state import DecodeState

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PROMPT_BUCKET = 64  # prompt lengths round up to a multiple of this


def batch_bucket(batch: int) -> int:
    for b in BATCH_BUCKETS:
        if batch <= b:
            return b
    raise ValueError(f"batch {batch} exceeds the largest graph bucket {BATCH_BUCKETS[-1]}")


def prompt_bucket(prompt_len: int) -> int:
    return -(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET


def bucket_state(state: DecodeState, batch: int, prompt_len: int, pad_id: int) -> DecodeState:
    """`state` left padded to prompt_len columns and extended to `batch` rows; the extra rows
    are frozen (active False) so they never take part. Row results are unchanged: each row
    attends only to its own keys [pad, L) with positions counted from its first token."""
    B, P = state.batch, state.prompt_len
    if batch < B or prompt_len < P:
        raise ValueError(f"bucket ({batch}, {prompt_len}) is smaller than the state ({B}, {P})")
    extra, dev = prompt_len - P, state.x.device
    L = prompt_len + state.gen_length

    def rows(t: torch.Tensor, fill) -> torch.Tensor:  # [B, ...] -> [batch, ...]
        pad = t[:1].expand(batch - B, *t.shape[1:]).clone()
        return torch.cat([t, pad.fill_(fill) if fill is not None else pad])

    x = torch.cat([torch.full((B, extra), pad_id, dtype=state.x.dtype, device=dev), state.x], 1)
    positions = torch.cat([torch.zeros(B, extra, dtype=torch.int64, device=dev),
                           state.positions], 1)
    return DecodeState(
        x=rows(x, None), positions=rows(positions, None),
        kv_start=rows(state.kv_start + extra, None),
        kv_end=torch.full((batch,), L, dtype=torch.int32, device=dev),
        seed=rows(state.seed, None), step=rows(state.step, 0), nfe=rows(state.nfe, 0),
        active=rows(state.active, False), cancel=rows(state.cancel, False),
        m0=rows(state.m0, 0), prompt_len=prompt_len, gen_length=state.gen_length,
        mask_id=state.mask_id)
