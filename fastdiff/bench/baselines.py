"""Baselines measured beside fastdiff, on the same device, weights and shapes:
(b) LLaDA's reference loop as its repository runs it, (c) the same body run causally as an
autoregressive model with a static KV cache (gpt-fast pattern: one-token decode in a CUDA
graph), (d) Hugging Face transformers' LlamaForCausalLM.generate with a static cache."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..decoding.graphs import CudaGraphCapture
from ..models.transformer import DLLMModel as LLaDAModel


class ReferenceLoop:
    """(b) LLaDA's `generate` as its repository runs it: eager PyTorch in the model dtype, SDPA,
    a full-sequence forward and full-vocabulary float64 softmax every step, float64 Gumbel noise
    when temperature > 0, and per-row torch.topk with the host sync it implies."""

    name = "reference_loop"

    def __init__(self, model: LLaDAModel) -> None:
        self.model = model
        self.mask_id = model.config.mask_token_id

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, *, gen_length: int, steps: int, block_length: int,
                 temperature: float = 0.0):
        """prompt [B, P] -> (generated [B, gen_length], nfe)."""
        model, mask_id = self.model, self.mask_id
        B, P = prompt.shape
        x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
        x[:, :P] = prompt
        L = x.shape[1]
        pos = torch.arange(L, device=x.device).expand(B, L)
        start = torch.zeros(B, dtype=torch.int32, device=x.device)
        nb = gen_length // block_length
        spb = steps // nb
        nfe = 0
        for b in range(nb):
            b1 = P + (b + 1) * block_length
            block_mask = x[:, P + b * block_length:b1] == mask_id
            mask_num = block_mask.sum(1, keepdim=True)
            k = torch.zeros(B, spb, dtype=torch.long, device=x.device) + mask_num // spb
            for j in range(B):
                k[j, : int(mask_num[j] % spb)] += 1
            for i in range(spb):
                mask_index = x == mask_id
                logits = model.logits(model.forward(x, pos, start, start + L))
                nfe += 1
                if temperature > 0:
                    lg = logits.to(torch.float64)
                    noise = torch.rand_like(lg)
                    x0 = (lg.exp() / (-torch.log(noise)) ** temperature).argmax(-1)
                else:
                    x0 = logits.argmax(-1)
                p = F.softmax(logits.to(torch.float64), dim=-1)
                x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
                x0_p[:, b1:] = float("-inf")
                x0 = torch.where(mask_index, x0, x)
                conf = torch.where(mask_index, x0_p, torch.full_like(x0_p, float("-inf")))
                transfer = torch.zeros_like(x0, dtype=torch.bool)
                for j in range(B):
                    _, sel = torch.topk(conf[j], k=int(k[j, i]))  # host sync
                    transfer[j, sel] = True
                x[transfer] = x0[transfer]
        return x[:, P:], nfe


class ARBaseline:
    """(c) The same body run causally, greedy, with a static KV cache; on CUDA the one-token
    decode is captured once in a CUDA graph and replayed (the gpt-fast pattern). It runs the
    model's own forward and ops backend, so an AR token step has fastdiff's fused layer (the
    concatenated GEMMs, add + RMSNorm, RoPE writing K/V into the cache, the attention kernel
    over the cache's slots [0, pos], SiLU * up): the same kernels per layer, a fair baseline.
    The prefill is causal (block-causal attention with blocks of one token)."""

    name = "ar_static_cache"

    def __init__(self, model: LLaDAModel, *, use_graph: bool = True) -> None:
        self.model = model
        self.use_graph = use_graph and model.device.type == "cuda"
        self._graphs: dict = {}
        self.capture_s = 0.0

    def _forward(self, cache: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor, prefill: bool):
        """ids [B, S] at positions pos [S] (device tensors) -> next-token ids [B] (greedy).
        cache [layers, 2, B, Hkv, T + 1, hd] (slot T: the store's trash slot)."""
        m = self.model
        B, S = ids.shape
        T = cache.shape[4] - 1
        start = torch.zeros(B, dtype=torch.int32, device=ids.device)
        end = (pos[-1:] + 1).to(torch.int32).expand(B).contiguous()  # keys [0, pos]
        last = torch.full((B, 1), S - 1, dtype=torch.int64, device=ids.device)
        hidden = m.forward(ids, pos.expand(B, S), start, end,
                           slot=pos.to(torch.int32).expand(B, S), store=cache, length=T,
                           rows=last, block_causal=1 if prefill else 0)
        return m.logits(hidden[:, -1]).argmax(-1)

    def _decoder(self, B: int, T: int):
        """A (cache, tok, pos, out, step) bundle for batch B and cache length T; step() runs
        one decode (a graph replay on CUDA)."""
        key = (B, T)
        if key in self._graphs:
            return self._graphs[key]
        cfg, dev = self.model.config, self.model.device
        cache = torch.zeros(cfg.n_layers, 2, B, cfg.n_kv_heads, T + 1, cfg.head_dim,
                            dtype=self.model.dtype, device=dev)
        tok = torch.zeros(B, 1, dtype=torch.long, device=dev)
        pos = torch.zeros(1, dtype=torch.long, device=dev)
        out = torch.zeros(B, dtype=torch.long, device=dev)

        def eager():
            out.copy_(self._forward(cache, tok, pos, prefill=False))

        step = eager
        if self.use_graph:  # the engine's capture: side-stream warm-up, then one graph
            t0 = time.perf_counter()
            capture = CudaGraphCapture()
            capture.warmup(lambda: (eager(), eager()))
            graph = capture.capture(eager)
            graph.instantiate()
            step = graph.replay
            torch.cuda.synchronize()
            self.capture_s += time.perf_counter() - t0
        self._graphs[key] = (cache, tok, pos, out, step)
        return self._graphs[key]

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, *, gen_length: int, **_):
        """prompt [B, P] -> (generated [B, gen_length], nfe = gen_length forwards)."""
        B, P = prompt.shape
        cache, tok, pos, out, step = self._decoder(B, P + gen_length)
        gen = torch.empty(B, gen_length, dtype=torch.long, device=prompt.device)
        gen[:, 0] = self._forward(cache, prompt, torch.arange(P, device=prompt.device), True)
        pos.fill_(P)
        for j in range(1, gen_length):
            tok.copy_(gen[:, j - 1:j])
            step()
            gen[:, j] = out
            pos.add_(1)
        return gen, gen_length


class HFLlamaBaseline:
    """(d) transformers' LlamaForCausalLM.generate, greedy, static cache, random weights built
    on the device in the model dtype (never an fp32 8B init on the CPU)."""

    name = "hf_llama_generate"

    def __init__(self, shape: dict, *, device: torch.device, dtype: torch.dtype) -> None:
        import transformers
        cfg = transformers.LlamaConfig(**shape)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                self.model = transformers.LlamaForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(prev)
        self.shape = shape

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, *, gen_length: int, **_):
        # transformers >= 4.50 compiles the forward of a static-cache generate on CUDA by
        # itself (minutes at 8B, inside the timed warm-up): this row is generate as it runs
        # without torch.compile, said so in its mode
        extra = {"disable_compile": True} if _has_disable_compile() else {}
        out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                  max_new_tokens=gen_length, min_new_tokens=gen_length,
                                  do_sample=False, cache_implementation="static", pad_token_id=0,
                                  **extra)
        return out[:, prompt.shape[1]:], gen_length


def _has_disable_compile() -> bool:
    import transformers
    return hasattr(transformers.GenerationConfig(), "disable_compile")


def llama_shape_for(config) -> dict:
    """Llama-3-8B's shape for the 8B preset; otherwise the LLaDA preset's own sizes."""
    if config.d_model == 4096 and config.n_layers == 32:
        return dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                    max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5)
    return dict(hidden_size=config.d_model, intermediate_size=config.mlp_hidden_size,
                num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
                num_key_value_heads=config.n_kv_heads, vocab_size=config.vocab_size,
                max_position_embeddings=config.max_sequence_length,
                rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps)
