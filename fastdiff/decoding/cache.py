"""KV cache storage and the cache strategies the loop consults (dllm-spec.md section 4).

A strategy answers one question per step: which span of the canvas is fed to the model. With a
store, the fed tokens' K/V (after RoPE, so positions never need re-rotating) are written into
their slots at every layer and attention reads the whole row [pad, L) from the store in place:
- prefix: block-start forward feeds [0, L); later steps feed [block_start, L) (block + suffix)
  and overwrite those slots, so they see the block-start prefix plus their own fresh K/V;
- dual: block-start forward feeds [0, L); later steps feed only the block and overwrite its
  slots, so they see the block-start prefix and suffix plus the block's fresh K/V."""
from __future__ import annotations

from typing import Optional

import torch


class KVStore:
    """Preallocated [layers, 2, batch, kv_heads, max_len, head_dim] keys (after RoPE) and values."""

    def __init__(self, n_layers: int, max_batch: int, n_kv_heads: int, max_len: int,
                 head_dim: int, *, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.zeros(n_layers, 2, max_batch, n_kv_heads, max_len, head_dim,
                                dtype=dtype, device=device)

    @property
    def max_batch(self) -> int:
        return self.data.shape[2]

    @property
    def max_len(self) -> int:
        return self.data.shape[4]

    def hook(self, batch: int, lo: int, hi: int, length: int, kv_start: torch.Tensor,
             kv_end: torch.Tensor):
        """A model kv_hook: write the fed [lo, hi) K/V at every layer, attend [0, length)."""
        def kv_hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            kc, vc = self.data[layer, 0, :batch], self.data[layer, 1, :batch]  # [B, Hkv, T, hd]
            kc[:, :, lo:hi] = k.transpose(1, 2)
            vc[:, :, lo:hi] = v.transpose(1, 2)
            # strided views [B, length, Hkv, hd], last dimension contiguous
            return (kc[:, :, :length].transpose(1, 2), vc[:, :, :length].transpose(1, 2),
                    kv_start, kv_end)
        return kv_hook


class NoCache:
    """Every step is a full-sequence forward."""

    name = "none"
    needs_store = False

    def span(self, start: int, block_length: int, length: int, refresh: bool) -> tuple[int, int]:
        return 0, length


class PrefixCache(NoCache):
    name = "prefix"
    needs_store = True

    def span(self, start: int, block_length: int, length: int, refresh: bool) -> tuple[int, int]:
        return (0, length) if refresh else (start, length)


class DualCache(NoCache):
    name = "dual"
    needs_store = True

    def span(self, start: int, block_length: int, length: int, refresh: bool) -> tuple[int, int]:
        return (0, length) if refresh else (start, start + block_length)


STRATEGIES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def make_strategy(name: str):
    if name not in STRATEGIES:
        raise ValueError(f"cache={name!r} is invalid; allowed: {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


def forward_span(model, state, strategy, store: Optional[KVStore], lo: int, hi: int):
    """Feed canvas columns [lo, hi) of every row -> hidden [B, hi - lo, d]."""
    B, L = state.x.shape
    hook = None
    if strategy.needs_store:
        hook = store.hook(B, lo, hi, L, state.kv_start, state.kv_end)
    return model.forward(state.x[:, lo:hi], state.positions[:, lo:hi], state.kv_start,
                         state.kv_end, kv_hook=hook)
