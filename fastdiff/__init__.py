"""fastdiff: a fast decoding engine for diffusion language models (LLaDA)."""
from .config import GenerationConfig, ModelConfig
from .engine import Completion, Engine
from .serving import AsyncEngine

__version__ = "0.1.0"
__all__ = ["AsyncEngine", "Completion", "Engine", "GenerationConfig", "ModelConfig", "__version__"]
