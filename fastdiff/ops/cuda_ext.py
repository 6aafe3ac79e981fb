"""Lazy loader of the optional CUDA extension fastdiff._C (csrc/): the control kernel, the
CUDA-graph WHILE-loop runner and the progress writer. Importing this module touches neither the
extension nor CUDA; `load()` imports fastdiff._C on first use; `load_runnable()` also checks,
once per process, that it can run on this machine's driver."""
from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import Optional

log = logging.getLogger(__name__)

MIN_CUDA = "12.4"  # conditional graph nodes (WHILE / IF); one SWITCH node from 12.8
BUILD_HINT = (f"build it with nvcc from CUDA >= {MIN_CUDA} (12.8+ for the single SWITCH node), "
              "cmake and pybind11 present: "
              "FASTDIFF_BUILD_CUDA=1 pip install --no-build-isolation --no-deps -e .")


def load(required: bool = False) -> Optional[ModuleType]:
    """fastdiff._C, or None when it was not built (required=True: raise ImportError instead).
    Loading it initializes nothing on the GPU and proves nothing about running it: see
    `load_runnable`."""
    try:
        return importlib.import_module("fastdiff._C")
    except ImportError as e:
        if required:
            raise ImportError(f"the CUDA extension fastdiff._C is not available ({e}); "
                              f"{BUILD_HINT}") from e
        return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_runnable() -> Optional[ModuleType]:
    """fastdiff._C where it can be used, else None (the callers' host-replay fallback).

    With CUDA (torch.cuda.is_available()): the first call per process runs the extension's
    `self_test` (a WHILE { kernel; IF -> child graph } graph launched twice on the current
    stream, synchronized); if it raises, e.g. because the driver is older than the CUDA runtime
    the extension was built with (static cudart), a warning names the reason and the fix, and
    this returns None from then on without retrying. A module that passed is returned as is.

    Without CUDA: the module is returned WITHOUT a self test, for its host-side parts only:
    the CTL_* constants, ControlSpec / ProgressSpec construction, control_update_host,
    progress_words and conditional_support (which reports the missing device as data). Every
    call that touches a device (control_update, progress_write, host_alloc_mapped, LoopGraph,
    self_test, graph_node_types) raises fastdiff._C.CudaError there: callers that would launch
    anything must first check torch.cuda.is_available() themselves."""
    ext = load()
    if ext is None or not _cuda_available():
        return ext
    return ext if _self_test_failure(ext) is None else None


@functools.lru_cache(maxsize=None)
def _self_test_failure(ext: ModuleType) -> Optional[str]:
    """None when ext.self_test passes here, else the reason (logged once per module)."""
    import torch

    try:
        ext.self_test(torch.cuda.current_stream().cuda_stream)
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: do not use the extension
        reason = f"{type(e).__name__}: {e}"
    try:
        info = ext.conditional_support()
        versions = (f"built with CUDA runtime {info.get('compiled_cudart')}, driver supports "
                    f"CUDA {info.get('driver_version')}")
    except Exception as e:  # noqa: BLE001
        versions = f"versions unknown ({e})"
    log.warning("fastdiff._C is installed but cannot run here (%s; %s): using host replay of "
                "the step graphs instead. Fix: rebuild it with the CUDA toolkit matching this "
                "driver (%s) or update the NVIDIA driver to one that supports the CUDA version "
                "it was built with.", reason, versions, BUILD_HINT)
    return reason


@functools.lru_cache(maxsize=None)
def switch_works(ext: ModuleType) -> bool:
    """Whether the WHILE body may pick its step with one SWITCH node here: the build and the
    driver offer it and the self test's SWITCH form counts right (else sibling IF nodes,
    which load_runnable's self test covers). Logged once per module when it fails."""
    import torch

    try:
        if ext.conditional_support().get("switch_node") != "ok":
            return False
        ext.self_test(torch.cuda.current_stream().cuda_stream, use_switch=True)
        return True
    except Exception as e:  # noqa: BLE001 - any failure: the IF form instead
        log.warning("fastdiff: the SWITCH form of the loop graph failed its self test (%s: %s); "
                    "the WHILE body uses sibling IF nodes", type(e).__name__, e)
        return False


def conditional_support() -> dict:
    """What this machine offers the device loop, for the first GPU run's log: the extension's
    compiled / runtime / driver CUDA versions and whether WHILE / IF / IF-ELSE / SWITCH
    conditional nodes instantiate (strings: "ok" or the reason), plus torch's side (CUDAGraph
    keep_graph and raw_cuda_graph, which the runner needs to take torch-captured steps as child
    graphs), and with CUDA the self test's verdict ("ok" or the failure; see load_runnable)."""
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
    if _cuda_available():
        info["self_test"] = _self_test_failure(ext) or "ok"
    return info
