"""The OpenAI-compatible server, end to end: a real uvicorn server on a loopback port serving a
small random checkpoint, driven by the real `openai` client (and httpx for raw checks)."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
from _server_utils import ServerThread, metric
from openai import AsyncOpenAI, OpenAI

from fastdiff import AsyncEngine, Engine, GenerationConfig
from fastdiff.server import build_app

MODEL = "tiny-served"
MSGS = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What does a diffusion model do?"}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def serve(ckpt, **engine_kw):
    """A started server over a fresh engine: yields SimpleNamespace(url, ae)."""
    api_key = engine_kw.pop("api_key", None)
    ae = AsyncEngine(Engine.from_pretrained(ckpt, device="cpu", max_batch_size=8), **engine_kw)
    app = build_app(ae, model_id=MODEL, api_key=api_key, max_body_bytes=1 << 20)
    with ServerThread(app) as url:
        yield SimpleNamespace(url=url, ae=ae)


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    yield from serve(tiny_ckpt, max_batch_size=8, max_wait_ms=20)


@pytest.fixture(scope="module")
def solo(tiny_ckpt):
    """Single runs in this process: the reference every server answer must equal."""
    return Engine.from_pretrained(tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def client(served):
    return OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def cut_at_stop(text, stops):
    hits = [text.find(s) for s in stops if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def expected(solo, prompt, settings, seed=0, stops=()):
    """(text, finish_reason, prompt_tokens, completion_tokens) of the request run alone."""
    gen = solo.resolve_config(GenerationConfig(**settings))
    ids = solo.encode(prompt)
    c = solo.generate_ids([ids], gen, seeds=[seed])[0]
    text, stopped = cut_at_stop(c.text, stops)
    return text, "stop" if stopped or c.finish_reason == "eos" else "length", len(ids), \
        len(c.token_ids)


def valid_request_works(url):
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "ok",
                                                  "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_models_and_health(served, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    raw = httpx.get(served.url + "/v1/models").json()
    assert raw["object"] == "list" and len(raw["data"]) == 1
    card = raw["data"][0]
    assert set(card) == {"id", "object", "created", "owned_by"} and card["object"] == "model"
    assert isinstance(card["created"], int) and isinstance(card["owned_by"], str)
    assert client.models.retrieve(MODEL).id == MODEL
    r = httpx.get(served.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_completion_and_chat_match_single_runs(client, solo, tiny_ckpt):
    settings = dict(gen_length=16, block_length=8, temperature=0.9)
    r = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=16, seed=3,
                                  temperature=0.9, extra_body={"block_length": 8})
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == MODEL
    assert isinstance(r.created, int) and len(r.choices) == 1 and r.choices[0].index == 0
    c, u = r.choices[0], r.usage
    assert (c.text, c.finish_reason, u.prompt_tokens, u.completion_tokens) == expected(
        solo, "The quick brown", settings, seed=3)
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=12)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    m, u = r.choices[0].message, r.usage
    assert m.role == "assistant" and len(r.choices) == 1
    assert (m.content, r.choices[0].finish_reason, u.prompt_tokens, u.completion_tokens) == \
        expected(solo, MSGS, dict(gen_length=12))
    # prompt_tokens: the chat template rendered as Hugging Face does, no specials added again
    from transformers import PreTrainedTokenizerFast
    cfg = json.loads((tiny_ckpt / "tokenizer_config.json").read_text())
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_ckpt / "tokenizer.json"), **cfg)
    hf_ids = hf.apply_chat_template(MSGS, tokenize=True, add_generation_prompt=True,
                                    return_dict=True)["input_ids"]
    assert u.prompt_tokens == len(hf_ids)


def test_any_max_tokens_works_without_dllm_settings(client):
    for n in (1, 3, 37):
        r = client.completions.create(model=MODEL, prompt="count", max_tokens=n)
        assert r.usage.completion_tokens <= n
        assert r.choices[0].finish_reason in ("stop", "length")


def test_non_streaming_client_that_leaves_cancels_its_row(served):
    before = served.ae.stats()["requests_cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # 512 one-token steps take seconds: leave at 0.5 s
        httpx.post(served.url + "/v1/completions", json={"model": MODEL, "prompt": "bye",
                                                          "max_tokens": 512},
                   timeout=httpx.Timeout(60, read=0.5))
    wait_for(lambda: served.ae.stats()["requests_cancelled"] == before + 1)
    metrics = httpx.get(served.url + "/metrics").text
    assert metric(metrics, "fastdiff_requests_total", endpoint="completions",
                  status="cancelled") >= 1
    valid_request_works(served.url)


def _stream_text(chunks, chat):
    """(concatenated text, finish_reason, usage) of a list of stream chunks, checking the
    OpenAI stream conventions on the way."""
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert with_choices[-1].choices[0].finish_reason in ("stop", "length")
    if chat:
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert with_choices[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    else:
        assert all(c.object == "text_completion" for c in chunks)
        text = "".join(c.choices[0].text for c in with_choices)
    usage = chunks[-1].usage if not chunks[-1].choices else None
    return text, with_choices[-1].choices[0].finish_reason, usage


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_stream_concatenates_to_the_non_streamed_text(client, solo, chat):
    """Same seed and settings: the streamed deltas add up to the non-streamed text exactly,
    with and without a stop string (held back while it may be starting)."""
    kw = dict(model=MODEL, max_tokens=24, temperature=0.8, seed=11,
              extra_body={"block_length": 4, "logits_eos_inf": True})
    call = client.chat.completions.create if chat else client.completions.create
    kw.update(messages=MSGS) if chat else kw.update(prompt="Once upon a time")

    def both(**extra):
        r = call(**kw, **extra)
        chunks = list(call(**kw, **extra, stream=True, stream_options={"include_usage": True}))
        assert extra or len([c for c in chunks if c.choices]) > 3  # several deltas
        text = r.choices[0].message.content if chat else r.choices[0].text
        return (text, r.choices[0].finish_reason, r.usage), _stream_text(chunks, chat)

    (full, reason, usage), streamed = both()
    assert streamed == (full, reason, usage) and reason == "length"
    prompt = MSGS if chat else "Once upon a time"
    assert (full, reason) == expected(solo, prompt, dict(gen_length=24, block_length=4,
                                                         temperature=0.8, logits_eos_inf=True),
                                      seed=11)[:2]
    i = next(i for i in range(len(full) // 2, len(full) - 2) if "\ufffd" not in full[i:i + 2])
    stop = full[i:i + 2]
    (cut, reason, _), streamed = both(stop=[stop, "never-there"])
    assert cut == full[:full.find(stop)] and reason == "stop"
    assert streamed[:2] == (cut, "stop")
    # without include_usage the stream ends at the stop string (its row leaves the run)
    chunks = list(call(**kw, stop=stop, stream=True))
    assert _stream_text(chunks, chat) == (cut, "stop", None)


def test_raw_sse_format(served):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # no stream_options.include_usage


def test_seed_reproducible_alone_and_batched(served):
    body = {"model": MODEL, "prompt": "Random words:", "max_tokens": 16, "temperature": 1.0,
            "seed": 1234, "extra_body": {"block_length": 8}}

    async def main():
        async with AsyncOpenAI(base_url=served.url + "/v1", api_key="unused",
                               max_retries=0) as ac:
            alone = await ac.completions.create(**body)
            together = await asyncio.gather(*[ac.completions.create(**body, user=str(i))
                                              for i in range(4)])
            return alone, together

    before = served.ae.stats()["batches"]
    alone, together = asyncio.run(main())
    assert {r.choices[0].text for r in together} == {alone.choices[0].text}
    assert served.ae.stats()["batches"] - before < 5  # the four ran batched


COMP = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
BAD = [  # (endpoint, change to a valid body, status, param, message fragment)
    ("completions", {"logprobs": 2}, 400, "logprobs", "logprobs"),
    ("completions", {"echo": True}, 400, "echo", "echo"),
    ("completions", {"best_of": 3}, 400, "best_of", "best_of"),
    ("completions", {"suffix": "end"}, 400, "suffix", "suffix"),
    ("completions", {"logit_bias": {"5": 1}}, 400, "logit_bias", "logit_bias"),
    ("completions", {"presence_penalty": 0.5}, 400, "presence_penalty", "presence_penalty"),
    ("chat", {"frequency_penalty": 1}, 400, "frequency_penalty", "frequency_penalty"),
    ("chat", {"logprobs": True}, 400, "logprobs", "logprobs"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "tools"),
    ("chat", {"n": 2}, 400, "n", "n=2"),
    ("completions", {"frobnicate": 1}, 400, "frobnicate", "frobnicate"),
    ("completions", {"steps": 0}, 400, "steps", "steps=0"),
    ("completions", {"max_tokens": 8, "block_length": 3}, 400, "max_tokens", "max_tokens=8"),
    ("completions", {"temperature": -1}, 400, "temperature", "temperature"),
    ("completions", {"cache": "bogus"}, 400, "cache", "cache"),
    ("completions", {"remasking": "sideways"}, 400, "remasking", "remasking"),
    ("completions", {"top_k": 5}, 400, "top_k", "top_k"),  # a Dream setting, LLaDA model
    ("completions", {"max_tokens": 0}, 400, "max_tokens", "max_tokens"),
    ("chat", {"max_completion_tokens": "many"}, 400, "max_completion_tokens", "max_comp"),
    ("completions", {"seed": -1}, 400, "seed", "seed"),
    ("completions", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "stop"),
    ("completions", {"stream_options": {"include_usage": True}}, 400, "stream_options",
     "stream"),
    ("completions", {"prompt": ["one", "two"]}, 400, "prompt", "one prompt"),
    ("completions", {"prompt": None}, 400, "prompt", "prompt"),
    ("completions", {"prompt": [1, 2, 99999]}, 400, "prompt", "vocabulary"),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role",
     "role"),
    ("chat", {"messages": []}, 400, "messages", "messages"),
    ("completions", {"model": "gpt-4o"}, 404, "model", "gpt-4o"),
    ("completions", {"prompt": [5] * 1000, "max_tokens": 100}, 400, "prompt",
     "maximum context length is 1024"),
    ("chat", {"messages": [{"role": "user", "content": "word " * 1200}]}, 400, "messages",
     "maximum context length"),
]


@pytest.mark.parametrize("endpoint,change,status,param,fragment", BAD,
                         ids=[f"{e}-{s}-{p}" for e, _, s, p, _ in BAD])
def test_bad_input(served, endpoint, change, status, param, fragment):
    body = {**(CHAT if endpoint == "chat" else COMP), **change}
    body = {k: v for k, v in body.items() if v is not None}
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    r = httpx.post(served.url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and fragment in err["message"], err
    if "context length" in fragment:
        assert err["code"] == "context_length_exceeded"
    valid_request_works(served.url)


@pytest.mark.parametrize("content,status,code", [
    (b"{not json", 400, "invalid_json"), (b"", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"), (b'{"model": "%s", "prompt": "%s"}' % (
        MODEL.encode(), b"x" * (1 << 20)), 413, "request_too_large")])
def test_bad_body(served, content, status, code):
    r = httpx.post(served.url + "/v1/completions", content=content,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    if status == 413:  # also without a content-length: counted while reading
        r = httpx.post(served.url + "/v1/completions", content=iter([content]), timeout=60)
        assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param",
                                                                   "code"}
    valid_request_works(served.url)


def test_framework_errors_use_the_error_body(served, client):
    for method, path, status in (("GET", "/v1/completions", 405), ("GET", "/v1/nope", 404),
                                 ("POST", "/nope", 404)):
        r = httpx.request(method, served.url + path)
        assert r.status_code == status and set(r.json()["error"]) == {"message", "type",
                                                                      "param", "code"}
    with pytest.raises(openai.BadRequestError, match="n=3"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, n=3)
    with pytest.raises(openai.NotFoundError, match="gpt-x"):
        client.completions.create(model="gpt-x", prompt="x", max_tokens=2)
    valid_request_works(served.url)


@pytest.fixture(scope="module")
def keyed(tiny_ckpt):
    yield from serve(tiny_ckpt, api_key="sekrit")


def test_api_key(keyed):
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/anything"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            r = httpx.post(keyed.url + path, json=COMP, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    good = OpenAI(base_url=keyed.url + "/v1", api_key="sekrit", max_retries=0)
    assert good.completions.create(**COMP).usage.completion_tokens <= 4
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/metrics").status_code == 200


@pytest.fixture(scope="module")
def tight(tiny_ckpt):
    yield from serve(tiny_ckpt, max_batch_size=1, max_wait_ms=0, max_queue=1)


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_overload_answers_429(tight):
    long = {"model": MODEL, "prompt": "busy", "max_tokens": 512, "stream": True}
    done = {}
    with httpx.stream("POST", tight.url + "/v1/completions", json=long, timeout=60):
        wait_for(lambda: tight.ae.stats()["running_batch_size"] == 1)
        waiting = threading.Thread(target=lambda: done.update(r=httpx.post(
            tight.url + "/v1/completions", json=COMP, timeout=60)))
        waiting.start()
        wait_for(lambda: tight.ae.stats()["queue_depth"] == 1)
        r = httpx.post(tight.url + "/v1/completions", json=COMP)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_overloaded"
    waiting.join(60)  # leaving the stream cancelled the long run: the queued one runs
    assert done["r"].status_code == 200
    valid_request_works(tight.url)
    wait_for(lambda: tight.ae.stats()["requests_cancelled"] == 1)


class _Enough(Exception):
    pass


def _first_block_has_text(solo, prompt, settings) -> bool:
    """Whether the streamed text is non-empty after block 0 (decoding stops there)."""
    gen = solo.resolve_config(GenerationConfig(**settings))
    seen = []

    def stop_after_block(run, block, step):
        seen.append(solo.tokenizer.decode(run.tokens()[0, :gen.block_length].tolist()))
        raise _Enough

    with pytest.raises(_Enough):
        solo.generate_ids([solo.encode(prompt)], gen, on_step=stop_after_block)
    return seen[0].rstrip("\ufffd") != ""


def test_load_32_concurrent_requests(served, solo):
    """32 concurrent requests, mixed stream / non-stream, completions / chat and settings; 4
    streams are dropped by their client after their first text. Every other answer equals its
    single run; /metrics counts them; the server answers /health afterwards."""
    groups = [  # (chat, settings, seeds?, stop)
        (False, dict(gen_length=16, block_length=8, temperature=0.8), True, None),
        (True, dict(gen_length=12), False, None),
        (False, dict(gen_length=8, block_length=4, threshold=0.7), True, ["e"]),
        (True, dict(gen_length=16, block_length=8, temperature=0.5, cache="dual"), True, None),
    ]
    sizes = [10, 8, 6, 4]
    jobs = []
    for (chat, settings, seeded, stop), n in zip(groups, sizes):
        for i in range(n):
            prompt = ([{"role": "user", "content": f"question {i}: " + "why " * i}] if chat
                      else f"request {i} " + "and " * (i % 5))
            jobs.append(dict(chat=chat, settings=settings, seed=100 + i if seeded else None,
                             stop=stop, prompt=prompt, stream=i % 2 == 1,
                             usage=i % 4 == 1 or stop is not None))
    drop = dict(gen_length=96, block_length=8, logits_eos_inf=True)
    drop_prompts = [p for p in (f"drop {i}" for i in range(12))
                    if _first_block_has_text(solo, p, drop)][:4]
    assert len(drop_prompts) == 4
    before = httpx.get(served.url + "/metrics").text
    stats0 = served.ae.stats()

    async def one(ac, job):
        extra = {k: v for k, v in job["settings"].items() if k != "gen_length"}
        kw = dict(model=MODEL, max_tokens=job["settings"]["gen_length"], seed=job["seed"],
                  stop=job["stop"], extra_body=extra)
        if job["chat"]:
            call, kw["messages"] = ac.chat.completions.create, job["prompt"]
        else:
            call, kw["prompt"] = ac.completions.create, job["prompt"]
        if not job["stream"]:
            r = await call(**kw)
            text = r.choices[0].message.content if job["chat"] else r.choices[0].text
            return text, r.choices[0].finish_reason, r.usage
        opts = {"include_usage": True} if job["usage"] else None
        chunks = [c async for c in await call(**kw, stream=True, stream_options=opts)]
        return _stream_text(chunks, job["chat"])

    async def dropped(ac, prompt):
        stream = await ac.completions.create(model=MODEL, prompt=prompt, max_tokens=96,
                                             stream=True, extra_body={"block_length": 8,
                                                                      "logits_eos_inf": True})
        async for c in stream:
            if c.choices and c.choices[0].text:
                break
        await stream.close()
        return "dropped"

    async def main():
        async with AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0,
                               timeout=120) as ac:
            tasks = [one(ac, j) for j in jobs] + [dropped(ac, p) for p in drop_prompts]
            return await asyncio.wait_for(asyncio.gather(*tasks), 180)

    t0 = time.monotonic()
    out = asyncio.run(main())
    assert time.monotonic() - t0 < 180
    for job, (text, reason, usage) in zip(jobs, out):
        want = expected(solo, job["prompt"], job["settings"], job["seed"] or 0,
                        job["stop"] or ())
        assert (text, reason) == want[:2], job
        if usage is not None:
            assert (usage.prompt_tokens, usage.completion_tokens) == want[2:], job
        else:
            assert job["stream"] and not job["usage"]
    # the 4 dropped rows left their run midway (no stream here ends early at a stop string:
    # those with a stop report usage, so they run to the end)
    wait_for(lambda: served.ae.stats()["requests_completed"] + served.ae.stats()[
        "requests_cancelled"] - stats0["requests_completed"] - stats0["requests_cancelled"]
        == 32)
    stats = served.ae.stats()
    assert stats["requests_cancelled"] - stats0["requests_cancelled"] == 4
    assert stats["requests_failed"] == stats0["requests_failed"]
    assert stats["batches"] - stats0["batches"] < 28  # requests were batched
    after = httpx.get(served.url + "/metrics").text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok = sum(delta("fastdiff_requests_total", endpoint=e, status="200")
             for e in ("completions", "chat"))
    wait_for(lambda: metric(httpx.get(served.url + "/metrics").text, "fastdiff_requests_total",
                            endpoint="completions", status="cancelled")
             - metric(before, "fastdiff_requests_total", endpoint="completions",
                      status="cancelled") == 4)
    assert ok == 28
    assert delta("fastdiff_generated_tokens_total") > 0 and delta("fastdiff_nfe_total") > 0
    assert delta("fastdiff_batch_size_count") == stats["batches"] - stats0["batches"]
    assert delta("fastdiff_queue_wait_seconds_count") == 32
    assert metric(after, "fastdiff_queue_depth") == 0
    assert httpx.get(served.url + "/health").status_code == 200
    valid_request_works(served.url)


def test_fastdiff_serve_cli(tiny_ckpt):
    """`fastdiff serve` in its own process: loopback by default, the folder name as model id,
    stops cleanly on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTDIFF_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "fastdiff.cli", "serve", "--model",
                             str(tiny_ckpt), "--port", str(port), "--device", "cpu",
                             "--log-level", "warning"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, timeout=90)
        c = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in c.models.list().data] == [tiny_ckpt.name]
        r = c.chat.completions.create(model=tiny_ckpt.name, messages=MSGS, max_tokens=4)
        assert r.model == tiny_ckpt.name and r.usage.completion_tokens <= 4
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn re-raises the signal it
    # caught after its graceful shutdown
    assert f"at http://127.0.0.1:{port}/v1" in out


# ----------------------------------------------------------------------------- Dream family


@pytest.fixture(scope="module")
def dream_ckpt(tmp_path_factory):
    from fastdiff import ModelConfig
    from fastdiff.models import save_random_checkpoint
    return save_random_checkpoint(tmp_path_factory.mktemp("dream") / "dream-tiny",
                                  ModelConfig.preset("dream-tiny"), seed=3, dtype=torch.float32)


def answers_like_solo(client, solo, extra, *, max_tokens, seed):
    """One completion with family settings as extra body fields; it must equal the in-process
    single run (text, finish_reason, usage). Returns the response."""
    r = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=max_tokens,
                                  seed=seed, extra_body=extra)
    text, reason, n_prompt, n_done = expected(solo, "def add(a, b):",
                                              dict(gen_length=max_tokens, **extra), seed=seed)
    assert r.choices[0].text == text, extra
    assert (r.choices[0].finish_reason, r.usage.prompt_tokens,
            r.usage.completion_tokens) == (reason, n_prompt, n_done)
    return r


def test_dream_checkpoint_served_with_its_own_settings(dream_ckpt):
    """A Dream checkpoint over the OpenAI routes: Dream's names (alg, alg_temp, top_p, top_k,
    steps) are extra body fields validated for the family, answers equal the in-process run,
    chat renders Dream's template, and LLaDA's remasking is a 400 naming the family."""
    solo = Engine.from_pretrained(dream_ckpt, device="cpu")
    for srv in serve(dream_ckpt, max_batch_size=4, max_wait_ms=5):
        c = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        cases = [dict(alg="entropy"), dict(alg="topk_margin", top_p=0.9, top_k=40, steps=8),
                 dict(alg="maskgit_plus", alg_temp=0.5, temperature=0.7)]
        for extra in cases:
            answers_like_solo(c, solo, extra, max_tokens=16, seed=5)
        chat = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=8, seed=1)
        msgs = solo.encode(MSGS)
        assert chat.usage.prompt_tokens == len(msgs)
        assert solo.tokenizer.decode(msgs).startswith("system\nAnswer briefly.")  # im_start/end
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="x", max_tokens=4,
                                 extra_body={"remasking": "random"})
        assert e.value.status_code == 400
        err = e.value.response.json()["error"]
        assert err["param"] == "remasking" and "dream family" in err["message"]
        valid_request_works(srv.url)


# ----------------------------------------------------------------------------- SDAR family


def test_sdar_checkpoint_served_with_its_own_settings(tmp_path_factory):
    """A block-diffusion (SDAR) checkpoint over the OpenAI routes: SDAR's names
    (denoising_steps, remasking low_confidence_dynamic, threshold, confidence) are extra body
    fields; answers equal the in-process run; completion_tokens never exceed max_tokens although
    whole blocks are decoded; `steps` (the total, LLaDA's / Dream's) is a 400 naming it."""
    from fastdiff import ModelConfig
    from fastdiff.models import save_random_checkpoint
    ckpt = save_random_checkpoint(tmp_path_factory.mktemp("sdar") / "sdar-tiny",
                                  ModelConfig.preset("sdar-tiny"), seed=5, dtype=torch.float32)
    solo = Engine.from_pretrained(ckpt, device="cpu")
    for srv in serve(ckpt, max_batch_size=4, max_wait_ms=5):
        c = OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for extra in (dict(stop_at_eos=False), dict(remasking="low_confidence_dynamic",
                                                    threshold=0.5, stop_at_eos=False),
                      dict(denoising_steps=2, block_length=8, stop_at_eos=False),
                      dict(temperature=0.9, top_k=30, confidence="filtered")):
            r = answers_like_solo(c, solo, extra, max_tokens=7, seed=2)
            assert r.usage.completion_tokens <= 7
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"steps": 4})
        err = e.value.response.json()["error"]
        assert err["param"] == "steps" and "denoising_steps" in err["message"]
        valid_request_works(srv.url)
