"""The denoising loop, its state, and the scoring / unmasking policies it consults."""
from .loop import denoise
from .policies import Scorer, TopKSchedule
from .state import DecodeState

__all__ = ["DecodeState", "Scorer", "TopKSchedule", "denoise"]
