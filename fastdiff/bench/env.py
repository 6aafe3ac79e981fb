"""What every result row carries (device, versions, commit) and how things are timed."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch


def git_commit() -> str:
    """FASTDIFF_COMMIT when set (a device machine's copy of the tree has no .git), else HEAD's
    short hash (+ "-dirty" with uncommitted changes to tracked files), else "unknown"."""
    if os.environ.get("FASTDIFF_COMMIT"):
        return os.environ["FASTDIFF_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, cwd=here).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, "\
               f"{torch.get_num_threads()} threads)"
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
            "git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int):
    """Wall seconds of each of `repeats` calls after `warmup` calls, device synchronized."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of a device-to-device copy, read + write bytes counted (the "~3.0 TB/s device
    copy" convention of design.md); a step's floor is the bytes it reads over this."""
    if device.type == "cuda":  # 1 GiB copies back to back between CUDA events: no host
        nbytes = max(nbytes, 1 << 30)  # sync or launch gap inside the timed span
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    if device.type != "cuda":
        times = timed(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
        return 2 * nbytes / median(times)
    for _ in range(2):
        dst.copy_(src)
    per_copy = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            dst.copy_(src)
        end.record()
        end.synchronize()
        per_copy.append(start.elapsed_time(end) / 1e3 / 10)
    del src, dst
    return 2 * nbytes / median(per_copy)
