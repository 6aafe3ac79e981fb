"""The CPU GEMMs of the torch path with oneDNN-packed fp32 weights.

A decode step on a CPU multiplies a few dozen rows by weights that no longer sit in the caches
(a cached step of the `small` preset streams ~17 MB of fp32 weights per forward), and MKL's sgemm
re-packs its B operand on every call. oneDNN's matmul with the weight reordered once into its
blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's CPU freezing pass
uses) skips that: on the project's 2-core EPYC, one thread, the four layer GEMMs plus the LM head
of the small preset run 25-33% faster at 16-32 rows and ~10% faster at 384 rows than MKL with
K-major weights (benches/results/2026-11-30-cpu-issue12/README.md).

`pack(w)` attaches the packed copy to the weight tensor object `w` itself ([out, in]; it keeps
its values and layout: other code reads it as before), `linear(x, w, bias)` uses it when present.
The packed copy is extra memory (the model's fp32 GEMM weights twice on a CPU);
FASTDIFF_CPU_PACK=0 turns packing off (`linear` is then `x @ w.T`, MKL). Results differ from
MKL's only in fp32 summation order."""
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


def pack(w: torch.Tensor, rows_hint: int = 32) -> torch.Tensor:
    """Attach a oneDNN-packed copy of w [out, in] to w (when `wanted`); returns w. The packing
    is checked once against x @ w.T on a few rows; a mismatch or an error leaves w unpacked."""
    if not wanted(w):
        return w
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
        return w
    setattr(w, _ATTR, packed)
    return w


def is_packed(w: torch.Tensor) -> bool:
    return getattr(w, _ATTR, None) is not None


def linear(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., in] @ w.T (+ bias) -> [..., out]: the packed oneDNN GEMM when w carries one (and x
    is fp32 on the CPU), else torch's matmul."""
    packed = getattr(w, _ATTR, None)
    if packed is not None and x.dtype == torch.float32 and x.device.type == "cpu":
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return x @ w.T if bias is None else F.linear(x, w, bias)
