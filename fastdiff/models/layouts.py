"""Each family's published tensor names and shapes, mapped onto the one transformer's roles
(models/transformer.py). LLaDA: dllm-spec.md section 2; Dream (Qwen2 names): section 5."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig
from .transformer import BIAS_ROLES, LAYER_ROLES, QK_NORM_ROLES


@dataclass(frozen=True)
class Layout:
    """Names of one family's checkpoint tensors. `layer` maps a role to the name pattern of
    layer {i}; embed / final_norm / head name the rest (head unused with a tied LM head)."""

    family: str
    embed: str
    final_norm: str
    head: str
    layer: dict  # role -> name with {i}
    has_bias: bool = False
    has_qk_norm: bool = False

    def layer_names(self, i: int) -> dict[str, str]:
        roles = LAYER_ROLES + (BIAS_ROLES if self.has_bias else ()) + \
            (QK_NORM_ROLES if self.has_qk_norm else ())
        return {role: self.layer[role].format(i=i) for role in roles}

    def roles(self, config: ModelConfig) -> dict[str, str]:
        """Every tensor name of a checkpoint of `config` -> its role (embed, final_norm, head,
        or a layer role), in the order a writer emits them."""
        out = {self.embed: "embed", self.final_norm: "final_norm"}
        if not config.tie_word_embeddings:
            out[self.head] = "head"
        for i in range(config.n_layers):
            out.update({name: role for role, name in self.layer_names(i).items()})
        return out

    def weight_shapes(self, config: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Published name -> shape for `config` (what a loader expects, a writer writes)."""
        c = config
        d, hd, m = c.d_model, c.head_dim, c.mlp_hidden_size
        q, kv = c.n_heads * hd, c.n_kv_heads * hd
        by_role = {"embed": (c.embedding_size, d), "final_norm": (d,),
                   "head": (c.embedding_size, d), "attn_norm": (d,), "q_proj": (q, d),
                   "k_proj": (kv, d), "v_proj": (kv, d), "attn_out": (d, q), "ff_norm": (d,),
                   "ff_proj": (m, d), "up_proj": (m, d), "ff_out": (d, m), "q_bias": (q,),
                   "k_bias": (kv,), "v_bias": (kv,), "q_norm": (hd,), "k_norm": (hd,)}
        return {name: by_role[role] for name, role in self.roles(config).items()}


_L = "model.transformer."
LLADA = Layout(
    family="llada", embed=_L + "wte.weight", final_norm=_L + "ln_f.weight",
    head=_L + "ff_out.weight",
    layer={role: _L + "blocks.{i}." + role + ".weight" for role in LAYER_ROLES})

_D = "model.layers.{i}."
DREAM = Layout(
    family="dream", embed="model.embed_tokens.weight", final_norm="model.norm.weight",
    head="lm_head.weight", has_bias=True,
    layer={"attn_norm": _D + "input_layernorm.weight",
           "q_proj": _D + "self_attn.q_proj.weight", "k_proj": _D + "self_attn.k_proj.weight",
           "v_proj": _D + "self_attn.v_proj.weight", "attn_out": _D + "self_attn.o_proj.weight",
           "ff_norm": _D + "post_attention_layernorm.weight",
           "ff_proj": _D + "mlp.gate_proj.weight", "up_proj": _D + "mlp.up_proj.weight",
           "ff_out": _D + "mlp.down_proj.weight", "q_bias": _D + "self_attn.q_proj.bias",
           "k_bias": _D + "self_attn.k_proj.bias", "v_bias": _D + "self_attn.v_proj.bias"})

# SDAR (Qwen3 names): no biases, per-head QK-norm
_QWEN3_LAYER = {role: name for role, name in DREAM.layer.items() if not role.endswith("_bias")}
SDAR = Layout(
    family="sdar", embed="model.embed_tokens.weight", final_norm="model.norm.weight",
    head="lm_head.weight", has_qk_norm=True,
    layer=dict(_QWEN3_LAYER, q_norm=_D + "self_attn.q_norm.weight",
               k_norm=_D + "self_attn.k_norm.weight"))

LAYOUTS = {"llada": LLADA, "dream": DREAM, "sdar": SDAR}


def layout(config: ModelConfig) -> Layout:
    """The tensor layout of config's family."""
    return LAYOUTS[config.family]


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Published tensor names -> shapes of a checkpoint of `config` (any family)."""
    return layout(config).weight_shapes(config)
