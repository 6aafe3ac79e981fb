"""The Ray Serve ingress's EngineClient without a Ray cluster: build_app over a
RemoteEngineClient whose deployment handle is a fake that answers, dies, times out or pushes
back on cue; what the OpenAI client gets (status, error body, x-fastdiff-replica, [DONE]).
Also the options parser and the stats merge."""
import asyncio
import json
import pickle
import warnings

import httpx
import pytest
from _server_utils import ServerThread, metric

from fastdiff.server import build_app
from fastdiff.serving import ContextLengthError, GenerationResult, StreamEvent

with warnings.catch_warnings():  # Ray Serve's pydantic models warn at import
    warnings.simplefilter("ignore")
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from fastdiff.server.ray_app import RayServeOptions, application
    from fastdiff.server.ray_app import build_app as build_ray_app
    from fastdiff.server.ray_client import (Accepted, RemoteEngineClient, RemoteError,
                                            merge_stats, replica_result)

MODEL = "fake"
BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "seed": 5}


def result(replica="r1", text="abcd"):
    return replica_result(replica, GenerationResult([1, 2, 3, 4], text, "length", 2, 4, 8))


def events(replica="r1"):
    return [Accepted(replica), StreamEvent({0: 1}, [1, 0], "ab", 0, 0),
            StreamEvent({1: 2}, [1, 2], "abcd", 1, 0, True, "length",
                        {"prompt_tokens": 2, "completion_tokens": 4, "nfe": 8})]


class FakeResponse:
    """A DeploymentResponse: awaiting it plays `outcome` (a value, an exception, or "hang")."""

    def __init__(self, outcome) -> None:
        self.outcome, self.cancelled = outcome, False

    def __await__(self):
        return self._play().__await__()

    async def _play(self):
        if self.outcome == "hang":
            await asyncio.sleep(3600)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class FakeGenerator(FakeResponse):
    """A DeploymentResponseGenerator: items in order; an exception item is raised."""

    def __init__(self, items) -> None:
        super().__init__(None)
        self.items = list(items)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


class FakeHandle:
    """handle.generate.remote / handle.options(stream=True).stream.remote: each call takes
    the next scripted outcome."""

    def __init__(self, outcomes) -> None:
        self.outcomes, self.sent, self.requests = list(outcomes), [], []
        self.generate = self.stream = self

    def options(self, **kw) -> "FakeHandle":
        return self

    def remote(self, request):
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        r = FakeGenerator(outcome) if isinstance(outcome, list) else FakeResponse(outcome)
        self.sent.append(r)
        return r


def serve(outcomes, **kw):
    handle = FakeHandle(outcomes)

    async def live():
        return {"r1": {"worker_alive": True, "requests_completed": 3, "queue_depth": 1},
                "r2": {"worker_alive": True, "requests_completed": 4, "queue_depth": 0}}

    client = RemoteEngineClient(handle, live, **{"request_timeout_s": 10, **kw})
    return handle, client, ServerThread(build_app(client, model_id=MODEL))


def post(url, body=BODY, **kw):
    return httpx.post(url + "/v1/completions", json=body, timeout=30, **kw)


def test_answer_carries_the_replica_and_health_counts_replicas():
    handle, _, server = serve([result("r2")])
    with server as url:
        r = post(url)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "abcd"
        assert r.headers["x-fastdiff-replica"] == "r2"
        assert httpx.get(url + "/health").json() == {"status": "ok", "replicas": 2}
        text = httpx.get(url + "/metrics").text
        assert metric(text, "fastdiff_replicas") == 2
        assert metric(text, "fastdiff_engine_requests_total", outcome="completed") == 7
        assert metric(text, "fastdiff_queue_depth") == 1
    assert handle.requests[0] == {"prompt": "hi", "settings": {"gen_length": 4}, "chat": False,
                                  "seed": 5}


def test_dead_replica_is_retried_with_the_same_seed():
    handle, _, server = serve([ActorDiedError(), ActorDiedError(), result("r2")])
    with server as url:
        r = post(url, {k: v for k, v in BODY.items() if k != "seed"})
        assert r.status_code == 200 and r.headers["x-fastdiff-replica"] == "r2"
        assert metric(httpx.get(url + "/metrics").text, "fastdiff_replica_retries_total") == 2
    seeds = {req["seed"] for req in handle.requests}
    assert len(handle.requests) == 3 and len(seeds) == 1 and None not in seeds


def test_retries_exhausted_or_deadline_passed_is_a_503_error_body():
    handle, _, server = serve([ActorDiedError()] * 2, retries=1)
    with server as url:
        r = post(url)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert r.json()["error"]["type"] == "server_error"
    handle, _, server = serve(["hang"], request_timeout_s=0.5)
    with server as url:
        r = post(url)
        assert r.status_code == 503 and "deadline" in r.json()["error"]["message"]
    assert handle.sent[0].cancelled  # the replica is told to drop the row


def test_backpressure_is_the_servers_own_429():
    handle, _, server = serve([BackPressureError(num_queued_requests=4,
                                                      max_queued_requests=4)])
    with server as url:
        r = post(url)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_overloaded"
        assert r.json()["error"]["type"] == "overloaded_error"
    assert len(handle.requests) == 1  # not retried


def test_replica_errors_keep_their_status_and_name_the_replica():
    bad = RemoteError.of("r1", ValueError("steps=0 is invalid: expected >= 1"))
    ctx = pickle.loads(pickle.dumps(RemoteError.of("r2", ContextLengthError(900, 200, 1024))))
    handle, _, server = serve([bad, ctx, [bad]])
    with server as url:
        r = post(url)
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps"
        assert r.headers["x-fastdiff-replica"] == "r1"
        r = post(url)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 1024 tokens" in r.json()["error"]["message"]
        assert r.headers["x-fastdiff-replica"] == "r2"
        r = post(url, {**BODY, "stream": True})  # refused before the stream starts
        assert r.status_code == 400 and r.headers["x-fastdiff-replica"] == "r1"


def sse(url, body):
    with httpx.stream("POST", url + "/v1/completions", json={**BODY, **body, "stream": True},
                      timeout=30) as r:
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
        return r.status_code, r.headers.get("x-fastdiff-replica"), lines


def test_stream_retried_until_accepted_then_a_death_ends_it_without_done():
    evs = events("r2")
    handle, _, server = serve([[ActorDiedError()], evs,
                                    evs[:2] + [ActorDiedError()]])
    with server as url:
        status, replica, lines = sse(url, {})
        assert (status, replica, lines[-1]) == (200, "r2", "[DONE]")
        assert "".join(json.loads(x)["choices"][0]["text"] for x in lines[:-1]) == "abcd"
        status, replica, lines = sse(url, {})
        assert status == 200 and "[DONE]" not in lines
        assert json.loads(lines[0])["choices"][0]["text"] == "ab"
        assert json.loads(lines[-1])["error"]["code"] == "engine_unavailable"
        text = httpx.get(url + "/metrics").text
        assert metric(text, "fastdiff_requests_total", endpoint="completions", status="503") == 1


def test_options_from_key_value_strings(tmp_path):
    o = RayServeOptions.from_args({"model": str(tmp_path), "replicas": "3",
                                   "max_wait_ms": "2.5", "torch_threads": "none",
                                   "device": "cpu"}).resolved()
    assert (o.replicas, o.max_wait_ms, o.torch_threads, o.model_id) == (3, 2.5, 1,
                                                                         tmp_path.name)
    d = o.engine_deployment()
    assert d["num_replicas"] == 3 and d["max_ongoing_requests"] == 16
    assert d["max_queued_requests"] == 256 and d["ray_actor_options"] == {"num_cpus": 1}
    gpu = RayServeOptions(model=str(tmp_path), device="cuda", min_replicas=1,
                          max_replicas=4).resolved()
    d = gpu.engine_deployment()
    assert d["ray_actor_options"] == {"num_gpus": 1, "num_cpus": 1}
    assert d["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in d
    with pytest.raises(ValueError, match="replica_count is not a fastdiff Ray Serve option"):
        RayServeOptions.from_args({"model": str(tmp_path), "replica_count": "2"})
    with pytest.raises(ValueError, match="replicas='two' is invalid: expected int"):
        RayServeOptions.from_args({"model": str(tmp_path), "replicas": "two"})
    with pytest.raises(ValueError, match="give both"):
        RayServeOptions(model=str(tmp_path), min_replicas=2)
    with pytest.raises(FileNotFoundError, match="every node needs it"):
        RayServeOptions(model=str(tmp_path / "missing"))
    app = build_ray_app({"model": str(tmp_path), "replicas": "2", "device": "cpu"})
    assert type(app).__name__ == "Application"
    assert type(application(o)).__name__ == "Application"


def test_merge_stats_sums_replicas():
    a = {"queue_depth": 1, "requests_completed": 3, "batch_sizes": {1: 2, 4: 1}, "pid": 10,
         "worker_alive": True, "queue_wait_s": {"count": 3, "sum": 0.5, "buckets": {0.1: 2}}}
    b = {"queue_depth": 2, "requests_completed": 5, "batch_sizes": {4: 3}, "pid": 11,
         "worker_alive": False, "queue_wait_s": {"count": 4, "sum": 1.0, "buckets": {0.1: 1}}}
    m = merge_stats({"a": a, "b": b})
    assert (m["replicas"], m["queue_depth"], m["requests_completed"], m["worker_alive"]) == \
        (2, 3, 8, True)
    assert m["batch_sizes"] == {1: 2, 4: 4} and "pid" not in m
    assert m["queue_wait_s"] == {"count": 7, "sum": 1.5, "buckets": {0.1: 3}}
    assert merge_stats({}) == {"replicas": 0, "worker_alive": False, "batch_sizes": {},
                               "queue_wait_s": None}


def test_fastdiff_serve_replicas_flags_reach_the_ray_launcher(tmp_path, monkeypatch):
    """`fastdiff serve --replicas N` / `--ray [ADDRESS]` -> serve_on_ray with the options (the
    launcher itself was run by hand: starting a second Ray instance here costs ~30 s)."""
    import fastdiff.server.main as server_main
    from fastdiff.cli import main
    calls = []
    monkeypatch.setattr(server_main, "serve_on_ray", lambda opts, **kw: calls.append((opts, kw)))
    monkeypatch.delenv("FASTDIFF_API_KEY", raising=False)
    for argv, replicas, address in ((["--replicas", "3"], 3, None), (["--ray"], 1, None),
                                    (["--ray", "auto", "--replicas", "2"], 2, "auto")):
        assert main(["serve", "--model", str(tmp_path), "--port", "8123", "--device", "cpu",
                     "--max-batch-size", "4", *argv]) == 0
        opts, kw = calls.pop()
        assert (kw["host"], kw["port"], kw["address"]) == ("127.0.0.1", 8123, address)
        assert (opts.replicas, opts.max_batch_size, opts.device, opts.model_id) == (
            replicas, 4, "cpu", tmp_path.name)
        assert opts.api_key is None and opts.engine_deployment()["max_ongoing_requests"] == 8
