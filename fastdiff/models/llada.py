"""The LLaDA transformer (dllm-spec.md section 2) on fastdiff.ops: bidirectional, no biases."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..config import ModelConfig

PREFIX = "model.transformer."
LAYER_NAMES = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj",
               "up_proj", "ff_out")


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Official LLaDA tensor names -> shapes."""
    d, hd, m = cfg.d_model, cfg.head_dim, cfg.mlp_hidden_size
    shapes = {PREFIX + "wte.weight": (cfg.embedding_size, d),
              PREFIX + "ln_f.weight": (d,),
              PREFIX + "ff_out.weight": (cfg.embedding_size, d)}
    per_layer = {"attn_norm": (d,), "q_proj": (cfg.n_heads * hd, d),
                 "k_proj": (cfg.n_kv_heads * hd, d), "v_proj": (cfg.n_kv_heads * hd, d),
                 "attn_out": (d, cfg.n_heads * hd), "ff_norm": (d,), "ff_proj": (m, d),
                 "up_proj": (m, d), "ff_out": (d, m)}
    for i in range(cfg.n_layers):
        for name, shape in per_layer.items():
            shapes[f"{PREFIX}blocks.{i}.{name}.weight"] = shape
    return shapes


@dataclass
class Layer:
    attn_norm: torch.Tensor
    q_proj: torch.Tensor
    k_proj: torch.Tensor
    v_proj: torch.Tensor
    attn_out: torch.Tensor
    ff_norm: torch.Tensor
    ff_proj: torch.Tensor
    up_proj: torch.Tensor
    ff_out: torch.Tensor


class LLaDAModel:
    """Weights as plain tensors; every op goes through the backend object `ops`."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], ops) -> None:
        self.config = config
        self.ops = ops
        self.wte = weights[PREFIX + "wte.weight"]
        self.ln_f = weights[PREFIX + "ln_f.weight"]
        self.lm_head = weights[PREFIX + "ff_out.weight"]
        self.layers = [Layer(**{n: weights[f"{PREFIX}blocks.{i}.{n}.weight"] for n in LAYER_NAMES})
                       for i in range(config.n_layers)]

    def with_ops(self, ops) -> "LLaDAModel":
        """The same weights (shared, not copied) on another ops backend."""
        model = copy.copy(self)
        model.ops = ops
        return model

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_start: torch.Tensor, kv_end: torch.Tensor, kv_hook=None) -> torch.Tensor:
        """input_ids, positions [B, S] int64; row b attends keys [kv_start_b, kv_end_b)
        -> hidden states after ln_f [B, S, d] in the model dtype.

        kv_hook(layer, k, v) -> (k, v, kv_start, kv_end), given the fed tokens' k (after RoPE)
        and v [B, S, Hkv, hd], returns the keys/values to attend to (a KV cache strategy)."""
        cfg, ops = self.config, self.ops
        B, S = input_ids.shape
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos, sin = ops.rope_cos_sin(positions, hd, cfg.rope_theta)  # [B, S, hd] fp32
        x = self.wte[input_ids]  # [B, S, d]
        for i, layer in enumerate(self.layers):
            n = ops.rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
            q = ops.apply_rope((n @ layer.q_proj.T).view(B, S, H, hd), cos, sin)
            k = ops.apply_rope((n @ layer.k_proj.T).view(B, S, Hkv, hd), cos, sin)
            v = (n @ layer.v_proj.T).view(B, S, Hkv, hd)
            ks, ke = kv_start, kv_end
            if kv_hook is not None:
                k, v, ks, ke = kv_hook(i, k, v)
            a = ops.attention(q, k, v, ks, ke).reshape(B, S, H * hd)
            h = x + a @ layer.attn_out.T
            m = ops.rms_norm(h, layer.ff_norm, cfg.rms_norm_eps)
            x = h + ops.silu_mul(m @ layer.ff_proj.T, m @ layer.up_proj.T) @ layer.ff_out.T
        return ops.rms_norm(x, self.ln_f, cfg.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> logits [..., vocab_size] (embedding padding rows dropped)."""
        return (hidden @ self.lm_head.T)[..., : self.config.vocab_size]

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unpadded convenience: input_ids [B, S] -> logits [B, S, V]."""
        B, S = input_ids.shape
        dev = input_ids.device
        pos = torch.arange(S, device=dev).expand(B, S)
        start = torch.zeros(B, dtype=torch.int32, device=dev)
        return self.logits(self.forward(input_ids, pos, start, start + S))
