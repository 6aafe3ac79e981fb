"""Streaming progress: mapped pinned host memory that the progress kernel (csrc/progress.cu)
writes during a graph launch and a host thread polls (seqlock reads, no device sync)."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Progress:
    """One consistent read of the progress memory: `block` is the block last stepped (blocks
    before it are final); tokens [B, G] hold every block stepped so far."""

    seq: int
    block: int
    running: bool
    steps: int
    committed: list
    tokens: torch.Tensor


class ProgressBuffer:
    """Mapped pinned host memory that the progress kernel writes and a host thread polls."""

    HEADER = 4

    def __init__(self, ext, batch: int, gen_length: int) -> None:
        self.batch, self.gen_length = batch, gen_length
        self.words = ext.progress_words(batch, gen_length)
        self._ext = ext
        self.host, self.device = ext.host_alloc_mapped(self.words * 8)
        self._view = (ctypes.c_int64 * self.words).from_address(self.host)
        self.array = torch.frombuffer(self._view, dtype=torch.int64)  # [words], host memory

    def read(self) -> Optional[Progress]:
        """A seqlock read: None while the kernel is writing or before its first write."""
        a = self.array
        seq = int(a[0])
        if seq == 0 or seq % 2:
            return None
        B, G, H = self.batch, self.gen_length, self.HEADER
        head = a[:H + B].tolist()
        tokens = a[H + B:].clone().view(B, G)
        if int(a[0]) != seq:
            return None
        return Progress(seq, head[1], bool(head[2]), head[3], head[H:], tokens)

    def close(self) -> None:
        if self.host:
            self.array = None
            self._ext.host_free(self.host)
            self.host = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter exit: the CUDA context may be gone)
            pass
