"""Load a local dLLM checkpoint folder (HF layout of its family: dllm-spec.md sections 2, 5).
Local files only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..ops import TorchOps
from .layouts import weight_shapes
from .tokenizer import EOT_TOKENS, Tokenizer
from .transformer import DLLMModel

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass
class Checkpoint:
    config: ModelConfig
    model: DLLMModel
    tokenizer: Optional[Tokenizer]
    path: Path


def _shard_files(path: Path) -> tuple[list[Path], dict[str, str]]:
    """The safetensors files of a folder and, when sharded, the index's name -> file map."""
    if (path / INDEX).is_file():
        with open(path / INDEX, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{path / INDEX} has no 'weight_map'; the index file is corrupt")
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) listed in {path / INDEX} are missing: {missing}")
        return files, weight_map
    if (path / SINGLE).is_file():
        return [path / SINGLE], {}
    raise FileNotFoundError(f"no weights in {path}: expected {SINGLE} or {INDEX} with its shards")


def load_weights(path: str | Path, config: ModelConfig, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read every tensor the model needs, checking names and shapes, converting to dtype."""
    path = Path(path)
    files, weight_map = _shard_files(path)
    expected = weight_shapes(config)
    out: dict[str, torch.Tensor] = {}
    bar = tqdm(files, desc="loading shards", unit="shard", disable=len(files) < 2)
    for file in bar:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    continue  # extra tensors (e.g. rotary buffers) are ignored
                if weight_map and weight_map.get(name) not in (None, file.name):
                    continue
                t = f.get_tensor(name)
                if tuple(t.shape) != expected[name]:
                    raise ValueError(f"tensor {name} in {file.name} has shape {tuple(t.shape)}, "
                                     f"expected {expected[name]} from config.json")
                if not (t.is_floating_point()):
                    raise ValueError(f"tensor {name} in {file.name} has dtype {t.dtype}; "
                                     "expected a floating-point weight")
                out[name] = t.to(device=device, dtype=dtype)
    missing = [n for n in expected if n not in out]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint {path} lacks tensor(s) {missing[:5]}{more}")
    return out


def read_config(path: Path) -> ModelConfig:
    """config.json (+ generation_config.json's stop ids and the tokenizer's mask token where a
    block-diffusion family needs them) -> ModelConfig. SDAR-8B-Chat's config.json lacks
    mask_token_id and block_size: the mask comes from tokenizer_config.json's mask_token, the
    block length defaults to 4 with a warning."""
    from ..config import SDAR_DEFAULT_BLOCK, detect_family
    source = path / "config.json"
    try:
        with open(source, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON: {e}") from None
    if detect_family(raw, str(source)) == "sdar":
        gen_cfg = path / "generation_config.json"
        if gen_cfg.is_file() and "stop_token_ids" not in raw:
            with open(gen_cfg, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token_id")
            raw["stop_token_ids"] = [eos] if isinstance(eos, int) else list(eos or [])
        if raw.get("mask_token_id") is None:
            tok = Tokenizer.from_dir(path)
            if tok is not None and tok.mask_token and tok.token_to_id(tok.mask_token) is not None:
                raw["mask_token_id"] = tok.token_to_id(tok.mask_token)
        if raw.get("block_size") is None:
            import warnings
            warnings.warn(f"{source} has no block_size (SDAR-8B-Chat's lacks it): block_length "
                          f"defaults to {SDAR_DEFAULT_BLOCK}; pass block_length to choose",
                          stacklevel=3)
    return ModelConfig.from_dict(raw, source=str(source))


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, ops=None) -> Checkpoint:
    """config.json + weights (+ tokenizer when present) -> Checkpoint with a ready model."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist (fastdiff reads local "
                                "folders only; download the model first)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a model checkpoint folder?")
    config = read_config(path)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype} is not supported; use torch.float32, float16 or bfloat16")
    weights = load_weights(path, config, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_dir(path, eot_token=EOT_TOKENS[config.family])
    if tokenizer is not None:
        for name, tid in (("mask_token_id", config.mask_token_id),
                          ("eos_token_id", config.eos_token_id)):
            if tokenizer.token_to_id(tokenizer._tok.id_to_token(tid) or "") != tid:
                raise ValueError(f"config.json's {name}={tid} is not a token of tokenizer.json")
    return Checkpoint(config, DLLMModel(config, weights, ops or TorchOps()), tokenizer, path)
