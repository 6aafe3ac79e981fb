"""Package data: the bundled demo model (trained by tools/train_demo.py; see its MODEL_CARD.md)."""
from __future__ import annotations

from pathlib import Path

_DEMO = Path(__file__).resolve().parent / "demo"
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def demo_model_path() -> Path:
    """The folder of the bundled demo checkpoint (config.json, model.safetensors, tokenizer)."""
    missing = [name for name in _FILES if not (_DEMO / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the bundled demo model is incomplete: {missing} missing from {_DEMO}. It ships as "
            "package data (fastdiff/assets/demo); reinstall fastdiff, or rebuild it with "
            "`python tools/train_demo.py train && python tools/train_demo.py card`, or pass "
            "--model PATH to a LLaDA checkpoint folder")
    return _DEMO
