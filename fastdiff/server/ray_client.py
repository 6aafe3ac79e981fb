"""The EngineClient of the Ray Serve ingress: build_app's routes talk to it as to an AsyncEngine;
it forwards each request to an engine-replica deployment through a DeploymentHandle.

Failures: a non-streamed request whose replica dies (it has sent no output yet: a non-streamed
answer is all or nothing) is sent again, to another replica, with the same seed (drawn here when
the request gives none, so the retry answers what the first try would have); after `retries`
more tries, or past the request's deadline, it is a 503. A stream is retried only until a
replica has accepted it; a replica dying later ends the stream with an error event and no
[DONE] (EngineUnavailableError). Handle backpressure (max_queued_requests) is the server's own
429. What crosses the process boundary: plain dicts, GenerationResult / StreamEvent, and
RemoteError (exceptions with custom constructors do not survive pickling)."""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional

from ray.exceptions import RayActorError, TaskCancelledError, WorkerCrashedError
from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError,
                                  ReplicaUnavailableError)

from ..serving import ContextLengthError, GenerationResult, OverloadedError
from .app import EngineUnavailableError

# the replica (or its process) is gone: safe to resend a request that has produced nothing
REPLICA_GONE = (RayActorError, ReplicaUnavailableError, WorkerCrashedError)


# ---------------------------------------------------------------------------- wire types
@dataclass
class ReplicaResult(GenerationResult):
    """A GenerationResult and the engine replica that produced it (x-fastdiff-replica)."""

    replica: str = ""


@dataclass
class Accepted:
    """First item of a replica's stream: the request is queued there (it validated)."""

    replica: str


@dataclass
class RemoteError:
    """An exception raised on a replica, in a form that pickles: kind, message, extra args."""

    replica: str
    kind: str  # "context_length" | "overloaded" | "value" | "internal"
    message: str
    args: tuple = ()

    @classmethod
    def of(cls, replica: str, e: Exception) -> "RemoteError":
        if isinstance(e, ContextLengthError):
            return cls(replica, "context_length", str(e), (e.prompt_tokens, e.gen_length,
                                                           e.max_len))
        if isinstance(e, OverloadedError):
            return cls(replica, "overloaded", str(e))
        if isinstance(e, ValueError):
            return cls(replica, "value", str(e))
        return cls(replica, "internal", f"{type(e).__name__}: {e}")

    def exception(self) -> Exception:
        """The exception the routes map to a status (build_app's _engine_error)."""
        e: Exception
        if self.kind == "context_length":
            e = ContextLengthError(*self.args)
        elif self.kind == "overloaded":
            e = OverloadedError(self.message)
        elif self.kind == "value":
            e = ValueError(self.message)
        else:
            e = RuntimeError(self.message)
        e.replica = self.replica  # type: ignore[attr-defined]  # -> the error's header
        return e


def merge_stats(per_replica: dict[str, dict]) -> dict:
    """AsyncEngine.stats() of every live replica -> one dict of the same shape (sums; the
    queue-wait histograms bucket by bucket), plus `replicas` (how many)."""
    out: dict[str, Any] = {"replicas": len(per_replica),
                           "worker_alive": any(s.get("worker_alive") for s in
                                               per_replica.values())}
    sizes: Counter = Counter()
    wait = {"count": 0, "sum": 0.0, "buckets": Counter()}
    for s in per_replica.values():
        for k, v in s.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "pid":
                out[k] = out.get(k, 0) + v
        sizes.update(s.get("batch_sizes", {}))
        w = s.get("queue_wait_s") or {}
        wait["count"] += w.get("count", 0)
        wait["sum"] += w.get("sum", 0.0)
        wait["buckets"].update(w.get("buckets", {}))
    out["batch_sizes"] = dict(sizes)
    out["queue_wait_s"] = {**wait, "buckets": dict(wait["buckets"])} if wait["buckets"] else None
    return out


# ---------------------------------------------------------------------------- the client
class RemoteEngineClient:
    """EngineClient over an engine deployment's handle (methods generate, stream) and a
    stats source (an async function -> {replica: AsyncEngine.stats()} of the live replicas)."""

    def __init__(self, engine, live_stats: Callable[[], Any], *, request_timeout_s: float = 600.0,
                 retries: int = 2, stats_interval_s: float = 1.0) -> None:
        self.engine, self.live_stats = engine, live_stats
        self.timeout_s, self.retries, self.interval_s = request_timeout_s, retries, stats_interval_s
        self.retried = 0  # requests resent after their replica died
        self._stats: dict = merge_stats({})
        self._poller: Optional[asyncio.Task] = None

    async def start(self) -> None:
        await self._refresh()
        self._poller = asyncio.ensure_future(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    def stats(self) -> dict:
        """The engine replicas' stats merged (last poll), replicas, replica_retries."""
        return {**self._stats, "replica_retries": self.retried}

    async def _refresh(self) -> None:
        try:
            live = await asyncio.wait_for(self.live_stats(), max(self.interval_s * 5, 2.0))
        except Exception:  # the stats source restarting: keep the last view
            return
        self._stats = merge_stats(live)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._refresh()

    def make_config(self, **fields: Any) -> dict:
        """The settings as given: the replica validates and resolves them for its family."""
        return fields

    def _request(self, prompt, config: Optional[dict], chat: bool, seed: Optional[int]) -> dict:
        settings = dict(config or {})
        if seed is None:
            seed = settings.pop("seed", None)
        if seed is None:  # drawn here, so that a retry answers what the first try would have
            seed = secrets.randbits(63)
        return {"prompt": prompt, "settings": settings, "chat": chat, "seed": seed}

    async def generate(self, prompt, config: Optional[dict] = None, *, chat: bool = False,
                       seed: Optional[int] = None) -> ReplicaResult:
        request = self._request(prompt, config, chat, seed)
        out = await self._call(lambda: self.engine.generate.remote(request))
        if isinstance(out, RemoteError):
            raise out.exception()
        return out

    def stream(self, prompt, config: Optional[dict] = None, *, chat: bool = False,
               seed: Optional[int] = None) -> "RemoteStream":
        return RemoteStream(self, self._request(prompt, config, chat, seed))

    async def _call(self, send: Callable[[], Any], first_item: bool = False) -> Any:
        """send() a request (a DeploymentResponse, or a DeploymentResponseGenerator whose first
        item is awaited) with the deadline, resending it while its replica died before
        answering. -> the result ((generator, first item) with first_item)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for attempt in range(self.retries + 1):
            response = send()
            try:
                work = response.__anext__() if first_item else _result(response)
                out = await asyncio.wait_for(work, max(deadline - loop.time(), 0.0))
                return (response, out) if first_item else out
            except asyncio.TimeoutError:
                response.cancel()
                raise EngineUnavailableError(f"no engine replica answered within the request "
                                             f"deadline ({self.timeout_s:g} s)") from None
            except asyncio.CancelledError:
                response.cancel()  # the client left: the replica cancels the row
                raise
            except BackPressureError as e:
                raise OverloadedError(f"the server is overloaded: every engine replica is busy "
                                      f"and the request queue is full ({e}); retry later") \
                    from None
            except DeploymentUnavailableError as e:
                raise EngineUnavailableError(f"the engine deployment is unavailable: "
                                             f"{e.message}") from None
            except StopAsyncIteration:  # a stream that ended before its first item
                raise EngineUnavailableError("the engine replica closed the stream before "
                                             "accepting it") from None
            except REPLICA_GONE as e:
                why = e
            if attempt < self.retries and loop.time() + 0.2 * 2 ** attempt < deadline:
                self.retried += 1
                await asyncio.sleep(0.2 * 2 ** attempt)  # the router drops the dead replica
            else:
                break
        raise EngineUnavailableError(f"the engine replica serving this request died and "
                                     f"{self.retries} retries failed: {type(why).__name__}")


async def _result(response) -> Any:
    return await response


class RemoteStream:
    """The stream() of RemoteEngineClient: ready() sends the request and waits until a replica
    accepted it (errors raise there, before the HTTP response starts); then StreamEvents."""

    def __init__(self, client: RemoteEngineClient, request: dict) -> None:
        self.client, self.request = client, request
        self.replica: Optional[str] = None
        self._gen = None
        self._closed = False

    async def ready(self) -> None:
        client = self.client
        handle = client.engine.options(stream=True)
        self._gen, first = await client._call(lambda: handle.stream.remote(self.request),
                                              first_item=True)
        if isinstance(first, RemoteError):
            self._closed = True
            raise first.exception()
        self.replica = first.replica

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._closed or self._gen is None:
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._gen.__anext__(), self.client.timeout_s)
        except StopAsyncIteration:
            self._closed = True
            raise
        except asyncio.TimeoutError:
            await self.aclose()
            raise EngineUnavailableError(f"engine replica {self.replica} sent nothing for "
                                         f"{self.client.timeout_s:g} s") from None
        except (*REPLICA_GONE, TaskCancelledError) as e:
            self._closed = True
            raise EngineUnavailableError(f"engine replica {self.replica} died during this "
                                         f"stream ({type(e).__name__})") from None
        if isinstance(item, RemoteError):
            self._closed = True
            raise item.exception()
        if item.done:
            self._closed = True
        return item

    async def aclose(self) -> None:
        if not self._closed and self._gen is not None:
            self._gen.cancel()  # the replica's generator is cancelled: its row leaves the run
        self._closed = True


def replica_result(replica: str, res: GenerationResult) -> ReplicaResult:
    return ReplicaResult(**{f.name: getattr(res, f.name) for f in dataclasses.fields(res)},
                         replica=replica)
