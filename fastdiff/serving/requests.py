"""What callers get back from the AsyncEngine (results, stream events, errors) and the ticket
that carries one request from the caller's event loop to the worker thread and back."""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import GenerationConfig


class OverloadedError(RuntimeError):
    """The request queue is full: retry later (HTTP 429 at the server)."""


class ContextLengthError(ValueError):
    """prompt + gen_length exceeds the engine's context length."""

    def __init__(self, prompt_tokens: int, gen_length: int, max_len: int) -> None:
        self.prompt_tokens, self.gen_length, self.max_len = prompt_tokens, gen_length, max_len
        super().__init__(
            f"gen_length={gen_length} is invalid: this model's maximum context length is "
            f"{max_len} tokens, but the request needs {prompt_tokens + gen_length} "
            f"({prompt_tokens} in the prompt, {gen_length} to generate); shorten the prompt or "
            f"lower gen_length to <= {max(max_len - prompt_tokens, 0)}")


@dataclass
class GenerationResult:
    """One request's result. token_ids: generated ids cut before the first EOS/EoT; text: them
    decoded (None without a tokenizer); finish_reason "eos" | "length"; completion_tokens =
    len(token_ids); nfe: forwards the row took part in."""

    token_ids: list[int]
    text: Optional[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    nfe: int

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "nfe": self.nfe}


@dataclass
class StreamEvent:
    """Progress of one streamed request. new_tokens: generation position -> token committed
    since the last event; canvas: the whole generation region (mask_id where still masked);
    text: decoded committed prefix (positions before the first still-masked one, cut at the first
    EOS/EoT; on the final event the result's text); block, step: where the run is; done: the
    last event, with finish_reason ("eos" | "length") and usage (prompt_tokens,
    completion_tokens, nfe)."""

    new_tokens: dict[int, int]
    canvas: list[int]
    text: Optional[str]
    block: int
    step: int
    done: bool = False
    finish_reason: Optional[str] = None
    usage: Optional[dict[str, int]] = None
    result: Optional[GenerationResult] = field(default=None, repr=False)  # on the final event


_ids = itertools.count(1)


class Ticket:
    """One submitted request. Built in the caller's loop; the worker thread reads ids/gen/seed
    and answers through deliver(), which hops onto the caller's loop. `cancelled` is a plain
    flag: set from any thread, read by the worker at every step callback."""

    def __init__(self, ids: list[int], gen: GenerationConfig, seed: int, *, stream: bool,
                 interval: str, loop: asyncio.AbstractEventLoop, sink: Any) -> None:
        self.id = next(_ids)
        self.ids, self.gen, self.seed = ids, gen, seed
        self.stream, self.interval = stream, interval
        self.loop, self.sink = loop, sink  # asyncio.Future (generate) | asyncio.Queue (stream)
        self.key = (gen, -(-len(ids) // 64))  # batch compatibility: settings + length bucket
        self.submitted = time.monotonic()
        self.cancelled = False

    def deliver(self, item: Any) -> None:
        """From the worker thread: a StreamEvent / GenerationResult / exception to the caller."""
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening
            self.cancelled = True

    def _put(self, item: Any) -> None:
        if isinstance(self.sink, asyncio.Queue):
            self.sink.put_nowait(item)
        elif not self.sink.done():
            if isinstance(item, BaseException):
                self.sink.set_exception(item)
            else:
                self.sink.set_result(item)
