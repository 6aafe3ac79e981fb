"""Frozen, validated configuration: the model's shape (ModelConfig) and a request's decoding
settings (GenerationConfig). Semantics: shared/docs/dllm-spec.md sections 2-3."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    """A LLaDA-architecture model (dllm-spec.md section 2). Token ids come from the checkpoint."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    vocab_size: int
    n_kv_heads: Optional[int] = None  # None = n_heads (MHA)
    embedding_size: Optional[int] = None  # None = vocab_size
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: Optional[int] = None  # None = eos_token_id
    model_type: str = "llada"

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size",
                     "max_sequence_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(name, v, "expected a positive integer")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.vocab_size)
        if self.pad_token_id is None:
            object.__setattr__(self, "pad_token_id", self.eos_token_id)
        if self.model_type != "llada":
            _fail("model_type", self.model_type, "fastdiff loads 'llada' checkpoints")
        if self.d_model % self.n_heads:
            _fail("n_heads", self.n_heads, f"must divide d_model={self.d_model}")
        if self.head_dim % 2:
            _fail("d_model", self.d_model, "head_dim = d_model / n_heads must be even for RoPE")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads}")
        if self.embedding_size < self.vocab_size:
            _fail("embedding_size", self.embedding_size, f"must be >= vocab_size={self.vocab_size}")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if not 0 <= v < self.embedding_size:
                _fail(name, v, f"must be a token id in [0, {self.embedding_size})")
        if self.mask_token_id == self.eos_token_id:
            _fail("mask_token_id", self.mask_token_id, "must differ from eos_token_id")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            _fail("rope_theta/rms_norm_eps", (self.rope_theta, self.rms_norm_eps), "must be > 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # --- HF config.json --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: dict) -> "ModelConfig":
        mt = cfg.get("model_type")
        if mt != "llada":
            raise ValueError(
                f"unsupported model_type {mt!r}: fastdiff loads LLaDA checkpoints (model_type "
                f"'llada'); Dream and other families are not supported yet")
        checks = {"rope": True, "weight_tying": False, "include_bias": False,
                  "include_qkv_bias": False, "block_type": "llama", "activation_type": "silu",
                  "layer_norm_type": "rms"}
        for key, want in checks.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"config.json has {key}={cfg[key]!r}; fastdiff supports only "
                                 f"{key}={want!r} (the LLaDA-8B architecture)")
        missing = [k for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size",
                               "mask_token_id", "eos_token_id") if cfg.get(k) is None]
        if missing:
            raise ValueError(f"config.json lacks required keys {missing}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(architectures=["LLaDAModelLM"], rope=True, weight_tying=False,
                 include_bias=False, include_qkv_bias=False, block_type="llama",
                 activation_type="silu", layer_norm_type="rms")
        return d

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        presets = {
            # Small presets put MASK/EOS at non-LLaDA ids near the top of their vocabulary.
            "tiny": dict(d_model=128, n_heads=4, n_layers=2, mlp_hidden_size=256, vocab_size=1024,
                         max_sequence_length=1024, mask_token_id=1020, eos_token_id=1017,
                         rope_theta=10000.0),
            "small": dict(d_model=256, n_heads=4, n_layers=4, mlp_hidden_size=688,
                          vocab_size=4096, max_sequence_length=2048, mask_token_id=4092,
                          eos_token_id=4089, rope_theta=10000.0),
            "llada-8b": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32,
                             mlp_hidden_size=12288, vocab_size=126464, embedding_size=126464,
                             rope_theta=500000.0, rms_norm_eps=1e-5, max_sequence_length=4096,
                             mask_token_id=126336, eos_token_id=126081, pad_token_id=126081),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request decoding settings; defaults are LLaDA's `generate` (dllm-spec.md section 3)."""

    gen_length: int = 128
    steps: int = 128
    block_length: int = 128
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    seed: Optional[int] = None
    # Fast-dLLM (dllm-spec.md section 4)
    cache: str = "none"
    threshold: Optional[float] = None
    factor: Optional[float] = None
    stop_at_eos: bool = False

    def __post_init__(self) -> None:
        for name in ("gen_length", "steps", "block_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(name, v, "expected a positive integer")
        if self.gen_length % self.block_length:
            _fail("gen_length", self.gen_length,
                  f"must be a multiple of block_length={self.block_length}")
        self._check_parallel()
        if self.uses_steps:  # with a threshold or a factor, steps is not used
            if self.steps > self.gen_length:
                _fail("steps", self.steps, f"must be <= gen_length={self.gen_length} "
                      "(each step commits at least one token)")
            if self.steps % self.num_blocks:
                _fail("steps", self.steps, f"must be a multiple of the number of blocks "
                      f"gen_length/block_length={self.num_blocks}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            _fail("temperature", self.temperature, "must be a number >= 0 (0 = greedy)")
        if not isinstance(self.cfg_scale, (int, float)) or not self.cfg_scale >= 0:
            _fail("cfg_scale", self.cfg_scale, "must be a number >= 0 (0 = no guidance)")
        if self.cfg_scale > 0 and self.cache != "none":
            _fail("cfg_scale", self.cfg_scale, "guidance needs cache='none' (the unconditional "
                  "branch has no KV cache)")
        if self.remasking not in REMASKING:
            _fail("remasking", self.remasking, f"allowed values are {list(REMASKING)}")
        for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2**63):
            _fail("seed", self.seed, "must be None or an integer in [0, 2**63)")

    def _check_parallel(self) -> None:
        if self.cache not in CACHES:
            _fail("cache", self.cache, f"allowed values are {list(CACHES)}")
        if self.threshold is not None and self.factor is not None:
            _fail("threshold", self.threshold, "threshold and factor are exclusive: set one")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(
                self.threshold, (int, float)) or not 0 < self.threshold <= 1):
            _fail("threshold", self.threshold, "must be a number in (0, 1] (typical 0.9)")
        if self.factor is not None and (isinstance(self.factor, bool) or not isinstance(
                self.factor, (int, float)) or not self.factor > 0):
            _fail("factor", self.factor, "must be a number > 0 (typical 1.0)")
        if not isinstance(self.stop_at_eos, bool):
            _fail("stop_at_eos", self.stop_at_eos, "must be True or False")

    @property
    def uses_steps(self) -> bool:
        """The fixed top-k schedule (no threshold, no factor) is the only one that uses steps."""
        return self.threshold is None and self.factor is None

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def replace(self, **overrides: Any) -> "GenerationConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {unknown}; valid ones: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def check_prompts(self, prompt_lengths: list[int], model: ModelConfig) -> None:
        """Checks that need the prompts and the model: lengths against the context window."""
        if not prompt_lengths:
            raise ValueError("prompts is empty: pass at least one prompt")
        longest = max(prompt_lengths)
        if min(prompt_lengths) < 1:
            raise ValueError("a prompt is empty: every prompt needs at least one token")
        if longest + self.gen_length > model.max_sequence_length:
            _fail("gen_length", self.gen_length,
                  f"the longest prompt has {longest} tokens, and prompt + gen_length must be <= "
                  f"the model's max_sequence_length={model.max_sequence_length}; shorten the "
                  f"prompt or lower gen_length to <= {model.max_sequence_length - longest}")
