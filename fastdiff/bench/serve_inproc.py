"""bench-serve in process: the load driven straight into an AsyncEngine (no HTTP; imports
nothing from fastapi / httpx / openai, so it runs on the GPU image). The Engine inside is
wrapped by RunRecorder, which records every run: the queue waits and the block-boundary
analysis come from those records."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from .serve_bench import LoadSpec, Outcome, Planned, make_plan, open_loop
from .serve_report import summarize

WARM_SEED = 2**62  # the warm-up requests' seed: never one of a measured request


class RunRecorder:
    """Stands in for the Engine inside an AsyncEngine and records each run: start, end, rows,
    seeds, output length and block-boundary times (the last step callback of each block; a run
    without a callback records none). Every other attribute is the wrapped engine's."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.runs: list[dict] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate_ids(self, ids, config=None, *, seeds=None, on_step=None,
                     stream_interval: str = "block"):
        rec = {"start": time.monotonic(), "end": None, "batch": len(ids),
               "seeds": set(seeds or ()), "gen_length": config.gen_length, "bounds": []}
        last: dict[int, float] = {}

        def hook(run, block: int, step: int) -> None:
            last[block] = time.monotonic()
            on_step(run, block, step)

        self.runs.append(rec)
        try:
            return self._engine.generate_ids(ids, config, seeds=seeds,
                                             on_step=hook if on_step is not None else None,
                                             stream_interval=stream_interval)
        finally:
            rec["end"] = time.monotonic()
            rec["bounds"] = sorted(last.values())


async def _ended(runs: list[dict], timeout: float = 10.0) -> list[dict]:
    """The runs once each has ended: a streamed row's final event reaches its caller from the
    step callback, before generate_ids returns."""
    deadline = time.monotonic() + timeout
    while any(r["end"] is None for r in runs) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return [r for r in runs if r["end"] is not None]


def settings_for(spec: LoadSpec, gen_length: int) -> dict:
    return {**spec.settings, "gen_length": gen_length}


async def stream_one(aengine, spec: LoadSpec, p: Planned, o: Outcome) -> None:
    """One streamed request; o.first = the first event with committed text (without a
    tokenizer: with the first position committed), or the final event."""
    config = aengine.make_config(**settings_for(spec, p.gen_length))
    mask = aengine.engine.config.mask_token_id
    stream = aengine.stream(p.prompt, config, seed=p.seed, stream_interval=spec.stream_interval)
    try:
        async for ev in stream:
            shown = ev.text if ev.text is not None else ev.canvas[0] != mask
            if o.first is None and (shown or ev.done):
                o.first = time.monotonic()
            if ev.done:
                o.done = time.monotonic()
                o.prompt_tokens = ev.usage["prompt_tokens"]
                o.completion_tokens = ev.usage["completion_tokens"]
    finally:
        await stream.aclose()


def prompt_source(engine) -> dict:
    """make_prompt keywords: the tokenizer, else random ids from the vocabulary."""
    if engine.tokenizer is not None:
        return {"tokenizer": engine.tokenizer}
    c = engine.config
    return {"vocab": c.vocab_size, "avoid": (c.mask_token_id, c.eos_token_id)}


async def warm_up(aengine, spec: LoadSpec, prompt_kw: dict) -> None:
    """One unmeasured request per output length (first-call costs: allocation, caches,
    kernel compiles), streamed like the measured ones (a stream runs the loop eagerly; a
    plain generate would capture CUDA graphs the measured requests never use)."""
    for g in spec.gen_lengths:
        p = make_plan(LoadSpec(rates=(1.0,), requests=1, prompt_lens=spec.prompt_lens,
                               gen_lengths=(g,), seed=spec.seed + 1), 1.0, 999, **prompt_kw)[0]
        async for _ in aengine.stream(p.prompt, aengine.make_config(**settings_for(spec, g)),
                                      seed=WARM_SEED):
            pass


async def bench_in_process(aengine, spec: LoadSpec, recorder: RunRecorder,
                           log: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Every rate of spec against a started AsyncEngine whose engine is `recorder`: one result
    row per rate (serve_bench.summarize plus the run statistics)."""
    prompt_kw = prompt_source(aengine.engine)
    max_bs = aengine.stats()["max_batch_size"]
    await warm_up(aengine, spec, prompt_kw)
    rows = []
    for k, rate in enumerate(spec.rates):
        plan = make_plan(spec, rate, k, **prompt_kw)
        first_run = len(recorder.runs)

        async def send(p: Planned, o: Outcome) -> None:
            await stream_one(aengine, spec, p, o)

        outcomes = await open_loop(plan, send, spec.max_seconds)
        runs = await _ended(recorder.runs[first_run:])
        for o in outcomes:
            o.run_start = next((r["start"] for r in runs if o.seed in r["seeds"]), None)
        rows.append(summarize(rate, outcomes, runs, max_bs))
        log(rows[-1])
    return rows
