"""Launcher checks the kernels share."""
from __future__ import annotations

from typing import Optional

import torch


def per_row_contiguous(**tensors: Optional[torch.Tensor]) -> None:
    """Per-row vectors [B] that a kernel reads at ptr + b: a strided view (e.g. a column of a
    [B, 2] tensor, or a stride-0 broadcast) would hand row b another row's value, so refuse
    it (None entries are skipped)."""
    for name, t in tensors.items():
        if t is not None and t.dim() == 1 and t.numel() > 1 and t.stride(0) != 1:
            raise ValueError(f"{name} must be contiguous (the kernel reads row b at offset b); "
                             f"got stride {t.stride(0)}: pass {name}.contiguous()")
