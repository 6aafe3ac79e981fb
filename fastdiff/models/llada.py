"""LLaDA (dllm-spec.md section 2): the one transformer with LLaDA's tensor names."""
from __future__ import annotations

from .layouts import LLADA, weight_shapes
from .transformer import DLLMModel, Layer, LLaDAModel

PREFIX = "model.transformer."

__all__ = ["DLLMModel", "LLADA", "LLaDAModel", "Layer", "PREFIX", "weight_shapes"]
