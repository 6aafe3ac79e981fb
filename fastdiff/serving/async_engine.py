"""AsyncEngine: one Engine behind an asyncio interface, safe to embed in any asyncio server.

One worker thread owns the Engine (and the device). Callers' requests wait in a bounded queue;
requests whose resolved settings are equal apart from the seed, and whose prompt lengths fall in
the same 64-token bucket, run as one batch (at most max_batch_size rows, gathered for at most
max_wait_ms after the first). Every request carries its own seed (drawn at submission when the
caller gives none), and the Engine's rows are batch invariant, so batching never changes an
answer. A request joins only when a run starts."""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

from ..config import GenerationConfig
from .requests import (ContextLengthError, GenerationResult, OverloadedError, StreamEvent,
                       Ticket)
from .worker import Worker

__all__ = ["AsyncEngine", "ContextLengthError", "GenerationResult", "OverloadedError",
           "StreamEvent"]


class RequestStream:
    """The async iterator AsyncEngine.stream returns: StreamEvents until the final one (done).
    The request is queued when stream() is called (so a full queue or a bad prompt raises
    there); aclose(), leaving `async with`, cancelling the task that awaits it, or dropping it
    cancels the request's row without disturbing the others."""

    def __init__(self, worker: Worker, ticket: Ticket, queue: asyncio.Queue) -> None:
        self._worker, self._ticket, self._queue = worker, ticket, queue
        self._closed = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> StreamEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the caller is gone
            self._cancel()
            raise
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        if item.done:
            self._closed = True
        return item

    async def aclose(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._worker.cancel(self._ticket)

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._closed:
            self._ticket.cancelled = True  # a plain flag: safe from any thread, no lock


class AsyncEngine:
    """await generate(prompt, config) / async for event in stream(prompt, config)."""

    def __init__(self, engine, *, max_batch_size: int = 8, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        for name, v, lo in (("max_batch_size", max_batch_size, 1), ("max_queue", max_queue, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}={v!r} is invalid: expected an integer >= {lo}")
        if max_batch_size > engine.max_batch_size:
            raise ValueError(f"max_batch_size={max_batch_size} is invalid: the engine was built "
                             f"with max_batch_size={engine.max_batch_size}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or \
                not 0 <= max_wait_ms < 60_000:
            raise ValueError(f"max_wait_ms={max_wait_ms!r} is invalid: expected a number of "
                             "milliseconds in [0, 60000)")
        self._engine = engine
        self._worker = Worker(engine, max_batch_size=max_batch_size,
                              max_wait_s=max_wait_ms / 1000.0, max_queue=max_queue)
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], *, max_batch_size: int = 8,
                        max_wait_ms: float = 5.0, max_queue: int = 256,
                        **engine_kwargs: Any) -> "AsyncEngine":
        """Engine.from_pretrained(path, **engine_kwargs) (its max_batch_size at least ours)."""
        from ..engine import Engine
        engine_kwargs["max_batch_size"] = max(engine_kwargs.get("max_batch_size", 0),
                                              max_batch_size)
        return cls(Engine.from_pretrained(path, **engine_kwargs), max_batch_size=max_batch_size,
                   max_wait_ms=max_wait_ms, max_queue=max_queue)

    @property
    def engine(self):
        return self._engine

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._worker.closing:
            raise RuntimeError("the AsyncEngine is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker.run, name="fastdiff-engine",
                                            daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Fail queued requests, end the running batch at its next step, join the worker."""
        self._worker.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> "AsyncEngine":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def stats(self) -> dict:
        """queue_depth, running_batch_size, requests_{submitted, completed, failed, cancelled,
        rejected}, batches, batched_rows, batch_sizes {rows: runs}, queue_wait_s {count, sum,
        buckets {upper bound s: cumulative count}} (submission to the start of the run),
        max_batch_size, max_queue, worker_alive."""
        alive = self._thread is not None and self._thread.is_alive()
        return {**self._worker.stats(), "worker_alive": alive}

    # ------------------------------------------------------------------ requests
    def make_config(self, **fields: Any) -> GenerationConfig:
        """GenerationConfig(**fields) resolved for the engine's model family; ValueError naming
        the field on bad input."""
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"{unknown[0]} is not a generation setting; valid ones: "
                             f"{sorted(names)}")
        try:
            return self._engine.resolve_config(GenerationConfig(**fields))
        except TypeError as e:  # e.g. a string compared with a number in validation
            raise ValueError(f"invalid generation settings {fields}: {e}") from None

    async def generate(self, prompt, config: Optional[GenerationConfig] = None, *,
                       chat: bool = False, seed: Optional[int] = None) -> GenerationResult:
        """prompt: a string, token ids or chat messages [{role, content}]; chat=True renders
        a string with the checkpoint's chat template. seed: this request's (else config.seed,
        else random). Raises ValueError (bad prompt / settings), ContextLengthError,
        OverloadedError."""
        loop = asyncio.get_running_loop()
        ticket = self._submit(prompt, config, chat, seed, False, "block", loop.create_future())
        try:
            return await ticket.sink
        except asyncio.CancelledError:
            self._worker.cancel(ticket)
            raise

    def stream(self, prompt, config: Optional[GenerationConfig] = None, *, chat: bool = False,
               seed: Optional[int] = None,
               stream_interval: str = "block") -> AsyncIterator[StreamEvent]:
        """The request's StreamEvents: one per finished block (every step with
        stream_interval="step"), then the final one (done, finish_reason, usage). With
        stop_at_eos the stream ends as soon as the row is done. Call from a coroutine."""
        if stream_interval not in ("block", "step"):
            raise ValueError(f"stream_interval={stream_interval!r} is invalid; allowed: 'block', "
                             "'step'")
        asyncio.get_running_loop()  # RuntimeError outside a loop
        queue: asyncio.Queue = asyncio.Queue()
        ticket = self._submit(prompt, config, chat, seed, True, stream_interval, queue)
        return RequestStream(self._worker, ticket, queue)

    def _submit(self, prompt, config, chat, seed, stream, interval, sink) -> Ticket:
        self._ensure_started()
        gen = self._engine.resolve_config(config)
        ids = self._engine.encode(prompt, chat=chat)
        if not ids:
            raise ValueError("prompt is empty: it must encode to at least one token")
        max_len = self._engine.max_seq_len
        if len(ids) + gen.gen_length > max_len:
            raise ContextLengthError(len(ids), gen.gen_length, max_len)
        if seed is None:
            seed = gen.seed if gen.seed is not None else secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed={seed!r} is invalid: must be an integer in [0, 2**63)")
        ticket = Ticket(ids, dataclasses.replace(gen, seed=None), seed, stream=stream,
                        interval=interval, loop=asyncio.get_running_loop(), sink=sink)
        self._worker.submit(ticket)
        return ticket
