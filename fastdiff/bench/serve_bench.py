"""`fastdiff bench-serve`: a bounded open-loop load (Poisson arrivals at given request rates, a
prompt / output length mix, streaming on) against the AsyncEngine, in process or over HTTP.

Per rate: output tokens/s, requests/s, time to the first streamed text and end-to-end latency
(p50/p90/p99), mean batch size, and the queue wait (arrival -> the start of the request's run).
Requests join only when a run starts, so a request arriving mid-run waits for the running batch;
in process, where every run's start, end and block boundaries are recorded, the bench also
reports how long such requests would wait if they could join the running batch at its next
block boundary (room and equal settings permitting): what block-boundary joining would save.

The in-process mode imports nothing from fastapi / httpx / openai (the GPU image has none);
the HTTP mode (serve_http.py) needs httpx."""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Union


# Prompt material: Python-looking text (the bundled demo model writes code).
CORPUS = """def merge_sorted(left, right):
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            result.append(left[i])
            i += 1
        else:
            result.append(right[j])
            j += 1
    result.extend(left[i:])
    result.extend(right[j:])
    return result

class Cache:
    def __init__(self, capacity=128):
        self.capacity = capacity
        self.data = {}

    def get(self, key, default=None):
        value = self.data.pop(key, default)
        if key in self.data or value is not default:
            self.data[key] = value
        return value

def read_config(path):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)
"""


@dataclass(frozen=True)
class LoadSpec:
    """One benchmark: `requests` requests per rate, each with a prompt length and an output
    length drawn from the mixes, all with `settings` (extra GenerationConfig fields)."""

    rates: tuple[float, ...] = (0.5, 1.0, 2.0)
    requests: int = 16
    prompt_lens: tuple[int, ...] = (16, 48)
    gen_lengths: tuple[int, ...] = (32, 64)
    settings: dict = field(default_factory=dict)
    max_seconds: float = 60.0  # per rate; requests still running then are cancelled
    seed: int = 0
    stream_interval: str = "block"

    def __post_init__(self) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise ValueError(f"rates={self.rates} is invalid: give request rates > 0")
        if isinstance(self.requests, bool) or not isinstance(self.requests, int) or \
                not 1 <= self.requests <= 9999:
            raise ValueError(f"requests={self.requests!r} is invalid: expected an integer in "
                             "[1, 9999]")
        for name in ("prompt_lens", "gen_lengths"):
            v = getattr(self, name)
            if not v or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
                raise ValueError(f"{name}={v} is invalid: expected positive integers")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds={self.max_seconds} is invalid: expected > 0")


@dataclass
class Planned:
    index: int
    arrival: float  # seconds after the rate's start
    prompt: Union[str, list[int]]
    prompt_len: int
    gen_length: int
    seed: int


@dataclass
class Outcome:
    """One request, times on time.monotonic(). first: first non-empty streamed text."""

    index: int
    gen_length: int
    seed: int
    sent: float
    first: Optional[float] = None
    done: Optional[float] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    run_start: Optional[float] = None  # in process: the start of the request's run
    error: Optional[str] = None


def make_prompt(n: int, rng: random.Random, tokenizer=None, vocab: int = 0,
                avoid: tuple[int, ...] = ()) -> Union[str, list[int]]:
    """About n tokens of CORPUS (exactly n ids, decoded, with a tokenizer); without a tokenizer
    and with a vocab: n random token ids (random-weight models); else n words."""
    if tokenizer is not None:
        ids = tokenizer.encode(CORPUS * (1 + n // 64), add_special_tokens=False)
        start = rng.randrange(max(1, len(ids) - n))
        return tokenizer.decode(ids[start:start + n])
    if vocab:
        return [t for t in (rng.randrange(vocab) for _ in range(n * 2)) if t not in avoid][:n]
    words = CORPUS.split()
    start = rng.randrange(len(words) - 1)
    return " ".join((words * (2 + n // len(words)))[start:start + n])


def make_plan(spec: LoadSpec, rate: float, salt: int, **prompt_kw) -> list[Planned]:
    """Poisson arrivals at `rate` requests/s with prompt and output lengths from the mixes;
    seeds unique across the whole benchmark (salt = the rate's index)."""
    rng = random.Random(spec.seed * 7919 + salt)
    t, plan = 0.0, []
    for i in range(spec.requests):
        t += rng.expovariate(rate)
        n = rng.choice(spec.prompt_lens)
        plan.append(Planned(i, t, make_prompt(n, rng, **prompt_kw), n,
                            rng.choice(spec.gen_lengths), spec.seed * 10**6 + salt * 10**4 + i))
    return plan


async def open_loop(plan: list[Planned], send, max_seconds: float) -> list[Outcome]:
    """Start each request at its arrival time whatever the others do (open loop); `send(p, o)`
    fills the Outcome o. Requests not done after max_seconds are cancelled (error 'timeout')."""
    t0 = time.monotonic()
    outcomes = [Outcome(p.index, p.gen_length, p.seed, t0 + p.arrival) for p in plan]

    async def one(p: Planned, o: Outcome) -> None:
        await asyncio.sleep(max(0.0, o.sent - time.monotonic()))
        o.sent = time.monotonic()
        try:
            await send(p, o)
        except asyncio.CancelledError:
            o.error = o.error or "timeout"
        except Exception as e:  # a failed request is a result, not the end of the bench
            o.error = f"{type(e).__name__}: {e}"

    tasks = [asyncio.ensure_future(one(p, o)) for p, o in zip(plan, outcomes)]
    _, late = await asyncio.wait(tasks, timeout=max_seconds + plan[-1].arrival)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
    return outcomes


# ---------------------------------------------------------------------------- command line
GEN_SETTINGS = ("steps", "block_length", "threshold", "factor", "cache", "temperature")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled demo "
                   "model)")
    p.add_argument("--url", default=None, help="benchmark the server at this URL instead of "
                   "starting one (`python -m fastdiff.cli serve` on a loopback port)")
    p.add_argument("--api-key", default=None, help="bearer key for --url")
    p.add_argument("--in-process", action="store_true", help="drive fastdiff.AsyncEngine "
                   "directly, no HTTP (needs no fastapi / httpx / openai)")
    p.add_argument("--preset", default=None, help="--in-process: random weights of this preset "
                   "built on the device instead of --model (e.g. llada-8b on a GPU)")
    p.add_argument("--rates", default="0.5,1,2", help="request rates, req/s (default %(default)s)")
    p.add_argument("--requests", type=int, default=16, help="requests per rate (%(default)s)")
    p.add_argument("--prompt-lens", default="16,48", help="prompt token mix (%(default)s)")
    p.add_argument("--gen-lengths", default="32,64", help="output length mix (%(default)s)")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="per rate: requests still running after the last arrival + this are "
                        "cancelled (%(default)s)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--stream-interval", default="block", choices=["block", "step"],
                   help="--in-process: stream events per block or per step")
    for name in GEN_SETTINGS:
        kind = str if name == "cache" else float if name in ("threshold", "factor",
                                                              "temperature") else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help="generation setting of every request (default: the family's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="--in-process")
    p.add_argument("--dtype", default="auto", help="--in-process")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (the started server's OMP_NUM_THREADS too)")
    p.add_argument("--out", default=None, help="output folder (default: benches/results/"
                   "serve-<date>)")
    p.add_argument("--stem", default="serve_bench", help="result file name stem")


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"argument {flag}: expected comma-separated integers, got {text!r}")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    from ..config import GenerationConfig
    try:
        rates = tuple(float(x) for x in args.rates.split(","))
    except ValueError:
        raise ValueError(f"argument --rates: expected comma-separated numbers, got {args.rates!r}")
    settings = {k: getattr(args, k) for k in GEN_SETTINGS if getattr(args, k) is not None}
    spec = LoadSpec(rates=rates, requests=args.requests,
                    prompt_lens=_ints(args.prompt_lens, "--prompt-lens"),
                    gen_lengths=_ints(args.gen_lengths, "--gen-lengths"), settings=settings,
                    max_seconds=args.max_seconds, seed=args.seed,
                    stream_interval=args.stream_interval)
    for g in spec.gen_lengths:  # the settings' own checks before anything starts
        GenerationConfig(**settings, gen_length=g)
    return spec


def _model_dir(args: argparse.Namespace):
    from pathlib import Path
    if args.model:
        return Path(args.model)
    from ..assets import demo_model_path
    return demo_model_path()


def run_cli(args: argparse.Namespace) -> int:
    import datetime
    from pathlib import Path

    import torch

    from . import serve_report
    from .env import environment
    from ..engine import resolve_device
    spec = spec_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda row: print(serve_report.one_line(row), flush=True)  # noqa: E731
    if args.in_process:
        rows, meta = _in_process(args, spec, log)
    else:
        if args.preset:
            raise ValueError("argument --preset: random-weight presets run --in-process only")
        try:
            rows, meta = _over_http(args, spec, log)
        except (RuntimeError, TimeoutError) as e:  # e.g. the server did not start: its log
            print(f"error: {e}", file=sys.stderr)
            return 1
    env = environment(resolve_device(args.device)) if meta.pop("local") else \
        {**environment(torch.device("cpu")), "device": None, "device_name": f"server at {args.url}"}
    settings = {**spec.settings, "prompt_lens": spec.prompt_lens, "gen_lengths": spec.gen_lengths,
                "requests": spec.requests, "max_batch_size": args.max_batch_size,
                "max_wait_ms": args.max_wait_ms, "stream_interval": spec.stream_interval
                if args.in_process else "server", "seed": spec.seed,
                "threads": torch.get_num_threads() if env["device"] == "cpu" else None}
    rows = [{**r, **env, **meta, "settings": settings} for r in rows]
    day = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else Path("benches/results") / f"serve-{day}"
    files = serve_report.write(rows, out, args.stem)
    print("[bench-serve] wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _in_process(args: argparse.Namespace, spec: LoadSpec, log):
    from ..engine import Engine
    from ..serving import AsyncEngine
    from .serve_inproc import RunRecorder, bench_in_process
    sizing = dict(device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size)
    if args.preset:
        from ..config import ModelConfig
        engine = Engine.from_config(ModelConfig.preset(args.preset), seed=args.seed,
                                    max_seq_len=max(spec.prompt_lens) + max(spec.gen_lengths)
                                    + 64, **sizing)
        model, random_weights = args.preset, True
    else:
        path = _model_dir(args)
        engine = Engine.from_pretrained(path, **sizing)
        model, random_weights = path.name, False
    recorder = RunRecorder(engine)

    async def go():
        async with AsyncEngine(recorder, max_batch_size=args.max_batch_size,
                               max_wait_ms=args.max_wait_ms) as aengine:
            return await bench_in_process(aengine, spec, recorder, log)

    rows = asyncio.run(go())
    return rows, {"mode": "in-process", "model": model, "random_weights": random_weights,
                  "local": True}


def _over_http(args: argparse.Namespace, spec: LoadSpec, log):
    from .serve_http import LocalServer, bench_http
    tokenizer = None
    path = None
    if args.model or not args.url:
        from ..models.tokenizer import Tokenizer
        path = _model_dir(args)
        tokenizer = Tokenizer.from_dir(path)
    if args.url:
        rows, model_id = asyncio.run(bench_http(args.url, spec, tokenizer=tokenizer,
                                                api_key=args.api_key, log=log))
        return rows, {"mode": "http", "model": model_id, "url": args.url, "local": False}
    with LocalServer(path, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     threads=args.threads) as server:
        rows, model_id = asyncio.run(bench_http(server.url, spec, tokenizer=tokenizer, log=log))
    return rows, {"mode": "http", "model": model_id, "local": True}
