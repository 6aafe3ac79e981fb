"""The CPU GEMMs of the torch path with oneDNN-packed fp32 weights.

A decode step on a CPU multiplies a few dozen rows by weights that no longer sit in the caches
(a cached step of the `small` preset streams ~17 MB of fp32 weights per forward). With each
weight reordered once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`,
what inductor's CPU freezing pass uses) and multiplied by oneDNN, the four layer GEMMs plus the
LM head of the small preset run 25-33% faster at 16-32 rows and ~10% faster at 384 rows than
MKL's sgemm with K-major weights, on the project's 2-core EPYC, one thread, cycling through the
weights as a forward does (measured, not analysed further; plausibly MKL re-packs its weight
operand per call). benches/results/2026-11-30-cpu-issue12/README.md.

`pack(w)` returns the packed form of a weight [out, in] (an opaque oneDNN tensor: shape, dtype
and numel only; `dense(t)` gives the matrix back, exactly), which a model stores instead of the
dense matrix: no extra memory. `attach(w)` keeps w and hangs the packed copy on the tensor
object (the LM head, whose dense rows the embedding and the Triton kernel still read: its size
again in memory). `linear(x, w, bias)` multiplies by either form. FASTDIFF_CPU_PACK=0 turns
packing off (`linear` is then `x @ w.T`, MKL). Results differ from MKL's only in fp32 summation
order."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger("fastdiff")

_ATTR = "_fastdiff_packed"


def _supported() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def wanted(w: torch.Tensor) -> bool:
    """Pack this weight? fp32 on the CPU, oneDNN present, FASTDIFF_CPU_PACK not "0"."""
    if os.environ.get("FASTDIFF_CPU_PACK", "1") == "0":
        return False
    return w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and _supported()


def _packed_form(w: torch.Tensor, rows_hint: int) -> Optional[torch.Tensor]:
    """oneDNN's packed form of w [out, in], checked once against x @ w.T on a few rows; None
    (with one warning) when packing fails or disagrees."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows_hint)
        x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        want = x.double() @ w.double().T
        scale = want.abs().max().item() + 1.0
        if not torch.allclose(got.double(), want, atol=1e-4 * scale, rtol=1e-4):
            raise RuntimeError("packed GEMM disagrees with x @ w.T")
    except Exception as e:  # noqa: BLE001 - any oneDNN failure: stay on the plain GEMM
        log.warning("oneDNN weight packing failed (%s); the CPU GEMMs use MKL", e)
        return None
    return packed


def pack(w: torch.Tensor, rows_hint: int = 32) -> torch.Tensor:
    """w [out, in] -> its packed form when `wanted` (and packing works), else w itself."""
    if not wanted(w):
        return w
    packed = _packed_form(w, rows_hint)
    return w if packed is None else packed


def attach(w: torch.Tensor, rows_hint: int = 32) -> torch.Tensor:
    """Hang the packed form on w itself (when `wanted`); returns w, dense as before."""
    if wanted(w):
        packed = _packed_form(w, rows_hint)
        if packed is not None:
            setattr(w, _ATTR, packed)
    return w


def is_packed(w: torch.Tensor) -> bool:
    """w is a packed form, or carries one."""
    return w.is_mkldnn or getattr(w, _ATTR, None) is not None


def dense(w: torch.Tensor) -> torch.Tensor:
    """The [out, in] matrix of a stored weight (a copy when w is a packed form)."""
    return w.to_dense() if w.is_mkldnn else w


def linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., in] @ w.T (+ bias) -> [..., out]: oneDNN's GEMM when w is or carries a packed form
    (and x is fp32 on the CPU), else torch's matmul."""
    packed = w if w.is_mkldnn else getattr(w, _ATTR, None)
    if packed is not None:
        if x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        w = dense(w)  # another input dtype: correct, not fast
    return x @ w.T if bias is None else F.linear(x, w, bias)
