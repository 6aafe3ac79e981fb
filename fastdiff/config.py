"""Frozen, validated configuration: the model's shape (ModelConfig) and a request's decoding
settings (GenerationConfig). Semantics: shared/docs/dllm-spec.md sections 2-3."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

CACHES = ("none", "prefix", "dual")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: {allowed}")


# Model families: how config.json names things and what a family's architecture has.
FAMILIES = ("llada", "dream", "sdar")
ATTENTION_KINDS = ("bidirectional", "block_causal")
SDAR_DEFAULT_BLOCK = 4  # when config.json lacks block_size (SDAR-8B-Chat's does)
# HF key -> ModelConfig field (Qwen2 names)
_QWEN_KEYS = {"hidden_size": "d_model", "num_hidden_layers": "n_layers",
              "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads",
              "intermediate_size": "mlp_hidden_size", "vocab_size": "vocab_size",
              "max_position_embeddings": "max_sequence_length", "rope_theta": "rope_theta",
              "rms_norm_eps": "rms_norm_eps", "mask_token_id": "mask_token_id",
              "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id",
              "bos_token_id": "bos_token_id", "tie_word_embeddings": "tie_word_embeddings",
              "head_dim": "head_dim"}
# SDAR training-only keys (ignored at inference, dllm-spec.md section 6)
_SDAR_TRAINING_KEYS = ("attn_implementation", "fuse_cross_entropy", "micro_forward",
                       "skip_checkpoint", "use_deepep", "ep_size", "debug")


def detect_family(cfg: dict, source: str = "config.json") -> str:
    """The dLLM family of an HF config dict, from model_type (case-insensitive) or
    architectures; a ValueError naming both for anything else."""
    mt = str(cfg.get("model_type") or "").lower()
    archs = [str(a).lower() for a in (cfg.get("architectures") or [])]
    for family in FAMILIES:
        if mt == family or (not mt and any(a.startswith(family) for a in archs)):
            return family
    raise ValueError(
        f"unsupported model_type {cfg.get('model_type')!r} (architectures "
        f"{cfg.get('architectures')}) in {source}: fastdiff loads the families {list(FAMILIES)} "
        "(LLaDA: model_type 'llada'; Dream: model_type 'Dream' / DreamModel)")


@dataclass(frozen=True)
class ModelConfig:
    """A dLLM's shape and the architecture details its family fixes (dllm-spec.md sections 2,
    5). Token ids come from the checkpoint. One model interface serves every family: the
    fields below (biases, tied head, shifted logits, attention kind) are what they differ in."""

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
    bos_token_id: Optional[int] = None
    family: str = "llada"
    head_dim: Optional[int] = None  # None = d_model / n_heads
    qkv_bias: bool = False  # q/k/v projections have biases (Dream)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE
    tie_word_embeddings: bool = False  # LM head = the embedding matrix
    shift_logits: bool = False  # the prediction for position i is the output at i - 1 (Dream)
    attention: str = "bidirectional"  # block_causal: block diffusion (SDAR)
    block_size: Optional[int] = None  # block diffusion: the training block size
    stop_token_ids: tuple = ()  # extra stop ids (generation_config.json's eos list)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size",
                     "max_sequence_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(name, v, "expected a positive integer")
        if self.family not in FAMILIES:
            _fail("family", self.family, f"allowed values are {list(FAMILIES)}")
        if self.attention not in ATTENTION_KINDS:
            _fail("attention", self.attention, f"allowed values are {list(ATTENTION_KINDS)}")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.embedding_size is None:
            object.__setattr__(self, "embedding_size", self.vocab_size)
        if self.pad_token_id is None:
            object.__setattr__(self, "pad_token_id", self.eos_token_id)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                _fail("n_heads", self.n_heads, f"must divide d_model={self.d_model} (or give "
                      "head_dim explicitly)")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be a positive even integer (RoPE)")
        for name in ("qkv_bias", "qk_norm", "tie_word_embeddings", "shift_logits"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads}")
        if self.embedding_size < self.vocab_size:
            _fail("embedding_size", self.embedding_size, f"must be >= vocab_size={self.vocab_size}")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < self.embedding_size:
                _fail(name, v, f"must be a token id in [0, {self.embedding_size})")
        if self.mask_token_id == self.eos_token_id:
            _fail("mask_token_id", self.mask_token_id, "must differ from eos_token_id")
        if self.block_size is not None and (not isinstance(self.block_size, int) or
                                            isinstance(self.block_size, bool) or
                                            self.block_size < 1):
            _fail("block_size", self.block_size, "expected a positive integer")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            _fail("rope_theta/rms_norm_eps", (self.rope_theta, self.rms_norm_eps), "must be > 0")

    # --- HF config.json --------------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        family = detect_family(cfg, source)
        return {"llada": cls._from_llada, "dream": cls._from_dream,
                "sdar": cls._from_sdar}[family](cfg, source)

    @classmethod
    def _from_llada(cls, cfg: dict, source: str) -> "ModelConfig":
        checks = {"rope": True, "weight_tying": False, "include_bias": False,
                  "include_qkv_bias": False, "block_type": "llama", "activation_type": "silu",
                  "layer_norm_type": "rms"}
        for key, want in checks.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"{source} has {key}={cfg[key]!r}; fastdiff supports only "
                                 f"{key}={want!r} (the LLaDA-8B architecture)")
        missing = [k for k in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size",
                               "mask_token_id", "eos_token_id") if cfg.get(k) is None]
        if missing:
            raise ValueError(f"{source} lacks required keys {missing}")
        names = {f.name for f in dataclasses.fields(cls)} - {"family", "model_type"}
        return cls(**{k: v for k, v in cfg.items() if k in names and k != "head_dim"},
                   family="llada")

    @staticmethod
    def _qwen_kwargs(cfg: dict, source: str, arch: str, checks: dict,
                     required: tuple[str, ...]) -> dict:
        """ModelConfig keywords from a Qwen-named config.json (Dream: Qwen2, SDAR: Qwen3):
        architecture checks, required keys, HF's list-valued ids, the families' defaults."""
        for key, want in checks.items():
            if cfg.get(key, want) != want:
                raise ValueError(f"{source} has {key}={cfg[key]!r}; fastdiff supports only "
                                 f"{key}={want!r} (the {arch} architecture)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "vocab_size", "eos_token_id") + required
                   if cfg.get(k) is None]
        if missing:
            raise ValueError(f"{source} lacks required keys {missing} ({arch}, Qwen names)")
        kw = {field: cfg[key] for key, field in _QWEN_KEYS.items() if cfg.get(key) is not None}
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if isinstance(kw.get(name), list):  # HF allows a list; the first is the EOS
                kw[name] = kw[name][0]
        for key, value in (("tie_word_embeddings", False), ("rope_theta", 10000.0),
                           ("rms_norm_eps", 1e-6), ("max_sequence_length", 32768)):
            kw.setdefault(key, value)
        return kw

    @classmethod
    def _from_dream(cls, cfg: dict, source: str) -> "ModelConfig":
        kw = cls._qwen_kwargs(cfg, source, "Dream-7B", {"hidden_act": "silu",
                              "use_sliding_window": False, "rope_scaling": None},
                              ("mask_token_id",))
        return cls(**kw, family="dream", qkv_bias=True, shift_logits=True)

    @classmethod
    def _from_sdar(cls, cfg: dict, source: str) -> "ModelConfig":
        required = () if cfg.get("mask_token_id") is not None else \
            ("mask_token_id (config.json or the tokenizer's mask_token)",)
        kw = cls._qwen_kwargs(cfg, source, "SDAR dense", {"hidden_act": "silu",
                              "use_sliding_window": False, "rope_scaling": None,
                              "attention_bias": False}, required)
        kw.setdefault("head_dim", 128)  # SDARConfig's default; published configs state it
        return cls(**kw, family="sdar", qk_norm=True, attention="block_causal",
                   block_size=cfg.get("block_size"),
                   stop_token_ids=tuple(cfg.get("stop_token_ids") or ()))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), source=str(path))

    def to_dict(self) -> dict:
        """The config.json of this model in its family's published layout."""
        if self.family in ("sdar", "dream"):
            d = {key: getattr(self, field) for key, field in _QWEN_KEYS.items()}
            if d["bos_token_id"] is None:
                d.pop("bos_token_id")
            d.update(hidden_act="silu", use_sliding_window=False, rope_scaling=None,
                     torch_dtype="bfloat16")
            if self.family == "sdar":
                d.update(model_type="sdar", architectures=["SDARForCausalLM"],
                         attention_bias=False,
                         auto_map={"AutoConfig": "configuration_sdar.SDARConfig",
                                   "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"})
                if self.block_size is not None:
                    d["block_size"] = self.block_size
            else:
                d.update(model_type="Dream", architectures=["DreamModel"], sliding_window=None,
                         auto_map={"AutoConfig": "configuration_dream.DreamConfig",
                                   "AutoModel": "modeling_dream.DreamModel"})
                if self.head_dim == self.d_model // self.n_heads:
                    d.pop("head_dim")
            return d
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("family", "head_dim", "qkv_bias", "qk_norm",
                               "tie_word_embeddings", "shift_logits", "attention",
                               "bos_token_id", "block_size", "stop_token_ids")}
        d.update(model_type="llada", architectures=["LLaDAModelLM"], rope=True,
                 weight_tying=False, include_bias=False, include_qkv_bias=False,
                 block_type="llama", activation_type="silu", layer_norm_type="rms")
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
            # Dream: Qwen2 shapes (GQA 7:1, q/k/v biases, shifted logits)
            "dream-tiny": dict(d_model=128, n_heads=4, n_kv_heads=2, n_layers=2,
                               mlp_hidden_size=256, vocab_size=1024, max_sequence_length=1024,
                               mask_token_id=1020, eos_token_id=1017, pad_token_id=1017,
                               bos_token_id=1017, rope_theta=1000000.0, rms_norm_eps=1e-6,
                               family="dream", qkv_bias=True, shift_logits=True),
            "dream-7b": dict(d_model=3584, n_heads=28, n_kv_heads=4, n_layers=28,
                             mlp_hidden_size=18944, vocab_size=152064, rope_theta=1000000.0,
                             rms_norm_eps=1e-6, max_sequence_length=131072,
                             mask_token_id=151666, eos_token_id=151643, pad_token_id=151643,
                             bos_token_id=151643, family="dream", qkv_bias=True,
                             shift_logits=True),
            # SDAR: Qwen3 shapes (explicit head_dim, QK-norm, GQA 4:1), block diffusion
            "sdar-tiny": dict(d_model=96, n_heads=4, n_kv_heads=2, head_dim=32, n_layers=2,
                              mlp_hidden_size=256, vocab_size=1024, max_sequence_length=1024,
                              mask_token_id=1020, eos_token_id=1017, pad_token_id=1017,
                              rope_theta=1000000.0, rms_norm_eps=1e-6, family="sdar",
                              qk_norm=True, attention="block_causal", block_size=4,
                              stop_token_ids=(1016, 1017)),
            "sdar-4b": dict(d_model=2560, n_heads=32, n_kv_heads=8, head_dim=128, n_layers=36,
                            mlp_hidden_size=9728, vocab_size=151936, rope_theta=1000000.0,
                            rms_norm_eps=1e-6, max_sequence_length=32768,
                            mask_token_id=151669, eos_token_id=151643, pad_token_id=151643,
                            bos_token_id=151643, family="sdar", qk_norm=True,
                            attention="block_causal", block_size=4,
                            stop_token_ids=(151645, 151643)),
            "sdar-8b": dict(d_model=4096, n_heads=32, n_kv_heads=8, head_dim=128, n_layers=36,
                            mlp_hidden_size=12288, vocab_size=151936, rope_theta=1000000.0,
                            rms_norm_eps=1e-6, max_sequence_length=32768,
                            mask_token_id=151669, eos_token_id=151643, pad_token_id=151643,
                            bos_token_id=151643, family="sdar", qk_norm=True,
                            attention="block_causal", block_size=4,
                            stop_token_ids=(151645, 151643)),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**presets[name])


ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")  # Dream's names
# score of a masked position (the fused LM-head kernel's confidence modes)
ALG_SCORES = {"maskgit_plus": "maskgit_plus", "topk_margin": "margin", "entropy": "neg_entropy",
              "origin": "random"}
REMASKING_SCORES = {"low_confidence": "low_confidence", "random": "random"}
SDAR_REMASKING = ("low_confidence_static", "low_confidence_dynamic", "sequential")
CONFIDENCES = ("eval", "filtered")  # SDAR: the evaluation sampler's or the README script's
SDAR_DYNAMIC_THRESHOLD = 0.85  # SDAR's script default for low_confidence_dynamic
# field -> the families that have it (a family rejects the others' own names)
FIELD_FAMILIES = {"remasking": ("llada", "sdar"), "cfg_scale": ("llada",),
                  "alg": ("llada", "dream"), "alg_temp": ("dream",),
                  "top_p": ("dream", "sdar"), "top_k": ("dream", "sdar"),
                  "steps": ("llada", "dream"), "denoising_steps": ("sdar",),
                  "confidence": ("sdar",), "factor": ("llada", "dream")}
FAMILY_ALGS = {"llada": ("maskgit_plus", "topk_margin", "entropy"), "dream": ALGS}
FAMILY_REMASKING = {"llada": tuple(REMASKING_SCORES), "sdar": SDAR_REMASKING}
DEFAULT_ALG = {"dream": "entropy"}  # Dream's README examples decode with alg="entropy"
_HINTS = {"remasking": "use alg ('maskgit_plus', 'topk_margin', 'entropy' or 'origin')",
          "cfg_scale": "leave it at 0",
          "steps": "block-diffusion models count steps per block: use denoising_steps",
          "denoising_steps": "use steps (the total over all blocks)"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request decoding settings (dllm-spec.md sections 3-6).

    Fields whose default depends on the model family are None until `resolve(family)` (the
    engine and the server call it) fills them in; type and range checks happen here, the
    family's own rules in resolve. Internally the settings decompose into orthogonal parts:
    `score` (how a masked position is ranked), `rule` (which positions a step commits) and
    the step count. Each family's names are aliases of these parts (README table):
    LLaDA: remasking low_confidence | random, steps (total); Dream: alg origin | maskgit_plus |
    topk_margin | entropy (the last three for LLaDA too), alg_temp, top_p, top_k, steps
    (total); SDAR: remasking low_confidence_static | low_confidence_dynamic | sequential,
    threshold (the dynamic rule), denoising_steps (per block), confidence eval | filtered,
    top_k, top_p; LLaDA and Dream: threshold / factor (Fast-dLLM), cache."""

    gen_length: int = 128
    steps: Optional[int] = None  # total denoising steps (the fixed rules); default gen_length
    block_length: Optional[int] = None
    temperature: Optional[float] = None  # default 0 (greedy)
    cfg_scale: float = 0.0
    remasking: Optional[str] = None  # LLaDA: low_confidence | random; SDAR: see SDAR_REMASKING
    alg: Optional[str] = None  # Dream: "origin" | "maskgit_plus" | "topk_margin" | "entropy"
    alg_temp: Optional[float] = None  # Dream: > 0 samples the committed positions
    top_p: Optional[float] = None  # Dream: nucleus filter before top_k; SDAR: after top_k
    top_k: Optional[int] = None
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    seed: Optional[int] = None
    # Fast-dLLM (dllm-spec.md section 4)
    cache: str = "none"
    threshold: Optional[float] = None
    factor: Optional[float] = None
    stop_at_eos: Optional[bool] = None  # default False (SDAR: True, its stop ids)
    # block diffusion (dllm-spec.md section 6)
    denoising_steps: Optional[int] = None  # steps per block; default block_length
    confidence: Optional[str] = None  # "eval" (default) | "filtered"
    family: Optional[str] = None  # set by resolve(): the family these settings are for

    def __post_init__(self) -> None:
        for name in ("gen_length", "steps", "block_length", "denoising_steps"):
            v = getattr(self, name)
            if name != "gen_length" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(name, v, "expected a positive integer")
        self._check_parallel()
        if self.temperature is not None and (not _is_num(self.temperature) or
                                             not self.temperature >= 0):
            _fail("temperature", self.temperature, "must be a number >= 0 (0 = greedy)")
        if not _is_num(self.cfg_scale) or not self.cfg_scale >= 0:
            _fail("cfg_scale", self.cfg_scale, "must be a number >= 0 (0 = no guidance)")
        if self.cfg_scale > 0 and self.cache != "none":
            _fail("cfg_scale", self.cfg_scale, "guidance needs cache='none' (the unconditional "
                  "branch has no KV cache)")
        allowed = tuple(REMASKING_SCORES) + SDAR_REMASKING
        if self.remasking is not None and self.remasking not in allowed:
            _fail("remasking", self.remasking, f"allowed values are {list(allowed)}")
        if self.alg is not None and self.alg not in ALGS:
            _fail("alg", self.alg, f"allowed values are {list(ALGS)}")
        if self.remasking is not None and self.alg is not None:
            _fail("alg", self.alg, "remasking (LLaDA's name) and alg (Dream's) both choose the "
                  "score; set one")
        if self.alg_temp is not None and (not _is_num(self.alg_temp) or not self.alg_temp >= 0):
            _fail("alg_temp", self.alg_temp, "must be a number >= 0 (0 = top-n)")
        if self.top_p is not None and (not _is_num(self.top_p) or not 0 < self.top_p <= 1):
            _fail("top_p", self.top_p, "must be a number in (0, 1]")
        if self.top_k is not None and (not isinstance(self.top_k, int) or
                                       isinstance(self.top_k, bool) or self.top_k < 1):
            _fail("top_k", self.top_k, "must be a positive integer")
        if self.confidence is not None and self.confidence not in CONFIDENCES:
            _fail("confidence", self.confidence, f"allowed values are {list(CONFIDENCES)}")
        for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed < 2**63):
            _fail("seed", self.seed, "must be None or an integer in [0, 2**63)")
        if self.family is not None and self.family not in FAMILIES:
            _fail("family", self.family, f"allowed values are {list(FAMILIES)}")

    def _check_parallel(self) -> None:
        if self.cache not in CACHES:
            _fail("cache", self.cache, f"allowed values are {list(CACHES)}")
        if self.threshold is not None and self.factor is not None:
            _fail("threshold", self.threshold, "threshold and factor are exclusive: set one")
        if self.threshold is not None and (not _is_num(self.threshold) or
                                           not 0 < self.threshold <= 1):
            _fail("threshold", self.threshold, "must be a number in (0, 1] (typical 0.9)")
        if self.factor is not None and (not _is_num(self.factor) or not self.factor > 0):
            _fail("factor", self.factor, "must be a number > 0 (typical 1.0)")
        if self.stop_at_eos is not None and not isinstance(self.stop_at_eos, bool):
            _fail("stop_at_eos", self.stop_at_eos, "must be True or False")

    # ------------------------------------------------------------------ family resolution
    def resolve(self, family: str, *, block_size: Optional[int] = None) -> "GenerationConfig":
        """These settings for a model family: family defaults filled in, family rules checked
        (a ValueError naming the field, the family and the allowed values otherwise).
        block_size: a block-diffusion model's training block size (its default block_length)."""
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; allowed: {list(FAMILIES)}")
        if self.family == family:
            return self
        if self.family is not None:
            raise ValueError(f"these settings were resolved for family {self.family!r}, not "
                             f"{family!r}; pass the unresolved GenerationConfig")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, families in FIELD_FAMILIES.items():
            value = getattr(self, name)
            if family not in families and value != defaults[name]:
                hint = _HINTS.get(name, f"leave it unset ({' / '.join(families)} only)")
                _fail(name, value, f"the {family} family does not support {name} (a "
                      f"{' / '.join(families)} setting); {hint}")
        if self.alg is not None and self.alg not in FAMILY_ALGS[family]:
            _fail("alg", self.alg, f"the {family} family allows {list(FAMILY_ALGS[family])}")
        if self.remasking is not None and self.remasking not in FAMILY_REMASKING[family]:
            _fail("remasking", self.remasking,
                  f"the {family} family allows {list(FAMILY_REMASKING[family])}")
        fill = dict(temperature=float(self.temperature or 0.0), family=family)
        if family == "sdar":
            fill.update(self._sdar_defaults(block_size))
        else:
            G = self.gen_length
            block = self.block_length
            if block is None:  # LLaDA's generate() default block (128), one block for Dream
                block = 128 if family == "llada" and G % 128 == 0 else G
            fill.update(block_length=block, steps=self.steps if self.steps is not None else G,
                        stop_at_eos=bool(self.stop_at_eos))
            if family == "llada" and self.alg is None and self.remasking is None:
                fill["remasking"] = "low_confidence"
            if family in DEFAULT_ALG and self.alg is None:
                fill["alg"] = DEFAULT_ALG[family]
            if family == "dream":
                fill["alg_temp"] = float(self.alg_temp or 0.0)
        out = dataclasses.replace(self, **fill)
        out._check_family()
        object.__setattr__(out, "_unresolved", self)  # what replace() starts from
        return out

    def _sdar_defaults(self, block_size: Optional[int]) -> dict:
        block = self.block_length or block_size or SDAR_DEFAULT_BLOCK
        remasking = self.remasking
        threshold = self.threshold
        if remasking is None:
            remasking = "low_confidence_dynamic" if threshold is not None else \
                "low_confidence_static"
        if remasking == "low_confidence_dynamic" and threshold is None:
            threshold = SDAR_DYNAMIC_THRESHOLD
        if remasking != "low_confidence_dynamic" and threshold is not None:
            _fail("threshold", threshold, f"is the low_confidence_dynamic rule's; remasking="
                  f"{remasking!r} does not use it")
        if self.cache != "none":
            _fail("cache", self.cache, "block-diffusion (sdar) models decode with their exact "
                  "block cache; leave cache='none'")
        return dict(block_length=block, remasking=remasking, threshold=threshold,
                    denoising_steps=self.denoising_steps or block,
                    confidence=self.confidence or "eval",
                    stop_at_eos=True if self.stop_at_eos is None else self.stop_at_eos)

    def _check_family(self) -> None:
        """Rules that need the resolved fields."""
        if self.family == "sdar":
            return
        if self.gen_length % self.block_length:
            _fail("gen_length", self.gen_length,
                  f"must be a multiple of block_length={self.block_length}")
        if self.uses_steps:
            if self.family == "llada" and self.steps > self.gen_length:
                _fail("steps", self.steps, f"must be <= gen_length={self.gen_length} for the "
                      "llada family (each step commits at least one token)")
            if self.steps % self.num_blocks:
                _fail("steps", self.steps, f"must be a multiple of the number of blocks "
                      f"gen_length/block_length={self.num_blocks}")
        if not self.uses_steps and self.alg == "origin":
            _fail("alg", self.alg, "origin commits at random and cannot be combined with a "
                  "threshold or factor; use maskgit_plus, topk_margin or entropy")
        if not self.uses_steps and self.alg_temp:
            _fail("alg_temp", self.alg_temp, "samples the fixed schedule's positions and cannot "
                  "be combined with a threshold or factor; leave it at 0")
        if self.alg == "origin" and self.alg_temp:
            _fail("alg_temp", self.alg_temp, "has no effect with alg='origin'; leave it at 0")

    def _need_resolved(self) -> None:
        if self.family is None:
            raise ValueError("these settings are not resolved for a model family yet: call "
                             "GenerationConfig.resolve(family) or engine.resolve_config(...)")

    # --------------------------------------------------------------------- the parts
    @property
    def score(self) -> str:
        """How masked positions are ranked: low_confidence (untempered p[x0], LLaDA), random,
        maskgit_plus (p[x0] of the tempered distribution; filtered with Dream's filters or
        SDAR's confidence="filtered"), margin, neg_entropy."""
        self._need_resolved()
        if self.family == "sdar":
            return "maskgit_plus"
        return ALG_SCORES[self.alg] if self.alg is not None else REMASKING_SCORES[self.remasking]

    @property
    def rule(self) -> str:
        """Which positions a step commits: schedule (LLaDA's per-block k), quota (Dream's
        timestep quota, top-n or sampled with alg_temp), origin (Dream's random transfer),
        threshold or factor (Fast-dLLM); SDAR: static (top n_i), dynamic (all above the
        threshold when at least n_i, else top n_i), sequential (the first n_i MASKs)."""
        self._need_resolved()
        if self.family == "sdar":
            return {"low_confidence_static": "static", "low_confidence_dynamic": "dynamic",
                    "sequential": "sequential"}[self.remasking]
        if self.threshold is not None:
            return "threshold"
        if self.factor is not None:
            return "factor"
        if self.alg == "origin":
            return "origin"
        return "quota" if self.family == "dream" else "schedule"

    @property
    def uses_steps(self) -> bool:
        """The fixed rules (no threshold, no factor) are the ones that use steps."""
        return self.threshold is None and self.factor is None

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        if self.family == "sdar":
            return self.denoising_steps
        return self.steps // self.num_blocks

    @property
    def max_steps_per_block(self) -> int:
        """Steps a block can take: the fixed rules' steps per block, else its length."""
        if self.family == "sdar":
            return self.denoising_steps
        return self.steps_per_block if self.uses_steps else self.block_length

    def replace(self, **overrides: Any) -> "GenerationConfig":
        names = {f.name for f in dataclasses.fields(self)} - {"family"}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {unknown}; valid ones: {sorted(names)}")
        base = getattr(self, "_unresolved", self)  # a resolved config: the user's settings
        return dataclasses.replace(base, family=None, **overrides)

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
