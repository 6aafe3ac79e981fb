"""fastdiff: a fast decoding engine for diffusion language models (LLaDA)."""
from .config import GenerationConfig, ModelConfig
from .engine import Completion, Engine

__version__ = "0.1.0"
__all__ = ["Completion", "Engine", "GenerationConfig", "ModelConfig", "__version__"]
