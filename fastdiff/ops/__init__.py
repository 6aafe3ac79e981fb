"""Op dispatch: a backend object per engine, TorchOps or TritonOps (the Triton kernels).

Kernels and the compiled extension are imported lazily, only when their backend is chosen."""
from __future__ import annotations

from .torch_backend import TorchOps

BACKENDS = ("torch", "triton")


def get_ops(backend: str):
    """Return the ops object for a resolved backend name ("torch" | "triton")."""
    if backend == "torch":
        return TorchOps()
    if backend == "triton":
        try:
            from .triton_backend import TritonOps  # noqa: WPS433 (lazy: needs triton + a GPU)
        except ImportError as e:
            raise ValueError(f"backend='triton' is not available: {e}. Use backend='torch'.") from e
        return TritonOps()
    raise ValueError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)} or 'auto'")


__all__ = ["BACKENDS", "TorchOps", "get_ops"]
