"""KV cache storage and the cache strategies the loop consults (dllm-spec.md section 4).

A strategy answers one question per step: which span of the canvas is fed to the model, as a
`Feed`. With a store, the fed tokens' K/V (after RoPE, so positions never need re-rotating) are
written into their slots at every layer and attention reads the whole row [pad, L) in place:
- prefix: the refresh forward feeds [0, L); later steps feed [block_start, L) (block + suffix)
  and overwrite those slots, so they see the refresh-time prefix plus their own fresh K/V. At
  static (captured) shapes a later step feeds [P, L), the worst case, and writes only slots
  >= block_start: the same keys, the earlier blocks' queries are computed and unused;
- dual: the refresh forward feeds [0, L); later steps feed only the block (its start read from
  device memory) and overwrite its slots, so they see the refresh-time prefix and suffix plus
  the block's fresh K/V.
Shifted logits (Dream): block position j is predicted from the output at column bs + j - 1, so
a cached step also feeds column bs - 1 (Feed.shifted): its query runs, its K/V are not written
(the refresh-time entry stays, like the rest of the prefix).
Phases: 0 = a block's first step (the refresh forward with a cache), 1 = its later steps."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

REFRESH, CACHED = 0, 1


class Feed(NamedTuple):
    """Fed columns [lo, lo + S) (lo None: the block start, read on the device); with
    write_from_block only columns >= the block start write their K/V."""

    lo: Optional[int]
    S: int
    write_from_block: bool = False

    def shifted(self, shift: int) -> "Feed":
        """The feed for shifted logits (shift 1): a span that starts at or after the block
        also feeds the column before it (block position 0 is predicted from the output there),
        without writing that column's K/V: it keeps the refresh-time entry, like the rest of
        the prefix. A span from column 0 already holds it."""
        if not shift or self.lo == 0:
            return self
        return Feed(None if self.lo is None else self.lo - shift, self.S + shift, True)


class KVStore:
    """Preallocated [layers, 2, batch, kv_heads, max_len + 1, head_dim] keys (after RoPE) and
    values; slot max_len is a trash slot that torch-backend writes of unwritten tokens go to."""

    def __init__(self, n_layers: int, max_batch: int, n_kv_heads: int, max_len: int,
                 head_dim: int, *, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.zeros(n_layers, 2, max_batch, n_kv_heads, max_len + 1, head_dim,
                                dtype=dtype, device=device)

    @property
    def max_batch(self) -> int:
        return self.data.shape[2]

    @property
    def max_len(self) -> int:
        return self.data.shape[4] - 1

    def fits(self, batch: int, length: int) -> bool:
        return batch <= self.max_batch and length <= self.max_len


class NoCache:
    """Every step is a full-sequence forward."""

    name = "none"
    needs_store = False
    phases = 1

    def feed(self, phase: int, prompt_len: int, length: int, block_length: int,
             start: Optional[int]) -> Feed:
        return Feed(0, length)


class PrefixCache(NoCache):
    name = "prefix"
    needs_store = True
    phases = 2

    def feed(self, phase: int, prompt_len: int, length: int, block_length: int,
             start: Optional[int]) -> Feed:
        if phase == REFRESH:
            return Feed(0, length)
        if start is not None:  # eager on the CPU: the exact span
            return Feed(start, length - start)
        return Feed(prompt_len, length - prompt_len, write_from_block=True)


class DualCache(NoCache):
    name = "dual"
    needs_store = True
    phases = 2

    def feed(self, phase: int, prompt_len: int, length: int, block_length: int,
             start: Optional[int]) -> Feed:
        return Feed(0, length) if phase == REFRESH else Feed(None, block_length)


STRATEGIES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def make_strategy(name: str):
    if name not in STRATEGIES:
        raise ValueError(f"cache={name!r} is invalid; allowed: {sorted(STRATEGIES)}")
    return STRATEGIES[name]()
