"""Scale out on Ray Serve: an ingress deployment serving the same FastAPI app as `fastdiff serve`
(build_app over a RemoteEngineClient) in front of engine-replica deployments, each owning one
AsyncEngine (one GPU per replica on CUDA, `torch_threads` CPUs otherwise), and a one-replica
board where the engine replicas post their stats (the ingress's /health and /metrics read it).

    serve run fastdiff.server.ray_app:build_app model=/models/LLaDA-8B-Instruct replicas=4
    fastdiff serve --model /models/LLaDA-8B-Instruct --replicas 4 [--ray auto]   (main.py)

Ray passes key=value strings to build_app; RayServeOptions lists the keys."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray
from ray import serve
from ray.serve import Application

from .app import DEFAULT_MAX_BODY_BYTES
from .app import build_app as build_http_app
from .ray_client import Accepted, RemoteEngineClient, RemoteError, replica_result

APP_NAME = "fastdiff"


@dataclass(frozen=True)
class RayServeOptions:
    """The application's settings (build_app's key=value arguments).
    replicas: engine replicas, or min_replicas + max_replicas for autoscaling (target: one
    batch in flight per replica). max_ongoing_requests per engine replica (default twice
    max_batch_size: the next batch gathers while one runs); max_queued_requests: requests the
    ingress holds for busy replicas before answering 429. device auto: one GPU per replica
    when the cluster (or, before Ray starts, this machine) has GPUs. torch_threads: intra-op
    threads per replica (default 1 on CPU, torch's default on CUDA). request_timeout_s: the
    deadline of one request, retries included; retries: resends after a replica died."""

    model: str
    served_model_name: Optional[str] = None
    replicas: int = 1
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_ongoing_requests: Optional[int] = None
    max_queued_requests: int = 256
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    graphs: str = "auto"
    torch_threads: Optional[int] = None
    api_key: Optional[str] = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = 600.0
    retries: int = 2
    stats_interval_s: float = 1.0

    def __post_init__(self) -> None:
        ints = {"replicas": 1, "min_replicas": 0, "max_replicas": 1, "max_batch_size": 1,
                "max_ongoing_requests": 1, "max_queued_requests": 1, "torch_threads": 1,
                "retries": 0}
        for name, lo in ints.items():
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise ValueError(f"{name}={v!r} is invalid: expected an integer >= {lo}")
        for name in ("max_wait_ms", "request_timeout_s", "stats_interval_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (
                    v == 0 and name != "max_wait_ms"):
                raise ValueError(f"{name}={v!r} is invalid: expected a positive number")
        if (self.min_replicas is None) != (self.max_replicas is None) or (
                self.max_replicas is not None and self.max_replicas < self.min_replicas):
            raise ValueError(f"min_replicas={self.min_replicas} / max_replicas="
                             f"{self.max_replicas} are invalid: give both, min <= max")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is invalid; allowed: auto, cpu, cuda")
        if self.graphs not in ("auto", "on", "off"):
            raise ValueError(f"graphs={self.graphs!r} is invalid; allowed: auto, on, off")
        if not Path(self.model).is_dir():
            raise FileNotFoundError(f"model={self.model!r}: no such checkpoint folder here (every "
                                    "node needs it at the same path)")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "RayServeOptions":
        """key=value strings (or typed values) -> options; ValueError naming a bad key."""
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ValueError(f"{unknown[0]} is not a fastdiff Ray Serve option; valid ones: "
                             f"{sorted(fields)}")
        kw = {k: _convert(k, v, hints[k]) for k, v in args.items()}
        kw.setdefault("api_key", os.environ.get("FASTDIFF_API_KEY") or None)
        return cls(**kw)

    @property
    def model_id(self) -> str:
        return self.served_model_name or Path(self.model).resolve().name

    def resolved(self) -> "RayServeOptions":
        """device auto -> cuda when the cluster (before Ray starts: this machine) has GPUs;
        torch_threads -> 1 on CPU."""
        device = self.device
        if device == "auto":
            if ray.is_initialized():
                gpus = ray.cluster_resources().get("GPU", 0) > 0
            else:
                import torch
                gpus = torch.cuda.is_available()
            device = "cuda" if gpus else "cpu"
        threads = self.torch_threads or (1 if device == "cpu" else None)
        return dataclasses.replace(self, device=device, torch_threads=threads)

    def engine_deployment(self) -> dict:
        """serve.deployment options of the engine replicas (of resolved() options)."""
        gpu = self.device == "cuda"
        scale = {"num_replicas": self.replicas} if self.max_replicas is None else {
            "autoscaling_config": {"min_replicas": self.min_replicas,
                                   "max_replicas": self.max_replicas,
                                   "target_ongoing_requests": self.max_batch_size}}
        return {**scale, "max_ongoing_requests": self.ongoing(),
                "max_queued_requests": self.max_queued_requests,
                "ray_actor_options": {"num_gpus": 1, "num_cpus": 1} if gpu else
                {"num_cpus": self.torch_threads}}

    def ongoing(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size


def _convert(name: str, v: Any, hint: Any) -> Any:
    if not isinstance(v, str):
        return v
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if v.lower() in ("", "none", "null") and type(None) in typing.get_args(hint):
        return None
    try:
        return kinds[0](v) if kinds[0] in (int, float) else v
    except ValueError:
        raise ValueError(f"{name}={v!r} is invalid: expected {kinds[0].__name__}") from None


# ---------------------------------------------------------------------------- deployments
@serve.deployment(name="FastdiffReplicaBoard", num_replicas=1, max_ongoing_requests=10_000,
                  ray_actor_options={"num_cpus": 0},
                  logging_config={"enable_access_log": False})  # a post per replica per second
class ReplicaBoard:
    """{replica: its latest AsyncEngine.stats()}; a replica silent for ttl_s is not live."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s, self.seen = ttl_s, {}

    async def put(self, replica: str, stats: dict) -> None:
        self.seen[replica] = (time.monotonic(), stats)

    async def drop(self, replica: str) -> None:
        self.seen.pop(replica, None)

    async def live(self) -> dict:
        now = time.monotonic()
        self.seen = {r: (t, s) for r, (t, s) in self.seen.items() if now - t <= self.ttl_s}
        return {r: s for r, (_, s) in self.seen.items()}


@serve.deployment(name="FastdiffEngine", health_check_period_s=2.0,
                  graceful_shutdown_timeout_s=10.0)
class EngineReplica:
    """One AsyncEngine. generate(request) -> ReplicaResult | RemoteError; stream(request)
    yields Accepted, then StreamEvents (or a RemoteError)."""

    async def __init__(self, opts: RayServeOptions, board) -> None:
        import torch

        from ..serving import AsyncEngine
        if opts.torch_threads:
            torch.set_num_threads(opts.torch_threads)
        self.name = serve.get_replica_context().replica_tag
        graphs = {"auto": "auto", "on": True, "off": False}[opts.graphs]
        self.ae = AsyncEngine.from_pretrained(
            opts.model, max_batch_size=opts.max_batch_size, max_wait_ms=opts.max_wait_ms,
            max_queue=opts.ongoing(), device=opts.device, dtype=opts.dtype, backend=opts.backend,
            graphs=graphs)
        await self.ae.start()
        self.board, self.interval_s = board, opts.stats_interval_s
        await self._post()
        self._reporter = asyncio.ensure_future(self._report())

    async def _post(self) -> None:
        try:
            await asyncio.wait_for(_await(self.board.put.remote(
                self.name, {**self.ae.stats(), "pid": os.getpid()})), 5.0)
        except Exception:  # the board is restarting: post again next time
            pass

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._post()

    async def generate(self, request: dict):
        try:
            gen = self.ae.make_config(**request["settings"])
            res = await self.ae.generate(request["prompt"], gen, chat=request["chat"],
                                         seed=request["seed"])
        except Exception as e:
            return RemoteError.of(self.name, e)
        return replica_result(self.name, res)

    async def stream(self, request: dict):
        try:
            gen = self.ae.make_config(**request["settings"])
            events = self.ae.stream(request["prompt"], gen, chat=request["chat"],
                                    seed=request["seed"])
        except Exception as e:
            yield RemoteError.of(self.name, e)
            return
        async with events:  # leaving (cancelled, or the ingress gone) cancels the row
            yield Accepted(self.name)
            try:
                async for ev in events:
                    yield ev
            except Exception as e:
                yield RemoteError.of(self.name, e)

    def check_health(self) -> None:
        if not self.ae.stats()["worker_alive"]:
            raise RuntimeError("the engine worker thread stopped")

    async def __del__(self) -> None:
        self._reporter.cancel()
        try:
            await asyncio.wait_for(_await(self.board.drop.remote(self.name)), 2.0)
        except Exception:
            pass
        await self.ae.close()


@serve.deployment(name="FastdiffIngress", max_ongoing_requests=4096,
                  ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The FastAPI app of `fastdiff serve`, its engine a RemoteEngineClient."""

    def __init__(self, opts: RayServeOptions, engine, board) -> None:
        self.opts = opts

        async def live() -> dict:
            return await board.live.remote()

        self.client = RemoteEngineClient(engine, live, request_timeout_s=opts.request_timeout_s,
                                         retries=opts.retries,
                                         stats_interval_s=opts.stats_interval_s)

    def __serve_build_asgi_app__(self):
        o = self.opts
        return build_http_app(self.client, model_id=o.model_id, api_key=o.api_key,
                              max_body_bytes=o.max_body_bytes)


async def _await(response) -> Any:
    return await response


def application(opts: RayServeOptions) -> Application:
    """The bound application: Ingress -> EngineReplica x N, both -> ReplicaBoard."""
    opts = opts.resolved()
    board = ReplicaBoard.bind(max(3 * opts.stats_interval_s, 2.0))
    engine = EngineReplica.options(**opts.engine_deployment()).bind(opts, board)
    return Ingress.bind(opts, engine, board)


def build_app(args: dict[str, str]) -> Application:
    """The application builder of `serve run fastdiff.server.ray_app:build_app model=DIR
    replicas=N [key=value ...]` (keys: RayServeOptions' fields; api_key defaults to
    $FASTDIFF_API_KEY)."""
    return application(RayServeOptions.from_args(dict(args)))

