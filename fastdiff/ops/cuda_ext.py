"""Lazy loader of the optional CUDA extension fastdiff._C (csrc/): the control kernel, the
CUDA-graph WHILE-loop runner and the progress writer. Importing this module touches neither the
extension nor CUDA; `load()` imports fastdiff._C on first use."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

BUILD_HINT = ("build it with nvcc (CUDA >= 12.4), cmake and pybind11 present: "
              "FASTDIFF_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .")


def load(required: bool = False) -> Optional[ModuleType]:
    """fastdiff._C, or None when it was not built (required=True: raise ImportError instead).
    Loading it initializes nothing on the GPU."""
    try:
        return importlib.import_module("fastdiff._C")
    except ImportError as e:
        if required:
            raise ImportError(f"the CUDA extension fastdiff._C is not available ({e}); "
                              f"{BUILD_HINT}") from e
        return None


def conditional_support() -> dict:
    """What this machine offers the device loop, for the first GPU run's log: the extension's
    compiled / runtime / driver CUDA versions and whether WHILE / IF / SWITCH conditional nodes
    instantiate (strings: "ok" or the CUDA error), plus torch's side (CUDAGraph keep_graph and
    raw_cuda_graph, which the runner needs to take torch-captured steps as child graphs)."""
    import torch

    info: dict = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "torch_raw_cuda_graph": hasattr(torch.cuda, "CUDAGraph")
                  and hasattr(torch.cuda.CUDAGraph, "raw_cuda_graph")}
    ext = load()
    if ext is None:
        info["extension"] = "missing"
        return info
    info["extension"] = "ok"
    info.update(ext.conditional_support())
    return info
