"""fastdiff's AsyncEngine inside your own FastAPI app: your routes, your lifespan.

    pip install 'fastdiff-llm[server]'      # fastapi + uvicorn
    python examples/embed_fastapi.py --model DIR [--port 8001]
    curl -s localhost:8001/summarize -H 'content-type: application/json' \\
         -d '{"text": "def add(a, b): return a + b", "max_tokens": 32}'
    curl -sN localhost:8001/summarize/stream -H 'content-type: application/json' \\
         -d '{"text": "def add(a, b): return a + b"}'

The app owns one AsyncEngine: its lifespan starts it (a worker thread that owns the model)
and closes it on shutdown. Concurrent requests with equal settings are batched into one
denoising run, and every answer equals the one the request would get alone (same seed)."""

import argparse
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from fastdiff import AsyncEngine
from fastdiff.serving import OverloadedError

INSTRUCTION = "# Summary of the code below, in one line.\n"


class SummarizeRequest(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    max_tokens: int = 64
    seed: Optional[int] = 0  # fixed: the same text gets the same summary


def make_prompt(text: str) -> str:
    return f"{INSTRUCTION}{text}\n# Summary:"


def create_app(model_dir: str, *, max_batch_size: int = 8, max_wait_ms: float = 5.0,
               **engine_kwargs) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        llm = AsyncEngine.from_pretrained(model_dir, max_batch_size=max_batch_size,
                                          max_wait_ms=max_wait_ms, **engine_kwargs)
        async with llm:  # start() now, close() at shutdown
            app.state.llm = llm
            yield

    app = FastAPI(title="summarizer", lifespan=lifespan)

    def config_for(request: Request, body: SummarizeRequest):
        try:  # validated by the same code as fastdiff's Python API and server
            return request.app.state.llm.make_config(gen_length=body.max_tokens)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

    @app.post("/summarize")
    async def summarize(body: SummarizeRequest, request: Request) -> dict:
        llm: AsyncEngine = request.app.state.llm
        config = config_for(request, body)
        try:
            result = await llm.generate(make_prompt(body.text), config, seed=body.seed)
        except OverloadedError as e:
            raise HTTPException(status_code=503, detail=str(e)) from None
        except ValueError as e:  # e.g. prompt + max_tokens over the context length
            raise HTTPException(status_code=400, detail=str(e)) from None
        return {"summary": result.text, "finish_reason": result.finish_reason,
                "tokens": result.completion_tokens, "forwards": result.nfe}

    @app.post("/summarize/stream")
    async def summarize_stream(body: SummarizeRequest, request: Request) -> StreamingResponse:
        """Plain-text deltas as the committed prefix grows. A client that disconnects closes
        the generator, which cancels its row without disturbing the batch."""
        llm: AsyncEngine = request.app.state.llm
        config = config_for(request, body)
        try:  # stream() queues the request now, so a bad prompt or a full queue raises here
            events = llm.stream(make_prompt(body.text), config, seed=body.seed)
        except OverloadedError as e:
            raise HTTPException(status_code=503, detail=str(e)) from None
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None

        async def deltas() -> AsyncIterator[str]:
            sent = ""
            async with events:
                async for ev in events:  # ev.text: the committed prefix, decoded
                    text = ev.text or ""
                    if not ev.done:  # an incomplete UTF-8 character may still change
                        text = text.rstrip("\ufffd")
                    if text.startswith(sent) and len(text) > len(sent):
                        yield text[len(sent):]
                        sent = text

        return StreamingResponse(deltas(), media_type="text/plain; charset=utf-8")

    @app.get("/healthz")
    async def healthz(request: Request) -> dict:
        return {"ok": True, **request.app.state.llm.stats()}

    return app


def main() -> None:
    import uvicorn
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="local checkpoint folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(create_app(args.model), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
