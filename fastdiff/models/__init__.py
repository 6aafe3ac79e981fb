"""Models, the checkpoint loader and the random-checkpoint writer."""
from .layouts import layout, weight_shapes
from .loader import Checkpoint, load_checkpoint, load_weights
from .tokenizer import Tokenizer
from .transformer import DLLMModel, LLaDAModel
from .writer import build_tokenizer, random_weights, save_random_checkpoint

__all__ = ["Checkpoint", "DLLMModel", "LLaDAModel", "Tokenizer", "build_tokenizer", "layout",
           "load_checkpoint", "load_weights", "random_weights", "save_random_checkpoint",
           "weight_shapes"]
