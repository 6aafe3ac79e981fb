"""OpenAI request parsing and validation (-> one ParsedRequest), response and chunk bodies,
error bodies. No web framework here: plain dicts in, plain dicts out, APIError raised."""
from __future__ import annotations

import dataclasses
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import GenerationConfig

DEFAULT_MAX_TOKENS = 128
# GenerationConfig fields a request may not set (resolve() fills them)
INTERNAL_FIELDS = {"family"}
# OpenAI fields fastdiff does not implement -> the values that mean "not used"
UNSUPPORTED = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None,), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None,), "response_format": (None, {"type": "text"}),
    "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "top_p": (None, 1, 1.0),
}
IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "n", "stop", "seed"}
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (status, message, param,
                                                                        code, type)

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _bad(param: str, message: str, code: Optional[str] = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class ParsedRequest:
    """One validated request: what to run (prompt, chat, settings, seed) and how to answer."""

    prompt: Any  # str | list[int] | chat messages
    chat: bool
    settings: dict  # GenerationConfig fields (not yet resolved)
    seed: Optional[int]
    stream: bool
    include_usage: bool
    stops: list[str] = field(default_factory=list)
    request_names: dict = field(default_factory=dict)  # GenerationConfig field -> request name

    def rename(self, message: str) -> str:
        """A settings error in the request's own names (gen_length -> max_tokens)."""
        for name, given in self.request_names.items():
            message = re.sub(rf"\b{name}\b", given, message)
        return message

    def param(self, message: str) -> Optional[str]:
        """The request field a ValueError message ("steps=0 is invalid: ...") is about."""
        m = re.match(r"\s*(\w+)\s*=", message)
        if m is None:
            return None
        return self.request_names.get(m.group(1), m.group(1))


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(GenerationConfig)} - INTERNAL_FIELDS


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (0 == 0.0), never a bool for a number."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse(body: Any, *, chat: bool, model_id: str) -> ParsedRequest:
    """A /v1/completions (chat=False) or /v1/chat/completions body -> ParsedRequest; APIError
    (400, naming the field; 404 for another model) otherwise."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    config_fields = _config_fields()
    prompt_key = "messages" if chat else "prompt"
    known = COMMON | IGNORED | set(UNSUPPORTED) | config_fields | {prompt_key} | (
        {"max_completion_tokens"} if chat else set())
    for name in body:
        if name not in known:
            raise _bad(name, f"Unrecognized request argument supplied: {name}",
                       code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "you must provide a model parameter (a string)", code="missing")
    if model != model_id:
        raise APIError(404, f"The model `{model}` does not exist; this server serves "
                       f"`{model_id}`", param="model", code="model_not_found")
    for name, neutral in UNSUPPORTED.items():
        if name in body and name not in config_fields and not any(
                _same(body[name], v) for v in neutral):
            raise _bad(name, f"{name} is not supported by fastdiff (got {body[name]!r})",
                       code="unsupported_parameter")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise _bad("n", f"n={n!r} is not supported: fastdiff returns exactly one choice (n=1)",
                   code="unsupported_parameter")
    prompt = _messages(body.get("messages")) if chat else _prompt(body.get("prompt"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", f"stream must be true or false, got {stream!r}")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
                options.get("include_usage", False), bool):
            raise _bad("stream_options", "stream_options must be {\"include_usage\": bool}")
        include_usage = options.get("include_usage", False)
    settings, names = _settings(body, chat, config_fields)
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise _bad("seed", f"seed={seed!r} is invalid: must be an integer in [0, 2**63)")
    return ParsedRequest(prompt, chat, settings, seed, bool(stream), include_usage,
                         _stops(body.get("stop")), names)


def _settings(body: dict, chat: bool, config_fields: set[str]) -> tuple[dict, dict]:
    """GenerationConfig fields from the body, and how the request named them."""
    settings = {k: body[k] for k in config_fields - {"gen_length", "seed"}
                if body.get(k) is not None}
    if _same(settings.get("top_p"), 1):  # no nucleus filter, in every family: OpenAI clients
        del settings["top_p"]  # send it by default, and LLaDA has no top_p setting
    names: dict[str, str] = {}
    lengths = [(k, body[k]) for k in (("max_completion_tokens", "max_tokens") if chat else
                                      ("max_tokens",)) + ("gen_length",)
               if body.get(k) is not None]
    for name, v in lengths:
        if not _is_int(v) or v < 1:
            raise _bad(name, f"{name}={v!r} is invalid: expected an integer >= 1")
    if len({v for _, v in lengths}) > 1:
        raise _bad(lengths[1][0], f"{lengths[0][0]} and {lengths[1][0]} disagree "
                   f"({lengths[0][1]} vs {lengths[1][1]}); give one")
    names["gen_length"] = lengths[0][0] if lengths else "max_tokens"
    settings["gen_length"] = lengths[0][1] if lengths else DEFAULT_MAX_TOKENS
    return settings, names


def _prompt(p: Any) -> Any:
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]  # one prompt in a list
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and all(_is_int(t) for t in p):
        return p
    if p is None:
        raise _bad("prompt", "prompt is required", code="missing")
    raise _bad("prompt", "prompt must be a string, a list of token ids, or a list holding one "
               "of them (fastdiff answers one prompt per request)")


def _messages(msgs: Any) -> list[dict]:
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "messages must be a non-empty list of {role, content} objects",
                   code="missing" if msgs is None else "invalid_value")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"{where}.role", f"{where} must be an object with a role in "
                       f"{list(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and
                       isinstance(p.get("text"), str) for p in content):
                raise _bad(f"{where}.content", f"{where}.content parts must be text parts "
                           "({\"type\": \"text\", \"text\": ...}); other kinds are not supported")
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad(f"{where}.content", f"{where}.content must be a string")
        unsupported = sorted(set(m) & {"tool_calls", "function_call", "audio", "tool_call_id"})
        if unsupported:
            raise _bad(f"{where}.{unsupported[0]}", f"{where}.{unsupported[0]} is not supported",
                       code="unsupported_parameter")
        out.append({"role": m["role"], "content": content})
    return out


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) \
            or len(stops) > 4:
        raise _bad("stop", "stop must be a non-empty string or a list of up to 4 of them")
    return stops


# ---------------------------------------------------------------------------- text and stops
def find_stop(text: str, stops: list[str]) -> Optional[int]:
    """Index of the first occurrence of any stop string, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class DeltaTracker:
    """Turns successive committed-prefix texts into deltas that concatenate exactly to the final
    text: trailing U+FFFD (an incomplete UTF-8 sequence) and any tail that could start a stop
    string are held back until resolved; the text is cut before the first stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.sent, self.stopped = stops, "", False

    def update(self, text: Optional[str], final: bool) -> str:
        text = text or ""
        safe = text if final else text.rstrip("\ufffd")
        cut = find_stop(safe, self.stops)
        if cut is not None:
            safe, self.stopped = safe[:cut], True
        elif not final:
            hold = max((k for s in self.stops for k in range(1, len(s))
                        if safe.endswith(s[:k])), default=0)
            safe = safe[:len(safe) - hold]
        if not safe.startswith(self.sent):  # a decoder that rewrote its past: nothing sendable
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta


def final_text(text: Optional[str], stops: list[str]) -> tuple[str, bool]:
    """(text cut before the first stop string, whether a stop string cut it)."""
    text = text or ""
    cut = find_stop(text, stops)
    return (text, False) if cut is None else (text[:cut], True)


# ---------------------------------------------------------------------------- bodies
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


def finish_reason(engine_reason: str, stopped: bool) -> str:
    return "stop" if stopped or engine_reason == "eos" else "length"


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_body(req_id: str, chat: bool, model: str, text: str, reason: str,
                  usage: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return {"id": req_id, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}


def chunk_body(req_id: str, chat: bool, model: str, created: int, *, text: Optional[str] = None,
               role: bool = False, reason: Optional[str] = None, usage: Any = False) -> dict:
    """One stream chunk; usage=False: no usage key, None: "usage": null, dict: the usage chunk
    (no choices)."""
    body = {"id": req_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": model}
    if isinstance(usage, dict):
        body["choices"] = []
    elif chat:
        delta = {"role": "assistant", "content": ""} if role else (
            {} if text is None else {"content": text})
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": reason}]
    else:
        body["choices"] = [{"index": 0, "text": text or "", "logprobs": None,
                            "finish_reason": reason}]
    if usage is not False:
        body["usage"] = usage
    return body
