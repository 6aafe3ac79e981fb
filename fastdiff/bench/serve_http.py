"""bench-serve over HTTP: streamed /v1/completions requests with httpx against a server this
module starts (`python -m fastdiff.cli serve`, loopback, stopped at the end) or one at --url.
Batch sizes and queue waits come from the server's /metrics, scraped before and after each
rate (histogram deltas)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import httpx

from .serve_bench import LoadSpec, Outcome, Planned, make_plan, open_loop
from .serve_report import summarize

HEALTH_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """`fastdiff serve` as a subprocess on a loopback port; a context manager that waits for
    /health and always stops the process."""

    def __init__(self, model: Path, *, max_batch_size: int, max_wait_ms: float,
                 threads: Optional[int] = None, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "fastdiff.cli", "serve", "--model", str(model),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
                    *extra]
        self.env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        self.proc: Optional[subprocess.Popen] = None
        self.log = tempfile.NamedTemporaryFile("w+", prefix="fastdiff-serve-", suffix=".log",
                                               delete=False)

    def __enter__(self) -> "LocalServer":
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.tail()
                self.__exit__()
                raise RuntimeError(f"the server exited with status {self.proc.returncode} "
                                   f"before /health answered; its log:\n{log}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        log = self.tail()
        self.__exit__()
        raise TimeoutError(f"the server did not answer /health within {HEALTH_TIMEOUT_S:.0f} s; "
                           f"its log:\n{log}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)

    def tail(self, n: int = 3000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-n:]


# ---------------------------------------------------------------------------- /metrics
def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def histogram_delta(before: dict, after: dict, name: str) -> Optional[dict]:
    """The observations of histogram `name` between two scrapes (all label sets summed):
    {count, mean, p50, p90, p99} (quantiles interpolated within buckets, as Prometheus'
    histogram_quantile), or None when the server has no such histogram."""
    def total(suffix: str) -> Optional[float]:
        keys = [k for k in after if k.split("{")[0] == name + suffix]
        return sum(after[k] - before.get(k, 0.0) for k in keys) if keys else None

    count, sum_ = total("_count"), total("_sum")
    if count is None:
        return None
    out = {"count": count, "mean": sum_ / count if count else None}
    buckets: dict[float, float] = {}
    for k, v in after.items():
        if k.split("{")[0] == name + "_bucket" and 'le="' in k:
            le = float(k.split('le="')[1].split('"')[0])
            buckets[le] = buckets.get(le, 0.0) + v - before.get(k, 0.0)
    for q in (50, 90, 99):
        out[f"p{q}"] = _bucket_quantile(sorted(buckets.items()), q / 100 * count) if count \
            else None
    return out


def _bucket_quantile(cum: list[tuple[float, float]], rank: float) -> Optional[float]:
    lo_bound, lo_count = 0.0, 0.0
    for bound, c in cum:
        if c >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(c - lo_count, 1e-12)
        lo_bound, lo_count = bound, c
    return None


def server_stats(before: dict, after: dict) -> dict:
    """Mean batch size and queue wait from the server's histograms (None where missing)."""
    row: dict = {"mean_batch_size": None}
    batch = histogram_delta(before, after, "fastdiff_batch_size")
    if batch:
        row.update(runs=batch["count"], mean_batch_size=batch["mean"])
    wait = histogram_delta(before, after, "fastdiff_queue_wait_seconds")
    if wait:
        row.update({"queue_wait_mean_s": wait["mean"],
                    **{f"queue_wait_p{q}_s": wait[f"p{q}"] for q in (50, 90, 99)}})
    return row


# ---------------------------------------------------------------------------- requests
async def stream_one(client: httpx.AsyncClient, model_id: str, spec: LoadSpec, p: Planned,
                     o: Outcome) -> None:
    """One streamed completion; o.first = the first chunk with text (else the end)."""
    body = {"model": model_id, "prompt": p.prompt, "max_tokens": p.gen_length, "stream": True,
            "stream_options": {"include_usage": True}, "seed": p.seed, **spec.settings}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
            if o.first is None and choices and choices[0].get("text"):
                o.first = time.monotonic()
            if chunk.get("usage"):
                o.prompt_tokens = chunk["usage"]["prompt_tokens"]
                o.completion_tokens = chunk["usage"]["completion_tokens"]
    o.done = time.monotonic()
    o.first = o.first or o.done


async def bench_http(url: str, spec: LoadSpec, *, tokenizer=None, api_key: Optional[str] = None,
                     log: Callable[[dict], None] = lambda row: None) -> tuple[list[dict], str]:
    """Every rate of spec against the server at `url`: (result rows, the served model id)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(spec.max_seconds + 30.0, connect=10.0)
    limits = httpx.Limits(max_connections=spec.requests + 8, max_keepalive_connections=32)
    prompt_kw = {"tokenizer": tokenizer} if tokenizer is not None else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout,
                                 limits=limits) as client:
        models = (await client.get("/v1/models")).raise_for_status().json()
        model_id = models["data"][0]["id"]
        for g in spec.gen_lengths:  # one unmeasured request per output length
            warm = make_plan(LoadSpec(rates=(1.0,), requests=1, prompt_lens=spec.prompt_lens,
                                      gen_lengths=(g,), seed=spec.seed + 1), 1.0, 999,
                             **prompt_kw)[0]
            o = Outcome(warm.index, warm.gen_length, warm.seed, time.monotonic())
            await stream_one(client, model_id, spec, warm, o)
        rows = []
        for k, rate in enumerate(spec.rates):
            plan = make_plan(spec, rate, k, **prompt_kw)
            before = parse_metrics((await client.get("/metrics")).text)

            async def send(p: Planned, o: Outcome) -> None:
                await stream_one(client, model_id, spec, p, o)

            outcomes = await open_loop(plan, send, spec.max_seconds)
            after = parse_metrics((await client.get("/metrics")).text)
            row = summarize(rate, outcomes, None, 0)
            row.update(server_stats(before, after))
            rows.append(row)
            log(row)
    return rows, model_id
