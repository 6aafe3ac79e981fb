"""The one dLLM transformer every family runs on fastdiff.ops (dllm-spec.md sections 2, 5):
pre-norm RMSNorm blocks, RoPE, GQA attention (bidirectional), SiLU-gated MLP; q/k/v biases
where the family has them (they ride in the QKV GEMM). A family's layout module
(models/llada.py, models/dream.py) maps its published tensor names onto `Layer`s; nothing
below branches on the family name.

Q/K/V and gate/up weights are concatenated once at load ([q | k | v] and [gate | up] rows), so a
layer runs 4 GEMMs; the per-projection names stay available (as dense copies of slices).

GEMM layout: every GEMM is `x @ W.T` with W in the published [out, in] orientation. On a GPU the
matrices stay [out, in] contiguous, the layout cuBLAS and the tensor-core paths are tuned for. On
a CPU in fp32 the four layer matrices are stored only in oneDNN's packed layout (ops/cpu_gemm.py:
25-33% faster than MKL at the decode shapes, whose weights stream from memory) and the LM head
carries a packed copy next to its dense rows; in other dtypes (or with FASTDIFF_CPU_PACK=0) the
layer matrices are stored K-major (W.T contiguous, W a transposed view of it), which MKL's sgemm
multiplies ~15% faster at 32 rows (benches/results/2026-11-30-cpu-issue12/)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import ModelConfig
from ..ops import cpu_gemm
from ..ops import reference as ref

# a layer's parts by role; every layout maps its published names onto these
LAYER_ROLES = ("attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj",
               "up_proj", "ff_out")
BIAS_ROLES = ("q_bias", "k_bias", "v_bias")
QK_NORM_ROLES = ("q_norm", "k_norm")  # per-head RMSNorm weights [head_dim] (SDAR)


def _k_major(w: torch.Tensor) -> torch.Tensor:
    """[out, in] -> the same values as a transposed view of a contiguous [in, out] copy, so that
    `x @ w.T` multiplies by a contiguous matrix (the CPU GEMM layout, see the module doc)."""
    return w.T.contiguous().T


GEMMS = ("qkv", "attn_out", "gate_up", "ff_out")  # the four matrices a layer multiplies by


def _cpu_store(w: torch.Tensor) -> torch.Tensor:
    """How a CPU layer keeps a GEMM matrix: its packed form (fp32, cpu_gemm), else K-major."""
    packed = cpu_gemm.pack(w)
    return packed if packed is not w else _k_major(w)


def _dense(role: str) -> property:
    """A Layer property: the dense [out, in] matrix of gemm[role] (a copy when packed)."""
    return property(lambda self: cpu_gemm.dense(self.gemm[role]),
                    doc=f"dense [out, in] {role} matrix (a copy where the storage is packed)")


@dataclass
class Layer:
    """One block's weights by role: attn_norm, ff_norm [d]; the GEMM matrices in `gemm`: qkv
    [(H + 2 Hkv) hd, d] (+ qkv_bias [(H + 2 Hkv) hd] when the family has q/k/v biases),
    attn_out, gate_up [2 m, d], ff_out, as [out, in]; q_norm / k_norm [hd] (SDAR) or None.

    `gemm[role]` is what the forward multiplies by (`linear`): on a GPU the dense matrix, on a
    CPU the K-major matrix or, in fp32, only its oneDNN-packed form (ops/cpu_gemm.py: no dense
    copy is kept). The properties qkv, attn_out, gate_up, ff_out (and the published projections
    q_proj ... up_proj) return dense [out, in] matrices, copies where the storage is packed."""

    attn_norm: torch.Tensor
    ff_norm: torch.Tensor
    gemm: dict[str, torch.Tensor]
    q_dim: int
    kv_dim: int
    qkv_bias: Optional[torch.Tensor] = None
    q_norm: Optional[torch.Tensor] = None
    k_norm: Optional[torch.Tensor] = None

    @classmethod
    def from_weights(cls, w: dict[str, torch.Tensor]) -> "Layer":
        """w: role -> tensor (LAYER_ROLES, plus BIAS_ROLES when present)."""
        bias = None
        if "q_bias" in w:
            bias = torch.cat([w["q_bias"], w["k_bias"], w["v_bias"]])
        store = _cpu_store if w["q_proj"].device.type == "cpu" else (lambda t: t)
        mats = dict(qkv=torch.cat([w["q_proj"], w["k_proj"], w["v_proj"]]), attn_out=w["attn_out"],
                    gate_up=torch.cat([w["ff_proj"], w["up_proj"]]), ff_out=w["ff_out"])
        return cls(attn_norm=w["attn_norm"], ff_norm=w["ff_norm"],
                   gemm={role: store(mats[role]) for role in GEMMS},
                   q_dim=w["q_proj"].shape[0], kv_dim=w["k_proj"].shape[0], qkv_bias=bias,
                   q_norm=w.get("q_norm"), k_norm=w.get("k_norm"))

    def linear(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] @ W_role.T -> [..., out] (qkv: + its bias, in the GEMM's epilogue)."""
        return cpu_gemm.linear(x, self.gemm[role], self.qkv_bias if role == "qkv" else None)

    qkv, attn_out, gate_up, ff_out = (_dense(role) for role in GEMMS)

    # the published projections, as views of the concatenated weights
    @property
    def q_proj(self) -> torch.Tensor:
        return self.qkv[: self.q_dim]

    @property
    def k_proj(self) -> torch.Tensor:
        return self.qkv[self.q_dim: self.q_dim + self.kv_dim]

    @property
    def v_proj(self) -> torch.Tensor:
        return self.qkv[self.q_dim + self.kv_dim:]

    @property
    def ff_proj(self) -> torch.Tensor:
        gu = self.gate_up
        return gu[: gu.shape[0] // 2]

    @property
    def up_proj(self) -> torch.Tensor:
        gu = self.gate_up
        return gu[gu.shape[0] // 2:]

    def tensors(self) -> list[torch.Tensor]:
        """The stored tensors (a packed one is opaque: shape, dtype and numel only)."""
        g = self.gemm
        out = [self.attn_norm, g["qkv"], g["attn_out"], self.ff_norm, g["gate_up"], g["ff_out"]]
        return out + [t for t in (self.qkv_bias, self.q_norm, self.k_norm) if t is not None]


class DLLMModel:
    """Weights as plain tensors; every op goes through the backend object `ops`.
    weights: the family's published names (models.layout(config).weight_shapes)."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], ops) -> None:
        from .layouts import layout
        self.config = config
        self.ops = ops
        lay = layout(config)
        self.wte = weights[lay.embed]
        self.ln_f = weights[lay.final_norm]
        self.lm_head = self.wte if config.tie_word_embeddings else weights[lay.head]
        # the scored [vocab_size, d] rows of the head (embedding padding rows dropped): one view
        # object, which on a CPU in fp32 also carries a packed copy (cpu_gemm.attach; the
        # dense head stays: the embedding (tied) and the Triton LM-head kernel read it)
        self.head = cpu_gemm.attach(self.lm_head[: config.vocab_size])
        self.layers = [Layer.from_weights({role: weights[name]
                                           for role, name in lay.layer_names(i).items()})
                       for i in range(config.n_layers)]
        self._rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def with_ops(self, ops) -> "DLLMModel":
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

    def rope_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin fp32 [max_sequence_length, head_dim / 2]: computed once per model (the same
        values as reference.rope_cos_sin at each position), read by the RoPE op by position."""
        if self._rope is None:
            cfg = self.config
            pos = torch.arange(cfg.max_sequence_length, device=self.device)[None]
            cos, sin = ref.rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
            half = cfg.head_dim // 2
            self._rope = (cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous())
        return self._rope

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_start: torch.Tensor,
                kv_end: torch.Tensor, *, slot: Optional[torch.Tensor] = None,
                store: Optional[torch.Tensor] = None, length: Optional[int] = None,
                rows: Optional[torch.Tensor] = None, block_causal: int = 0,
                q_start: int = 0, kv_full: bool = False) -> torch.Tensor:
        """input_ids, positions [B, S] int64; row b attends keys [kv_start_b, kv_end_b)
        -> hidden states after ln_f [B, S, d] (or [B, R, d] with rows) in the model dtype.

        K/V of the fed tokens (keys after RoPE) go to slot [B, S] int32 (-1: not written) of
        `store` [layers, 2, B', Hkv, T, hd] and attention reads slots [0, length); without a
        store they go to a per-layer scratch at slots 0..S-1 (slot=None: those slots).
        rows [B, R] int64 (fed-token indices): only their final hidden states are wanted, so the
        last layer's attention queries, projections and MLP run on those rows alone.
        block_causal = Bk > 0 (block diffusion's prefill): the fed token s sits at column
        q_start + s and attends only to keys of its own and earlier Bk-blocks.
        kv_full: the caller knows on the host that every row's keys are all of [0, length)
        (kv_start 0, kv_end length): the torch attention then runs unmasked."""
        cfg, ops = self.config, self.ops
        B, S = input_ids.shape
        H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        if slot is None:
            slot = torch.arange(S, dtype=torch.int32, device=input_ids.device).expand(B, S)
        if store is None:
            length = S
        cos, sin = self.rope_table()
        attn_kw = dict(block_causal=block_causal, q_start=q_start, kv_full=kv_full)
        x, delta = self.wte[input_ids], None  # [B, S, d]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, n = ops.add_rms_norm(x, delta, layer.attn_norm, cfg.rms_norm_eps)
            if store is None:
                kv = torch.empty(2, B, Hkv, S, hd, dtype=x.dtype, device=x.device)
            else:
                kv = store[i, :, :B]
            norms = {} if layer.q_norm is None else dict(
                q_norm=layer.q_norm, k_norm=layer.k_norm, eps=cfg.rms_norm_eps)
            q = ops.rope_kv(layer.linear("qkv", n), positions, slot, cos, sin, kv[0], kv[1],
                            n_heads=H, n_kv_heads=Hkv, head_dim=hd, **norms)  # [B, S, H, hd]
            if rows is not None and i == last:
                q = q.gather(1, rows[:, :, None, None].expand(-1, -1, H, hd))
                x = x.gather(1, rows[:, :, None].expand(-1, -1, x.shape[-1]))
            k = kv[0, :, :, :length].transpose(1, 2)  # [B, length, Hkv, hd], strided
            v = kv[1, :, :, :length].transpose(1, 2)
            a = ops.attention(q, k, v, kv_start, kv_end, **attn_kw)
            h = layer.linear("attn_out", a.reshape(B, q.shape[1], H * hd))
            x, m = ops.add_rms_norm(x, h, layer.ff_norm, cfg.rms_norm_eps)
            delta = layer.linear("ff_out", ops.silu_mul_packed(layer.linear("gate_up", m)))
        return ops.add_rms_norm(x, delta, self.ln_f, cfg.rms_norm_eps)[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> logits [..., vocab_size] (embedding padding rows dropped)."""
        return cpu_gemm.linear(hidden, self.head)

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unpadded convenience: input_ids [B, S] -> logits [B, S, V] (the output at each
        position, unshifted: with shift_logits the prediction for i is row i - 1)."""
        B, S = input_ids.shape
        dev = input_ids.device
        pos = torch.arange(S, device=dev).expand(B, S)
        start = torch.zeros(B, dtype=torch.int32, device=dev)
        return self.logits(self.forward(input_ids, pos, start, start + S))


LLaDAModel = DLLMModel  # the name earlier releases exported
