"""The LLaDA forward against two independent implementations: the spec transcription in
fastdiff/decoding/reference.py (fp64) and Hugging Face transformers' Llama modules run with a
bidirectional mask and renamed weights."""
import json

import pytest
import torch

from fastdiff.decoding import reference as R
from fastdiff.models import load_checkpoint, load_weights
from fastdiff.models.llada import PREFIX


def _inputs(cfg, B=3, L=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (B, L), generator=g)
    x[:, L // 2:] = cfg.mask_token_id
    pads = torch.tensor([0, 3, 5][:B])
    am = torch.arange(L)[None] >= pads[:, None]
    x = torch.where(am, x, torch.full_like(x, cfg.pad_token_id))
    return x, am, pads


def _engine_logits(model, x, pads):
    B, L = x.shape
    pos = (torch.arange(L)[None] - pads[:, None]).clamp(min=0)
    h = model.forward(x, pos, pads.to(torch.int32), torch.full((B,), L, dtype=torch.int32))
    return model.logits(h)


@pytest.mark.parametrize("which", ["tiny_ckpt", "gqa_ckpt"])
def test_forward_matches_spec_transcription(which, request):
    path = request.getfixturevalue(which)
    ck = load_checkpoint(path, dtype=torch.float32)
    x, am, pads = _inputs(ck.config)
    got = _engine_logits(ck.model, x, pads)
    W = load_weights(path, ck.config, dtype=torch.float32)
    want = R.llada_logits(W, json.loads((path / "config.json").read_text()), x, am)
    real = am  # pad query rows are never read
    err = (got.double() - want)[real].abs().max().item()
    assert err < 2e-3 * want[real].abs().max().item(), err
    assert torch.equal(got[real].argmax(-1), want[real].argmax(-1))


def _hf_llama(cfg, W):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as M
    hc = transformers.LlamaConfig(
        vocab_size=cfg.embedding_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_sequence_length,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, hidden_act="silu")
    hc._attn_implementation = "eager"
    layers = torch.nn.ModuleList([M.LlamaDecoderLayer(hc, i) for i in range(cfg.n_layers)])
    rename = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
              "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
              "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
              "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
    sd = {f"{i}.{hf}.weight": W[f"{PREFIX}blocks.{i}.{ours}.weight"]
          for i in range(cfg.n_layers) for ours, hf in rename.items()}
    layers.load_state_dict(sd, strict=True)
    norm = M.LlamaRMSNorm(cfg.d_model, eps=cfg.rms_norm_eps)
    norm.weight.data.copy_(W[PREFIX + "ln_f.weight"])
    return layers, norm, M.LlamaRotaryEmbedding(hc)


@pytest.mark.parametrize("which", ["tiny_ckpt", "gqa_ckpt"])
def test_forward_matches_transformers_llama_bidirectional(which, request):
    path = request.getfixturevalue(which)
    ck = load_checkpoint(path, dtype=torch.float32)
    cfg = ck.config
    W = load_weights(path, cfg, dtype=torch.float32)
    layers, norm, rotary = _hf_llama(cfg, W)
    x, am, pads = _inputs(cfg)
    B, L = x.shape
    pos = (torch.arange(L)[None] - pads[:, None]).clamp(min=0)
    mask = torch.zeros(B, 1, L, L).masked_fill(~am[:, None, None, :], float("-inf"))  # no causal
    with torch.no_grad():
        h = W[PREFIX + "wte.weight"][x]
        pe = rotary(h, pos)
        for layer in layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
            h = h[0] if isinstance(h, tuple) else h
        want = norm(h) @ W[PREFIX + "ff_out.weight"].T
    got = _engine_logits(ck.model, x, pads)
    err = (got - want)[am].abs().max().item()
    assert err < 1e-3 * want[am].abs().max().item(), err
    assert torch.equal(got[am].argmax(-1), want[am].argmax(-1))


def test_left_padding_does_not_change_a_row(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt, dtype=torch.float32)
    x, am, pads = _inputs(ck.config)
    batched = _engine_logits(ck.model, x, pads)
    for b in range(3):
        alone = _engine_logits(ck.model, x[b:b + 1, int(pads[b]):], torch.zeros(1, dtype=torch.long))
        assert torch.allclose(batched[b, int(pads[b]):], alone[0], atol=1e-4, rtol=1e-4)
