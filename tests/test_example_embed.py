"""examples/embed_fastapi.py: the AsyncEngine in someone else's FastAPI app (its own routes and
lifespan), through FastAPI's TestClient and an httpx ASGI client with concurrent requests."""
import asyncio
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from fastdiff import Engine  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embed_fastapi.py"
TEXTS = ["def add(a, b): return a + b", "x = [i * i for i in range(10)]", "print('hi')"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("embed_fastapi", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def solo(tiny_ckpt, example):
    """Each text's summary from a separate Engine, alone (the same seed, 0)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = Engine.from_pretrained(tiny_ckpt)
    yield {t: engine.generate(example.make_prompt(t), gen_length=16, seed=0)[0] for t in TEXTS}
    torch.set_num_threads(n)


def test_routes_and_lifespan(tiny_ckpt, example, solo):
    app = example.create_app(str(tiny_ckpt), max_batch_size=4, max_wait_ms=1)
    with TestClient(app) as client:  # runs the app's lifespan: the engine starts
        r = client.post("/summarize", json={"text": TEXTS[0], "max_tokens": 16})
        assert r.status_code == 200, r.text
        want = solo[TEXTS[0]]
        assert r.json() == {"summary": want.text, "finish_reason": want.finish_reason,
                            "tokens": len(want.token_ids), "forwards": want.nfe}
        s = client.post("/summarize/stream", json={"text": TEXTS[0], "max_tokens": 16})
        assert s.status_code == 200 and s.text == want.text  # the deltas add up to the text
        bad = client.post("/summarize", json={"text": TEXTS[0], "max_tokens": 0})
        assert bad.status_code == 400 and "gen_length=0" in bad.json()["detail"]
        assert client.post("/summarize", json={"text": ""}).status_code == 422  # their model
        health = client.get("/healthz").json()
        assert health["worker_alive"] and health["requests_completed"] == 2
        llm = app.state.llm
    assert not llm.stats()["worker_alive"]  # the lifespan closed it


def test_concurrent_requests_batch_and_match_solo_runs(tiny_ckpt, example, solo):
    app = example.create_app(str(tiny_ckpt), max_batch_size=4, max_wait_ms=200)

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://embed") as c:
                rs = await asyncio.gather(*[c.post("/summarize", json={"text": t,
                                                                       "max_tokens": 16})
                                            for t in TEXTS])
                return [r.json() for r in rs], app.state.llm.stats()

    bodies, stats = asyncio.run(go())
    assert [b["summary"] for b in bodies] == [solo[t].text for t in TEXTS]
    assert stats["batches"] < len(TEXTS)  # some of them shared a run
