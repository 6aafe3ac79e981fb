"""fastdiff._cpu_ops (csrc/cpu/fused_cpu.c) against the torch composition it replaces and
ops/reference.py: add + RMSNorm and RoPE + KV write on fp32 CPU tensors, odd widths (the
kernels' tail loops), GQA, QK-norm, slots -1, strided inputs; bad indices raise instead of
writing out of bounds; the engine's tokens equal the unfused torch path's; without the
extension TorchOps warns once and still decodes."""
from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from fastdiff import Engine, GenerationConfig, ModelConfig
from fastdiff.ops import cpu_fused
from fastdiff.ops import reference as ref
from fastdiff.ops.torch_backend import TorchOps
from kernel_checks import assert_close


@contextlib.contextmanager
def without_extension(monkeypatch):
    """TorchOps without the extension (its torch composition), warning already given."""
    with monkeypatch.context() as m:
        m.setattr(cpu_fused, "_ext", None)
        m.setattr(cpu_fused, "_warned", True)
        yield


def test_extension_is_built():
    """The install (setup.py) builds it; every CPU figure in benches/results assumes it."""
    assert cpu_fused.available(), "fastdiff._cpu_ops missing: reinstall with pip install -e ."


@pytest.mark.parametrize("rows,d", [(1, 256), (7, 37), (3, 300), (0, 64), (5, 15)])
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm(rows, d, with_delta):
    g = torch.Generator().manual_seed(rows * 1000 + d)
    x = torch.randn(2, rows, d, generator=g) * 3
    delta = torch.randn(2, rows, d, generator=g) if with_delta else None
    w = torch.rand(d, generator=g) + 0.5
    s, n = cpu_fused.add_rms_norm(x, delta, w, 1e-5)
    es, en = ref.add_rms_norm(x, delta, w, 1e-5)
    assert torch.equal(s, es)  # the sum is one fp32 add either way
    assert_close(n, en, 1e-6, 1e-6, "n")
    if delta is None:
        assert s is x or s.data_ptr() == x.data_ptr()  # no copy of the residual
    # strided input (a view that skips columns) is handled like its contiguous copy
    xs = torch.randn(rows, 2 * d, generator=g)[:, ::2]
    assert torch.equal(cpu_fused.add_rms_norm(xs, None, w, 1e-5)[1],
                       cpu_fused.add_rms_norm(xs.contiguous(), None, w, 1e-5)[1])


def test_add_rms_norm_shape_errors():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="do not match"):
        cpu_fused.add_rms_norm(x, None, torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="do not match"):
        cpu_fused.add_rms_norm(x, torch.randn(2, 8), torch.ones(8), 1e-5)


def _table(T, D):
    cos, sin = ref.rope_cos_sin(torch.arange(T)[None], D, 1e4)
    return cos[0, :, :D // 2].contiguous(), sin[0, :, :D // 2].contiguous()


def _rope_problem(B, S, H, Hkv, D, T, Tkv, seed):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, S, (H + 2 * Hkv) * D + 3, generator=g)[..., :(H + 2 * Hkv) * D]
    pos = torch.randint(0, T, (B, S), generator=g)
    slot = torch.stack([torch.randperm(Tkv, generator=g)[:S] for _ in range(B)]).int()
    slot[torch.rand(B, S, generator=g) < 0.3] = -1
    store = torch.randn(2, 2, B, Hkv, Tkv + 1, D, generator=g)  # + the trash slot
    return qkv, pos, slot, store


@pytest.mark.parametrize("B,S,H,Hkv,D", [(1, 32, 4, 4, 64), (2, 5, 6, 2, 16), (3, 7, 4, 1, 10),
                                         (1, 1, 2, 2, 128)])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_kv(B, S, H, Hkv, D, qk_norm, monkeypatch):
    T, Tkv = 50, S + 7
    qkv, pos, slot, store = _rope_problem(B, S, H, Hkv, D, T, Tkv, seed=B * 100 + S + D)
    cos, sin = _table(T, D)
    g = torch.Generator().manual_seed(3)
    norms = dict(q_norm=torch.rand(D, generator=g) + 0.5, k_norm=torch.rand(D, generator=g) + 0.5,
                 eps=1e-6) if qk_norm else {}
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D, **norms)
    before = store.clone()
    dest = store[1]  # layer 1 of a two-layer store: layer 0 must stay untouched
    q = cpu_fused.rope_kv(qkv, pos, slot, cos, sin, dest[0], dest[1], **kw)
    assert q.shape == (B, S, H, D) and q.is_contiguous()
    eq, ek, ev = ref.rope_kv(qkv, pos, slot, cos, sin, before[1, 0], before[1, 1], **kw)
    assert_close(q, eq.float(), 1e-6, 1e-6, "q")
    assert_close(dest[0, :, :, :Tkv], ek[:, :, :Tkv].float(), 1e-6, 1e-6, "k slots")
    assert torch.equal(dest[1, :, :, :Tkv], ev[:, :, :Tkv])
    assert torch.equal(store[0], before[0])
    written = torch.zeros(B, Tkv + 1, dtype=torch.bool)
    for b in range(B):
        for s in range(S):
            written[b, int(slot[b, s]) if slot[b, s] >= 0 else Tkv] = True
    for b in range(B):  # slots nobody addressed keep their values
        keep = ~written[b]
        assert torch.equal(dest[:, b, :, keep], before[1][:, b, :, keep])
    # the torch composition TorchOps runs without the extension: the same q and KV
    store2 = before.clone()
    with without_extension(monkeypatch):
        q2 = TorchOps.rope_kv(qkv, pos, slot, cos, sin, store2[1, 0], store2[1, 1], **kw)
    # (the trash slot Tkv, written by every slot -1, is left out: which write lands is unordered)
    kv, kv2 = store[..., :Tkv, :], store2[..., :Tkv, :]
    if not qk_norm:  # no reduction: the rotation is bitwise the torch ops' (no FMA contraction)
        assert torch.equal(q, q2) and torch.equal(kv, kv2)
    else:
        assert_close(q, q2, 1e-6, 1e-6, "q")
        assert_close(kv, kv2, 1e-6, 1e-6, "stored k/v")


def test_rope_kv_strided_positions_and_slots():
    """pos and slot as the step passes them: slot a row broadcast (stride 0 over B)."""
    B, S, H, Hkv, D, T, Tkv = 3, 6, 2, 1, 8, 20, 10
    qkv, pos, _, store = _rope_problem(B, S, H, Hkv, D, T, Tkv, seed=5)
    slot = torch.arange(2, 2 + S, dtype=torch.int32).expand(B, S)
    pos_t = pos.T.contiguous().T  # column-major
    cos, sin = _table(T, D)
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D)
    a = store.clone()
    q1 = cpu_fused.rope_kv(qkv, pos_t, slot, cos, sin, a[0, 0], a[0, 1], **kw)
    b = store.clone()
    q2 = cpu_fused.rope_kv(qkv, pos.contiguous(), slot.contiguous(), cos, sin, b[0, 0], b[0, 1],
                           **kw)
    assert torch.equal(q1, q2) and torch.equal(a, b)


def test_rope_kv_rejects_bad_indices_and_shapes():
    B, S, H, Hkv, D, T, Tkv = 1, 4, 2, 2, 8, 10, 6
    qkv, pos, slot, store = _rope_problem(B, S, H, Hkv, D, T, Tkv, seed=7)
    cos, sin = _table(T, D)
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D)
    before = store.clone()
    bad = pos.clone()
    bad[0, 2] = T  # past the table
    with pytest.raises(ValueError, match="outside the RoPE table"):
        cpu_fused.rope_kv(qkv, bad, slot, cos, sin, store[0, 0], store[0, 1], **kw)
    bad_slot = slot.clone()
    bad_slot[0, 0] = Tkv + 1  # the store has Tkv + 1 slots
    with pytest.raises(ValueError, match="store's length"):
        cpu_fused.rope_kv(qkv, pos, bad_slot, cos, sin, store[0, 0], store[0, 1], **kw)
    with pytest.raises(ValueError, match="qkv width"):
        cpu_fused.rope_kv(qkv, pos, slot, cos, sin, store[0, 0], store[0, 1], n_heads=3,
                          n_kv_heads=Hkv, head_dim=D)
    with pytest.raises(ValueError, match="int64"):
        cpu_fused.rope_kv(qkv, pos.int(), slot, cos, sin, store[0, 0], store[0, 1], **kw)
    assert torch.equal(store, before)  # a rejected call wrote nothing


def test_torch_ops_use_the_extension_for_fp32_cpu_only(monkeypatch):
    calls = []
    real = cpu_fused._ext

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(cpu_fused, "_ext", Spy())
    x = torch.randn(4, 16)
    TorchOps.add_rms_norm(x, x, torch.ones(16), 1e-5)
    assert calls == ["add_rms_norm"]
    TorchOps.add_rms_norm(x.bfloat16(), x.bfloat16(), torch.ones(16, dtype=torch.bfloat16), 1e-5)
    assert calls == ["add_rms_norm"]  # bf16 stays on the torch ops


CASES = [dict(cache="dual", steps=16), dict(cache="none", steps=16),
         dict(cache="prefix", threshold=0.5), dict(cache="dual", threshold=0.3, batch=3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_engine_tokens_equal_the_unfused_torch_path(case, monkeypatch):
    case = dict(case)
    batch = case.pop("batch", 1)
    eng = Engine.from_config(ModelConfig.preset("tiny"), device="cpu", dtype="float32",
                             backend="torch", graphs=False, max_batch_size=4, seed=3)
    g = torch.Generator().manual_seed(11)
    prompts = [[int(t) for t in torch.randint(0, 200, (n,), generator=g)]
               for n in (9, 5, 12)[:batch]]  # ragged: padding rows in the batch case
    gen = GenerationConfig(gen_length=32, block_length=16, seed=0, **case)
    fused = eng.generate(prompts, gen)
    with without_extension(monkeypatch):
        plain = eng.generate(prompts, gen)
    assert [o.token_ids for o in fused] == [o.token_ids for o in plain]
    assert [o.nfe for o in fused] == [o.nfe for o in plain]


def test_missing_extension_warns_once_and_decodes(monkeypatch, caplog):
    monkeypatch.setattr(cpu_fused, "_ext", None)
    monkeypatch.setattr(cpu_fused, "_warned", False)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="fastdiff"):
        s, n = TorchOps.add_rms_norm(x, x, torch.ones(8), 1e-5)
        TorchOps.add_rms_norm(x, x, torch.ones(8), 1e-5)
    hits = [r for r in caplog.records if "_cpu_ops is not built" in r.getMessage()]
    assert len(hits) == 1 and "pip install -e ." in hits[0].getMessage()
    assert_close(n, ref.add_rms_norm(x, x, torch.ones(8), 1e-5)[1], 1e-6, 1e-6, "n")
