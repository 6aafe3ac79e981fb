"""Scale out on Ray Serve, end to end on a local Ray instance this module starts and stops
(loopback only, no dashboard, no usage report): two engine replicas of a small random checkpoint
behind the shared OpenAI app, driven by the real `openai` client; answers compared with the
single-process server's; a dropped stream cancels its row on the replica; one replica's process
killed while requests are in flight, then restarted by Ray."""
import asyncio
import json
import os
import signal
import socket
import time
import warnings
from types import SimpleNamespace

import httpx
import pytest
import torch
from _server_utils import ServerThread, metric
from openai import AsyncOpenAI

from fastdiff import AsyncEngine, Engine
from fastdiff.server import build_app

with warnings.catch_warnings():  # Ray Serve's pydantic models warn at import
    warnings.simplefilter("ignore")
    import ray
    from ray import serve

    from fastdiff.server.ray_app import APP_NAME, RayServeOptions, application

pytestmark = pytest.mark.slow
MODEL = "tiny-ray"
HEADER = "x-fastdiff-replica"
DEADLINE = 90.0  # every request answers within this (the server's own deadline: 60 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def health(url) -> dict:
    try:
        r = httpx.get(url + "/health", timeout=5)
    except httpx.TransportError:
        return {}
    return r.json() if r.status_code in (200, 503) else {}


@pytest.fixture(scope="module")
def cluster(tiny_ckpt):
    """Ray (4 logical CPUs on this 2-core machine) + Serve on a loopback port: 2 engine
    replicas, one torch thread each; Ray's ports on 127.0.0.1 (conftest.py sets
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported; else Ray uses the machine's
    address)."""
    env = {"OMP_NUM_THREADS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="serve")
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        opts = RayServeOptions(model=str(tiny_ckpt), served_model_name=MODEL, replicas=2,
                               max_batch_size=8, max_wait_ms=20, request_timeout_s=60,
                               stats_interval_s=0.5, device="cpu")
        serve.run(application(opts), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: health(url).get("replicas") == 2, 60, "2 live replicas")
        board = serve.get_deployment_handle("FastdiffReplicaBoard", app_name=APP_NAME)
        yield SimpleNamespace(url=url, board=board)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def single(tiny_ckpt):
    """The single-process server over the same checkpoint: the reference answers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ae = AsyncEngine(Engine.from_pretrained(tiny_ckpt, device="cpu", max_batch_size=8),
                     max_batch_size=8, max_wait_ms=20)
    with ServerThread(build_app(ae, model_id=MODEL)) as url:
        yield url
    torch.set_num_threads(before)


def jobs_16():
    """16 requests: completions and chat, 6 streamed, seeded sampling and greedy."""
    jobs = []
    for i in range(16):
        chat = i % 3 == 1
        prompt = [{"role": "user", "content": f"q{i} " + "why " * (i % 4)}] if chat else \
            f"request {i} " + "and " * (i % 5)
        settings = dict(temperature=0.8, block_length=8) if i % 2 == 0 else {}
        jobs.append(dict(chat=chat, prompt=prompt, max_tokens=16, seed=100 + i,
                         extra=settings, stream=i % 8 in (1, 4, 6)))
    return jobs


async def call(ac: AsyncOpenAI, job: dict):
    """-> (answer, replica header): answer = (text, finish_reason, prompt, completion tokens)
    (for a stream: the concatenated deltas and the usage chunk's counts)."""
    kw = dict(model=MODEL, max_tokens=job["max_tokens"], seed=job["seed"],
              extra_body=job["extra"])
    api = ac.chat.completions if job["chat"] else ac.completions
    kw["messages" if job["chat"] else "prompt"] = job["prompt"]
    if not job["stream"]:
        raw = await api.with_raw_response.create(**kw)
        r = raw.parse()
        text = r.choices[0].message.content if job["chat"] else r.choices[0].text
        return (text, r.choices[0].finish_reason, r.usage.prompt_tokens,
                r.usage.completion_tokens), raw.headers.get(HEADER)
    raw = await api.with_raw_response.create(**kw, stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in raw.parse()]
    body = [c for c in chunks if c.choices]
    text = "".join((c.choices[0].delta.content or "") if job["chat"] else c.choices[0].text
                   for c in body)
    u = chunks[-1].usage
    return (text, body[-1].choices[0].finish_reason, u.prompt_tokens, u.completion_tokens), \
        raw.headers.get(HEADER)


async def run_all(url, jobs):
    async with AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                           timeout=DEADLINE) as ac:
        return await asyncio.wait_for(asyncio.gather(*(call(ac, j) for j in jobs)),
                                      DEADLINE)


def check_16_concurrent_requests_spread_over_2_replicas(cluster, single):
    """16 concurrent requests (6 streamed) all answer, each as the single-process server does,
    served by both replicas; /health and /metrics count both; a replica's 400 names it."""
    jobs = jobs_16()
    t0 = time.monotonic()
    got = asyncio.run(run_all(cluster.url, jobs))
    wall = time.monotonic() - t0
    want = asyncio.run(run_all(single, jobs))
    for job, (answer, _), (ref, none) in zip(jobs, got, want):
        assert answer == ref, job
        assert none is None  # the single-process server names no replica
    served_by = {replica for _, replica in got}
    assert None not in served_by and len(served_by) == 2, served_by
    assert wall < DEADLINE
    h = httpx.get(cluster.url + "/health").json()
    assert h == {"status": "ok", "replicas": 2}
    wait_until(lambda: metric(httpx.get(cluster.url + "/metrics").text,
                              "fastdiff_engine_requests_total", outcome="completed") >= 16,
               10, "the replicas' counts in /metrics")
    text = httpx.get(cluster.url + "/metrics").text
    assert metric(text, "fastdiff_replicas") == 2
    assert metric(text, "fastdiff_requests_total", endpoint="completions", status="200") + \
        metric(text, "fastdiff_requests_total", endpoint="chat", status="200") == 16
    # an error raised on a replica is the server's own body, with the replica's name
    r = httpx.post(cluster.url + "/v1/completions", timeout=30,
                   json={"model": MODEL, "prompt": "x", "max_tokens": 4, "steps": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steps", r.text
    assert r.headers[HEADER] in served_by


def live_replicas(cluster) -> dict:
    """{replica: its AsyncEngine.stats() and pid} from the board."""
    return cluster.board.live.remote().result(timeout_s=10)


def fault_jobs():
    """8 non-streamed requests that each take a few seconds on one CPU thread."""
    return [dict(chat=False, prompt=f"fault {i} " + "x " * i, max_tokens=128, seed=7 + i,
                 extra=dict(temperature=0.8, block_length=32), stream=False) for i in range(8)]


async def _data_lines(lines):
    async for line in lines:
        if line.startswith("data: "):
            yield line[6:]


def check_killed_replica_retried_stream_ended_replica_restarted(cluster, single):
    """A stream is running on replica V; 8 non-streamed requests are sent; once V holds some
    of them, V's process is SIGKILLed. The stream ends promptly with an error event and no
    [DONE]; every non-streamed request answers (resent to the other replica: fastdiff retries
    rather than answering 5xx) with the single-process server's answer, within the deadline;
    Ray restarts V, and the next batch is served by 2 replicas again."""
    jobs = fault_jobs()
    want = asyncio.run(run_all(single, jobs))
    retries0 = metric(httpx.get(cluster.url + "/metrics").text,
                      "fastdiff_replica_retries_total")
    long = {"model": MODEL, "prompt": "stream me", "max_tokens": 512, "stream": True,
            "block_length": 8, "logits_eos_inf": True, "seed": 1}

    async def scenario():
        async with httpx.AsyncClient(timeout=DEADLINE) as hc, AsyncOpenAI(
                base_url=cluster.url + "/v1", api_key="unused", max_retries=0,
                timeout=DEADLINE) as ac:
            async with hc.stream("POST", cluster.url + "/v1/completions", json=long) as resp:
                assert resp.status_code == 200
                victim = resp.headers[HEADER]
                data = _data_lines(resp.aiter_lines())
                first = json.loads(await data.__anext__())
                assert first["choices"][0]["finish_reason"] is None
                tasks = [asyncio.ensure_future(call(ac, j)) for j in jobs]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while True:  # V holds the stream and >= 1 of the 8
                    s = (await asyncio.to_thread(live_replicas, cluster))[victim]
                    held = s["requests_submitted"] - s["requests_completed"] - \
                        s["requests_failed"] - s["requests_cancelled"]
                    if held >= 2:
                        break
                    assert loop.time() < deadline, f"replica {victim} got none of the 8: {s}"
                    await asyncio.sleep(0.1)
                os.kill(s["pid"], signal.SIGKILL)
                t_kill = loop.time()
                rest = await asyncio.wait_for(_collect(data), 30)
                stream_end = loop.time() - t_kill
            results = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            return victim, rest, stream_end, results, loop.time() - t_kill

    victim, rest, stream_end, results, all_done = asyncio.run(scenario())
    assert "[DONE]" not in rest and rest, rest
    err = json.loads(rest[-1])["error"]
    assert err["type"] == "server_error" and err["code"] == "engine_unavailable", err
    assert stream_end < 15, stream_end
    for job, (answer, replica), (ref, _) in zip(jobs, results, want):
        assert answer == ref, job
        assert replica != victim  # answered by the survivor (resent if it was on V)
    assert all_done < DEADLINE
    retries = metric(httpx.get(cluster.url + "/metrics").text,
                     "fastdiff_replica_retries_total") - retries0
    assert retries >= 1  # some of the 8 were on V when it died

    # Ray restarts V: a new replica id, and a following batch is spread over 2 replicas again
    wait_until(lambda: len(live_replicas(cluster)) == 2 and victim not in live_replicas(
        cluster), 60, "the replica's restart")
    assert health(cluster.url) == {"status": "ok", "replicas": 2}
    # The board learns of the new replica when it registers; the ingress's DeploymentHandle
    # router a little later (Ray's long poll), so a batch sent at once may still go to the
    # survivor only. Every batch must answer as the single server does; within 30 s a batch
    # must be spread over the survivor and the restarted replica.
    jobs = jobs_16()[:8]
    want = [a for a, _ in asyncio.run(run_all(single, jobs))]
    deadline = time.monotonic() + 30
    while True:
        got = asyncio.run(run_all(cluster.url, jobs))
        assert [a for a, _ in got] == want
        served_by = {r for _, r in got}
        assert victim not in served_by, served_by
        if len(served_by) == 2:
            break
        assert time.monotonic() < deadline, f"batches still served by {served_by} only"
        time.sleep(0.5)


async def _collect(data) -> list:
    return [line async for line in data]


def check_a_closed_stream_cancels_its_row(cluster):
    """The client drops a long stream after its first event: the replica's row is cancelled
    (the ingress cancels the replica's generator), as /metrics' summed engine counts show."""
    def cancelled():
        return metric(httpx.get(cluster.url + "/metrics").text,
                      "fastdiff_engine_requests_total", outcome="cancelled")

    before = cancelled()
    body = {"model": MODEL, "prompt": "drop me", "max_tokens": 512, "block_length": 8,
            "logits_eos_inf": True, "stream": True}
    with httpx.stream("POST", cluster.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers[HEADER]
        next(line for line in r.iter_lines() if line.startswith("data: "))
    wait_until(lambda: cancelled() == before + 1, 10, "the row's cancel")


def test_two_replicas_answer_16_requests_and_survive_a_killed_one(cluster, single):
    """One test, so that pytest-xdist starts one Ray instance, not one per worker."""
    check_16_concurrent_requests_spread_over_2_replicas(cluster, single)
    check_a_closed_stream_cancels_its_row(cluster)
    check_killed_replica_retried_stream_ended_replica_restarted(cluster, single)
