"""fastdiff/ops/cpu_gemm.py: oneDNN-packed fp32 weights for the CPU GEMMs. The packed GEMM
equals x @ w.T within fp32 summation error at every row count, with bias and strided inputs;
the packed form gives the matrix back exactly; what gets packed (fp32 CPU only, not with
FASTDIFF_CPU_PACK=0, not when packing fails); a CPU fp32 model stores its four layer matrices
packed only (no dense copy) and its LM head with a packed copy attached, and its tokens equal
the unpacked model's."""
from __future__ import annotations

import logging

import pytest
import torch

from fastdiff import Engine, GenerationConfig, ModelConfig
from fastdiff.models.transformer import DLLMModel
from fastdiff.models.writer import random_weights
from fastdiff.ops import TorchOps, cpu_gemm
from kernel_checks import assert_close


def _w(out, inp, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) / inp ** 0.5


@pytest.mark.parametrize("rows", [1, 3, 16, 32, 37, 384])
def test_packed_linear_matches_matmul(rows):
    wd = _w(200, 96)
    w = cpu_gemm.pack(wd)
    assert cpu_gemm.is_packed(w) and w.is_mkldnn and torch.equal(cpu_gemm.dense(w), wd)
    head = cpu_gemm.attach(_w(200, 96))  # dense, with the packed form hung on it
    assert cpu_gemm.is_packed(head) and not head.is_mkldnn and torch.equal(head, wd)
    x = torch.randn(2, rows, 96, generator=torch.Generator().manual_seed(rows))
    want = (x.double() @ wd.double().T).float()
    assert_close(cpu_gemm.linear(x, head), want, 1e-5, 1e-5, "x @ head.T")
    assert_close(cpu_gemm.linear(x, w), want, 1e-5, 1e-5, "x @ w.T")
    b = torch.randn(200)
    assert_close(cpu_gemm.linear(x, w, b), want + b, 1e-5, 1e-5, "x @ w.T + b")
    xs = torch.randn(rows, 192)[:, ::2]  # strided rows
    assert_close(cpu_gemm.linear(xs, w), (xs.double() @ wd.double().T).float(), 1e-5, 1e-5,
                 "strided x")


def test_what_gets_packed(monkeypatch):
    assert not cpu_gemm.is_packed(cpu_gemm.pack(_w(8, 8).bfloat16()))  # fp32 only
    monkeypatch.setenv("FASTDIFF_CPU_PACK", "0")
    w = cpu_gemm.pack(_w(8, 8))
    assert not cpu_gemm.is_packed(w)
    x = torch.randn(3, 8)
    assert torch.equal(cpu_gemm.linear(x, w), x @ w.T)  # unpacked: the plain matmul


def test_packing_failure_warns_and_leaves_the_weight_plain(monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no oneDNN here")
    monkeypatch.setattr(cpu_gemm, "_supported", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken, raising=False)
    with caplog.at_level(logging.WARNING, logger="fastdiff"):
        w = cpu_gemm.pack(_w(8, 8))
    assert not cpu_gemm.is_packed(w)
    assert any("packing failed" in r.getMessage() for r in caplog.records)


def test_cpu_fp32_model_packs_its_gemm_weights():
    cfg = ModelConfig.preset("tiny")
    weights = random_weights(cfg, seed=0)
    model = DLLMModel(cfg, weights, TorchOps())
    for i, layer in enumerate(model.layers):
        assert all(layer.gemm[role].is_mkldnn for role in layer.gemm)  # no dense copy kept
        p = f"model.transformer.blocks.{i}."
        assert torch.equal(layer.q_proj, weights[p + "q_proj.weight"])  # dense views give back
        assert torch.equal(layer.up_proj, weights[p + "up_proj.weight"])  # the published values
        assert torch.equal(layer.ff_out, weights[p + "ff_out.weight"])
        assert layer.tensors()[1].shape == layer.qkv.shape
    assert cpu_gemm.is_packed(model.head) and model.head.shape[0] == cfg.vocab_size
    bf = DLLMModel(cfg, random_weights(cfg, seed=0, dtype=torch.bfloat16), TorchOps())
    assert not any(t.is_mkldnn for t in bf.layers[0].gemm.values())
    assert not cpu_gemm.is_packed(bf.head)


@pytest.mark.parametrize("gen", [dict(cache="dual", steps=16), dict(cache="none", threshold=0.5),
                                 dict(cache="prefix", threshold=0.3)], ids=str)
def test_engine_tokens_equal_the_unpacked_model(gen, monkeypatch):
    def engine():
        return Engine.from_config(ModelConfig.preset("tiny"), device="cpu", dtype="float32",
                                  backend="torch", graphs=False, seed=5)
    packed = engine()
    monkeypatch.setenv("FASTDIFF_CPU_PACK", "0")
    plain = engine()
    assert cpu_gemm.is_packed(packed.model.head) and not cpu_gemm.is_packed(plain.model.head)
    g = torch.Generator().manual_seed(2)
    prompts = [[int(t) for t in torch.randint(0, 200, (n,), generator=g)] for n in (7, 12)]
    cfg = GenerationConfig(gen_length=32, block_length=16, seed=0, **gen)
    a, b = packed.generate(prompts, cfg), plain.generate(prompts, cfg)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.nfe for o in a] == [o.nfe for o in b]
