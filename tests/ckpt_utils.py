"""Writing hand-made checkpoints in the HF sharded layout (tests of the loaders)."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file


def write_two_shards(path: Path, W: dict) -> None:
    """W (name -> bf16 tensor) as two safetensors shards plus model.safetensors.index.json."""
    names = sorted(W)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for fname, group in shards.items():
        save_file({n: W[n] for n in group}, str(path / fname), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * 2 for t in W.values())},
             "weight_map": {n: f for f, group in shards.items() for n in group}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
