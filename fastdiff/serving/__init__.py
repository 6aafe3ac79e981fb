"""Serving without HTTP: AsyncEngine, an asyncio front for one Engine (no web dependencies)."""
from .async_engine import (AsyncEngine, ContextLengthError, GenerationResult, OverloadedError,
                           StreamEvent)

__all__ = ["AsyncEngine", "ContextLengthError", "GenerationResult", "OverloadedError",
           "StreamEvent"]
