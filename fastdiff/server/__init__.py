"""The OpenAI-compatible HTTP server (the `server` extra: fastapi, uvicorn, prometheus-client):
build_app(async_engine, model_id=...) is the one app factory every launcher uses. Imported on
first use, so `fastdiff --help` and fastdiff.server.main's flags work without the extra."""
from __future__ import annotations

__all__ = ["build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from .app import build_app
        return build_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
