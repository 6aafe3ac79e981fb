"""Kernel benchmarks: each Triton kernel vs the torch backend (and the reference where it is
cheap enough), with the physical metric. Not collected by the default test run.

Two entry points:
  pytest benches/bench_kernels.py        pytest-benchmark micro-benches (LLaDA-8B shapes on CUDA,
                                         tiny shapes under the interpreter on a CPU)
  python benches/bench_kernels.py --out DIR [--quick]
                                         CUDA-event timings (triton.testing.do_bench: median,
                                         p20/p80) -> DIR/results.jsonl + DIR/table.md rows
  python benches/bench_kernels.py --junit FILE --out DIR
                                         pytest junit results -> results.jsonl + table.md rows
Floors: bytes that must move / the device-to-device copy bandwidth measured in the same run."""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastdiff.bench.env import git_commit  # noqa: E402
from fastdiff.ops import reference as ref  # noqa: E402
from fastdiff.ops.torch_backend import TorchOps  # noqa: E402
from fastdiff.ops.triton_backend import TritonOps  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
DT = torch.bfloat16 if CUDA else torch.float32
# LLaDA-8B on CUDA, tiny under the interpreter
V, D_MODEL, H, HD = (126464, 4096, 32, 128) if CUDA else (300, 64, 2, 32)
EOS, EOT = (126081, 126348) if CUDA else (5, 7)


# ----------------------------------------------------------------------------- problems


def lm_head_problem(rows: int = 32, temperature: float = 0.0, mode: str = "low_confidence"):
    g = torch.Generator(device=DEV).manual_seed(0)
    hidden = torch.randn(1, rows, D_MODEL, device=DEV, generator=g).to(DT)
    weight = (torch.randn(V, D_MODEL, device=DEV, generator=g) * 0.02).to(DT)
    row_map = torch.arange(rows, dtype=torch.int32, device=DEV)[None]
    one = torch.ones(1, dtype=torch.int64, device=DEV)
    kw = dict(mode=mode, temperature=temperature, seed=one * 7, step=one, pos_base=one * 0,
              eos_id=EOS, eot_id=EOT, suppress_eos=False, eos_eot_conf=True)
    return (hidden, row_map, weight), kw


def attention_problem(B: int, Sq: int, Skv: int):
    g = torch.Generator(device=DEV).manual_seed(0)
    cache = torch.randn(2, B, H, Skv, HD, device=DEV, generator=g).to(DT)
    k, v = cache[0].transpose(1, 2), cache[1].transpose(1, 2)  # strided, as the KV cache is
    q = torch.randn(B, Sq, H, HD, device=DEV, generator=g).to(DT)
    start = torch.zeros(B, dtype=torch.int32, device=DEV)
    end = torch.full((B,), Skv, dtype=torch.int32, device=DEV)
    return q, k, v, start, end


def select_problem(B: int = 16, Lb: int = 32, L: int = 1024):
    g = torch.Generator(device=DEV).manual_seed(0)
    conf = torch.rand(B, Lb, device=DEV, generator=g)
    x0 = torch.randint(0, 1000, (B, Lb), device=DEV, generator=g)
    x = torch.zeros(B, L, dtype=torch.int64, device=DEV)
    bs = torch.full((B,), min(128, L - Lb), dtype=torch.int64, device=DEV)
    k = torch.full((B,), 4, dtype=torch.int32, device=DEV)
    return x, x0, conf, bs, k


def _sync(fn: Callable) -> Callable:
    def run():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out
    return run


# ----------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("impl", ["triton", "torch", "reference"])
def test_bench_lm_head_confidence(benchmark, impl):
    if impl == "reference" and CUDA:
        pytest.skip("the fp64 reference at 8B shape is not a timing baseline")
    (h, rm, w), kw = lm_head_problem()
    fn = {"triton": TritonOps.lm_head_confidence, "torch": TorchOps.lm_head_confidence,
          "reference": ref.lm_head_confidence}[impl]
    benchmark(_sync(lambda: fn(h, rm, w, **kw)))


@pytest.mark.parametrize("impl", ["triton", "torch", "reference"])
@pytest.mark.parametrize("shape", [(1, 32, 1024), (1, 1024, 1024)] if CUDA else [(1, 8, 40)])
def test_bench_attention(benchmark, impl, shape):
    if impl == "reference" and CUDA:
        pytest.skip("the fp64 reference is not a timing baseline")
    args = attention_problem(*shape)
    fn = {"triton": TritonOps.attention, "torch": TorchOps.attention,
          "reference": ref.attention}[impl]
    benchmark(_sync(lambda: fn(*args)))


@pytest.mark.parametrize("impl", ["triton", "torch", "reference"])
def test_bench_select_commit(benchmark, impl):
    x, x0, conf, bs, k = select_problem() if CUDA else select_problem(2, 8, 40)
    fn = {"triton": TritonOps.select_topk_commit, "torch": TorchOps.select_topk_commit,
          "reference": ref.select_topk_commit}[impl]
    benchmark(_sync(lambda: fn(x, x0, conf, bs, k)))


# ----------------------------------------------------------------------------- device suite


def environment() -> dict:
    import triton
    return {"device": torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "commit": git_commit()}


def _time(fn: Callable, rep_ms: int) -> dict:
    import triton.testing
    q = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8],
                                return_mode="median")
    return {"median_ms": q[0], "p20_ms": q[1], "p80_ms": q[2]}


def _rotating(make: Callable, n: int) -> Callable:
    """Cycle through n input sets so repeated runs do not measure the L2 cache."""
    sets = [make() for _ in range(n)]
    state = {"i": 0}

    def pick():
        state["i"] = (state["i"] + 1) % n
        return sets[state["i"]]
    return pick


def measure(quick: bool, copy_bytes: int = 1 << 30, res: list = None) -> list:
    """[(bench, impl, config, timing, metrics)] on the current CUDA device, appended to `res`
    as they are measured (the caller writes what exists if the run is cut short)."""
    rep = 40 if quick else 200
    res = [] if res is None else res
    buf = torch.randint(0, 255, (copy_bytes,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(buf)
    t = _time(lambda: dst.copy_(buf), rep)
    copy_bw = 2 * buf.numel() / (t["median_ms"] * 1e-3)  # bytes read + written per second
    res.append(("copy", "torch", {"bytes": buf.numel()}, t, {"GB/s": copy_bw / 1e9}))
    del buf, dst

    for temperature, mode in ((0.0, "low_confidence"), (0.7, "maskgit_plus"), (0.0, "margin")):
        (h, rm, w), kw = lm_head_problem(32, temperature, mode)
        wbytes = w.numel() * w.element_size()
        for impl, fn in (("triton", TritonOps.lm_head_confidence),
                         ("torch", TorchOps.lm_head_confidence)):
            cfg = {"rows": 32, "V": V, "d": D_MODEL, "dtype": str(DT), "T": temperature,
                   "mode": mode}
            try:
                t = _time(lambda: fn(h, rm, w, **kw), rep)
            except Exception as e:  # noqa: BLE001 (a mode this backend lacks, or a failure)
                res.append(("lm_head_confidence", impl, cfg, {}, {"error": str(e)[:120]}))
                continue
            bw = wbytes / (t["median_ms"] * 1e-3)
            res.append(("lm_head_confidence", impl, cfg, t,
                        {"weight GB/s": bw / 1e9, "frac_copy_bw": bw / copy_bw}))
        del h, w

    import torch.nn.functional as F
    shapes = [(1, 32, 1024), (1, 32, 4096), (4, 32, 2048), (1, 2048, 2048), (2, 1024, 1024)]
    for B, Sq, Skv in shapes[:2] if quick else shapes:
        n_sets = max(2, min(8, (256 << 20) // (2 * B * Skv * H * HD * 2)))
        pick = _rotating(lambda: attention_problem(B, Sq, Skv), n_sets)
        kv_bytes = 2 * B * Skv * H * HD * 2
        flops = 4 * B * H * Sq * Skv * HD
        impls = [("triton", lambda: TritonOps.attention(*pick())),
                 ("torch_masked", lambda: TorchOps.attention(*pick()))]
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            impls.append((f"sdpa_{backend.lower()}_nomask", _sdpa(F, backend, pick)))
        for impl, fn in impls:
            try:
                t = _time(fn, rep)
            except Exception as e:  # noqa: BLE001 (an SDPA backend refusing the shape, ...)
                res.append(("attention", impl, {"B": B, "Sq": Sq, "Skv": Skv}, {},
                            {"error": str(e)[:120]}))
                continue
            sec = t["median_ms"] * 1e-3
            res.append(("attention", impl, {"B": B, "Sq": Sq, "Skv": Skv, "H": H, "D": HD,
                                            "dtype": str(DT)}, t,
                        {"TFLOP/s": flops / sec / 1e12, "KV GB/s": kv_bytes / sec / 1e9,
                         "frac_kv_floor": kv_bytes / copy_bw / sec}))

    x, x0, conf, bs, k = select_problem()
    for impl, fn in (("triton", lambda: TritonOps.select_topk_commit(x, x0, conf, bs, k, 32)),
                     ("torch", lambda: TorchOps.select_topk_commit(x, x0, conf, bs, k))):
        t = _time(fn, rep)
        res.append(("select_commit", impl, {"B": 16, "Lb": 32, "mode": "topk"}, t,
                    {"us": t["median_ms"] * 1e3}))
    return res


def _sdpa(F, backend: str, pick: Callable) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        q, k, v, _, _ = pick()
        with sdpa_kernel(getattr(SDPBackend, backend)):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2))
    return run


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def write(out: Path, rows: list, env: dict, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        for bench, impl, cfg, t, metrics in rows:
            f.write(json.dumps({**env, "bench": bench, "impl": impl, "config": cfg, **t,
                                "metrics": metrics}) + "\n")
    with open(out / "table.md", "a") as f:
        f.write(f"\n### {title} on {env['device']} (torch {env['torch']}, triton "
                f"{env['triton']}, CUDA {env['cuda']}, commit {env['commit'][:12]})\n\n")
        f.write("| bench | impl | config | median ms (p20-p80) | metrics |\n"
                "|---|---|---|---|---|\n")
        for bench, impl, cfg, t, metrics in rows:
            spread = f"{_fmt(t['median_ms'])} ({_fmt(t['p20_ms'])}-{_fmt(t['p80_ms'])})" \
                if t else "-"
            f.write(f"| {bench} | {impl} | {', '.join(f'{k}={_fmt(v)}' for k, v in cfg.items())}"
                    f" | {spread} | {', '.join(f'{k} {_fmt(v)}' for k, v in metrics.items())} |\n")


def junit_rows(path: Path) -> list:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = f"{tag}: {(node.get('message') or '')[:200]}"
        rows.append(("pytest", f"{case.get('classname')}::{case.get('name')}", {},
                     {}, {"status": status, "seconds": float(case.get("time", 0))}))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--junit", type=Path)
    args = ap.parse_args(argv)
    env = environment()
    if args.junit:
        write(args.out, junit_rows(args.junit), env, "pytest -m gpu")
        return 0
    if not CUDA:
        print("no CUDA device: the timed suite needs a GPU", file=sys.stderr)
        return 2
    rows: list = []

    def cut_short(sig, frame):  # the suite's timeout: keep the rows measured so far
        write(args.out, rows, env, "kernel benches (cut short by a timeout)")
        sys.exit(124)
    signal.signal(signal.SIGTERM, cut_short)
    measure(args.quick, res=rows)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    write(args.out, rows, env, "kernel benches")
    for bench, impl, cfg, t, metrics in rows:
        print(bench, impl, cfg, {k: round(v, 4) for k, v in t.items()},
              {k: (round(v, 3) if isinstance(v, float) else v) for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
