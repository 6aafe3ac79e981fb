"""Models, the checkpoint loader and the random-checkpoint writer."""
from .llada import LLaDAModel, weight_shapes
from .loader import Checkpoint, load_checkpoint, load_weights
from .tokenizer import Tokenizer
from .writer import build_tokenizer, random_weights, save_random_checkpoint

__all__ = ["Checkpoint", "LLaDAModel", "Tokenizer", "build_tokenizer", "load_checkpoint",
           "load_weights", "random_weights", "save_random_checkpoint", "weight_shapes"]
