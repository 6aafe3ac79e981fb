"""The OpenAI-compatible HTTP app: one factory, build_app, used by every launcher (`fastdiff
serve`, the Ray Serve ingress). Routes know no kernels and no Engine: they talk to an
EngineClient (an AsyncEngine, or anything with the same six methods)."""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Optional, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..serving import ContextLengthError, OverloadedError
from . import protocol as P
from .metrics import Metrics

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REPLICA_HEADER = "x-fastdiff-replica"


class EngineUnavailableError(RuntimeError):
    """The engine behind an EngineClient is gone (a replica died mid-request, none answered in
    time): a 503; a stream that already started ends with an error event and no [DONE]."""


class EngineClient(Protocol):
    """What the routes need from the engine side (AsyncEngine implements it). Optional, for
    remote engines (fastdiff.server.ray_client): stream() may return an object with
    `async ready()`, awaited before the response starts (its errors are answered like
    generate's); results, streams and raised errors may carry `replica` (str), sent as the
    x-fastdiff-replica header; stats() may hold `replicas` (live engine replicas, in /health)
    and `replica_retries`."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def make_config(self, **fields: Any) -> Any: ...
    async def generate(self, prompt, config=None, *, chat=False, seed=None) -> Any: ...
    def stream(self, prompt, config=None, *, chat=False, seed=None) -> AsyncIterator[Any]: ...
    def stats(self) -> dict: ...


class _SSEResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator and the request's stream
    (client gone or not, body started or not), so the row is cancelled at once rather than
    when the generator is collected."""

    def __init__(self, content, *, on_close, **kw) -> None:
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self.on_close()


class _Auth:
    """ASGI middleware: every /v1 route needs `Authorization: Bearer <api_key>` (401 else)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/v1" or
                                        scope["path"].startswith("/v1/")):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(),
                                                                        self.key):
                msg = ("Missing API key: send the header 'Authorization: Bearer <key>'"
                       if not auth else "Incorrect API key provided")
                resp = JSONResponse(P.error_body(msg, "invalid_request_error", None,
                                                 "invalid_api_key"), status_code=401)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 413 past `limit` bytes (checked while reading), 400 if not JSON."""
    too_big = P.APIError(413, f"the request body exceeds the server's limit of {limit} bytes",
                         code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON: {e}",
                         code="invalid_json") from None


async def _unless_disconnected(request: Request, work) -> Any:
    """await work, or cancel it and return None once the client disconnects (the body has been
    read, so the next ASGI message is the disconnect)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # the generate coroutine cancels its row
    return task.result() if task.done() and not task.cancelled() else None


def _engine_error(e: Exception, req: P.ParsedRequest) -> P.APIError:
    """An error raised by make_config / generate / stream -> the answer the client gets."""
    where = "messages" if req.chat else "prompt"
    if isinstance(e, ContextLengthError):
        return P.APIError(400, f"This model's maximum context length is {e.max_len} tokens. "
                          f"However, you requested {e.prompt_tokens + e.gen_length} tokens "
                          f"({e.prompt_tokens} in the {where}, {e.gen_length} for the "
                          f"completion). Please reduce the length of the {where} or "
                          f"{req.request_names['gen_length']}.", param=where,
                          code="context_length_exceeded")
    if isinstance(e, OverloadedError):
        return P.APIError(429, str(e), code="server_overloaded", type="overloaded_error")
    if isinstance(e, EngineUnavailableError):
        return P.APIError(503, str(e), code="engine_unavailable", type="server_error")
    if isinstance(e, ValueError):
        return P.APIError(400, req.rename(str(e)), param=req.param(str(e)) or where,
                          code="invalid_value")
    return P.APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")


def _served_by(obj: Any) -> dict:
    """The x-fastdiff-replica header of a result, stream or error that names its replica."""
    replica = getattr(obj, "replica", None)
    return {REPLICA_HEADER: replica} if replica else {}


def build_app(async_engine: EngineClient, *, model_id: str, api_key: Optional[str] = None,
              max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving `async_engine` as model `model_id`; its lifespan starts and
    closes the engine. With api_key every /v1 route needs it as a bearer token."""
    if max_body_bytes < 1024 * 1024:
        raise ValueError(f"max_body_bytes={max_body_bytes} is invalid: expected >= 1 MiB")
    engine = async_engine
    metrics = Metrics(engine.stats)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        yield
        await engine.close()

    app = FastAPI(title="fastdiff", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    if api_key:
        app.add_middleware(_Auth, api_key=api_key)

    @app.exception_handler(P.APIError)
    async def _api_error(request: Request, e: P.APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else {}
        return JSONResponse(e.body(), status_code=e.status,
                            headers={**headers, **_served_by(e.__cause__)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        err = (e.errors() or [{}])[0]
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        return JSONResponse(P.error_body(err.get("msg", "invalid request"), param=".".join(loc)
                                         or None, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(P.error_body(str(e.detail), "invalid_request_error" if
                                         e.status_code < 500 else "server_error", None, code),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "fastdiff"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        if model != model_id:
            raise P.APIError(404, f"The model `{model}` does not exist", param="model",
                             code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health() -> Response:
        stats = engine.stats()
        ok = stats.get("worker_alive", True)
        body = {"status": "ok" if ok else "engine stopped"}
        if "replicas" in stats:
            body["replicas"] = stats["replicas"]
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def complete(request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        endpoint = "chat" if chat else "completions"
        status = "500"
        try:
            req = P.parse(await _read_json(request, max_body_bytes), chat=chat,
                          model_id=model_id)
            try:
                gen = engine.make_config(**req.settings)
                if req.stream:
                    stream = engine.stream(req.prompt, gen, chat=chat, seed=req.seed)
                    if hasattr(stream, "ready"):  # a remote engine: accepted, or raises here
                        await stream.ready()
                    status = "stream"
                    return _SSEResponse(_sse(stream, req, t0), on_close=stream.aclose,
                                        headers={**SSE_HEADERS, **_served_by(stream)},
                                        media_type="text/event-stream")
                result = await _unless_disconnected(
                    request, engine.generate(req.prompt, gen, chat=chat, seed=req.seed))
            except Exception as e:
                raise _engine_error(e, req) from e
            if result is None:  # the client left: its row was cancelled
                status = "cancelled"
                return Response(status_code=499)
            text, stopped = P.final_text(result.text, req.stops)
            metrics.usage(result.usage())
            status = "200"
            return JSONResponse(P.response_body(
                P.new_id(chat), chat, model_id, text, P.finish_reason(result.finish_reason,
                                                                      stopped),
                P.usage_body(result.prompt_tokens, result.completion_tokens)),
                headers=_served_by(result))
        except P.APIError as e:
            status = str(e.status)
            raise
        finally:
            if status != "stream":  # a stream records itself when it ends
                metrics.finished(endpoint, status, time.perf_counter() - t0)

    async def _sse(stream, req: P.ParsedRequest, t0: float) -> AsyncIterator[str]:
        chat, endpoint = req.chat, "chat" if req.chat else "completions"
        rid, created_at = P.new_id(chat), int(time.time())
        usage_flag = None if req.include_usage else False  # "usage": null on every chunk

        def event(**kw) -> str:
            return "data: " + json.dumps(P.chunk_body(rid, chat, model_id, created_at, **kw)) \
                + "\n\n"

        tracker, first, finished, status = P.DeltaTracker(req.stops), True, False, "cancelled"
        try:
            if chat:
                yield event(role=True, usage=usage_flag)
            async for ev in stream:
                if not finished:
                    delta = tracker.update(ev.text, final=ev.done)
                    if delta:
                        if first:
                            metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
                            first = False
                        yield event(text=delta, usage=usage_flag)
                    if tracker.stopped or ev.done:
                        reason = P.finish_reason(ev.finish_reason or "length", tracker.stopped)
                        yield event(reason=reason, usage=usage_flag)
                        finished = True
                        if not req.include_usage:
                            break  # a stop string: the row leaves the run
                if ev.done:
                    metrics.usage(ev.usage)
                    if req.include_usage:
                        yield event(usage=P.usage_body(ev.usage["prompt_tokens"],
                                                       ev.usage["completion_tokens"]))
                    break
            yield "data: [DONE]\n\n"
            status = "200"
        except EngineUnavailableError as e:  # the replica died: an error, and no [DONE]
            status = "503"
            yield "data: " + json.dumps(P.error_body(str(e), "server_error", None,
                                                     "engine_unavailable")) + "\n\n"
        except Exception as e:  # the run failed after the stream started
            status = "500"
            yield "data: " + json.dumps(P.error_body(f"generation failed: {e}",
                                                     "server_error")) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await stream.aclose()
            metrics.finished(endpoint, status, time.perf_counter() - t0)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    return app
