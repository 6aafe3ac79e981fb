"""The torch backend against the oracles in fastdiff/ops/reference.py."""
import pytest
import torch

from fastdiff.ops import TorchOps
from fastdiff.ops import reference as ref

ops = TorchOps()


def first_mismatch(a, b, atol=0, rtol=0):
    bad = ~torch.isclose(a, b, atol=atol, rtol=rtol) if a.is_floating_point() else a != b
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        return f"first mismatch at {i}: {a[i].item()} vs {b[i].item()} ({int(bad.sum())} total)"
    return None


def test_philox_known_answers():
    # Random123 known-answer vectors for philox4x32-10
    got = [int(v) for v in ref.philox4x32(0, 0, 0, 0, 0, 0)]
    assert got == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    got = [int(v) for v in ref.philox4x32(m, m, m, m, m, m)]
    assert got == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    got = [int(v) for v in ref.philox4x32(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344,
                                          0xA4093822, 0x299F31D0)]
    assert got == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniform_range_and_independence():
    u = ref.uniform(torch.tensor(12345), torch.tensor(3), torch.arange(64)[:, None],
                    torch.arange(1000)[None])
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003
    other = ref.uniform(torch.tensor(12346), torch.tensor(3), torch.arange(64)[:, None],
                        torch.arange(1000)[None])
    assert (u != other).float().mean() > 0.999  # a different seed gives different draws


@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 5, 17), (2, 7, 64)])
def test_rms_norm(shape):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=g) * 3, torch.randn(shape[-1], generator=g)
    assert first_mismatch(ops.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), 1e-6, 1e-5) is None


def test_rope_matches_reference_and_is_relative():
    g = torch.Generator().manual_seed(0)
    B, S, H, D = 2, 9, 3, 16
    pos = torch.arange(S).expand(B, S) + torch.tensor([[0], [5]])
    cos, sin = ops.rope_cos_sin(pos, D, 10000.0)
    q, k = torch.randn(B, S, H, D, generator=g), torch.randn(B, S, H, D, generator=g)
    q_r = ops.apply_rope(q, cos, sin)
    assert first_mismatch(q_r, ref.apply_rope(q, cos, sin), 1e-6, 1e-5) is None
    # Scores depend on relative positions only: shifting a row's positions changes nothing.
    k_r = ops.apply_rope(k, cos, sin)
    cos0, sin0 = ops.rope_cos_sin(torch.arange(S).expand(B, S), D, 10000.0)
    s_shift = torch.einsum("bqhd,bkhd->bhqk", q_r, k_r)
    s_base = torch.einsum("bqhd,bkhd->bhqk", ops.apply_rope(q, cos0, sin0),
                          ops.apply_rope(k, cos0, sin0))
    assert torch.allclose(s_shift, s_base, atol=1e-4)


@pytest.mark.parametrize("B, Sq, Skv, H, Hkv, D", [(1, 1, 1, 1, 1, 8), (3, 5, 11, 4, 2, 16),
                                                  (2, 13, 13, 6, 3, 32), (2, 4, 37, 2, 2, 8)])
def test_attention_padding_gqa_sq_ne_skv(B, Sq, Skv, H, Hkv, D):
    g = torch.Generator().manual_seed(B * 100 + Skv)
    q = torch.randn(B, Sq, H, D, generator=g)
    big_k = torch.randn(B, Skv + 3, Hkv, D, generator=g)  # strided (sliced) k/v
    k, v = big_k[:, 2:Skv + 2], torch.randn(B, Skv, Hkv, D, generator=g)
    start = torch.tensor([min(i, Skv - 1) for i in range(B)], dtype=torch.int32)
    end = torch.tensor([Skv - (i % 2) if Skv > 1 else 1 for i in range(B)], dtype=torch.int32)
    out = ops.attention(q, k, v, start, end)
    assert first_mismatch(out, ref.attention(q, k, v, start, end), 1e-5, 1e-4) is None


@pytest.mark.parametrize("B, Sq, Skv, H, Hkv, D, bk, q_start", [
    (2, 13, 13, 4, 1, 16, 4, 0),  # prefill, GQA 4:1
    (3, 7, 30, 7, 1, 8, 3, 20),  # odd block, q_start > 0, 7:1, a suffix past the block
    (1, 16, 16, 2, 2, 8, 16, 0)])  # one block: no mask beyond the range
def test_attention_block_causal(B, Sq, Skv, H, Hkv, D, bk, q_start):
    g = torch.Generator().manual_seed(Sq * 10 + bk)
    q = torch.randn(B, Sq, H, D, generator=g)
    big_k = torch.randn(B, Skv + 3, Hkv, D, generator=g)  # strided (sliced) k/v
    k, v = big_k[:, 1:Skv + 1], torch.randn(B, Skv, Hkv, D, generator=g)
    start = torch.tensor([bk * (i % 2) for i in range(B)], dtype=torch.int32)  # aligned padding
    end = torch.full((B,), Skv, dtype=torch.int32)
    kw = dict(block_causal=bk, q_start=q_start)
    out = ops.attention(q, k, v, start, end, **kw)
    want = ref.attention(q, k, v, start, end, **kw)
    ok = ~want.isnan().any(-1).any(-1)  # [B, Sq]: queries with an allowed key
    assert ok.sum() >= B * Sq - bk * (B // 2)
    assert first_mismatch(out[ok], want[ok], 1e-5, 1e-4) is None
    if (q_start + Sq) // bk > 0 and bk < Skv:  # the mask does something here
        assert first_mismatch(out[ok], ref.attention(q, k, v, start, end)[ok], 1e-5, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_kv_qk_norm(dtype):
    """QK-norm (fp32, weight product in fp32) before RoPE, one rounding: the torch backend
    against the reference; the reference's norm against torch's own rms_norm in fp32."""
    g = torch.Generator().manual_seed(1)
    B, S, H, Hkv, D, T, Tkv = 2, 5, 6, 2, 16, 20, 8
    qkv = (torch.randn(B, S, (H + 2 * Hkv) * D, generator=g) * 5).to(dtype)
    pos = torch.randint(0, T, (B, S), generator=g)
    slot = torch.tensor([[0, 2, -1, 4, 5], [1, -1, 3, 0, 6]], dtype=torch.int32)
    cos, sin = ref.rope_cos_sin(torch.arange(T)[None], D, 1e4)
    cos, sin = cos[0, :, :D // 2].contiguous(), sin[0, :, :D // 2].contiguous()
    qn, kn = (torch.rand(2, D, generator=g) + 0.5).to(dtype)
    store = torch.zeros(2, B, Hkv, Tkv + 1, D, dtype=dtype)  # + the trash slot for slot -1
    kw = dict(n_heads=H, n_kv_heads=Hkv, head_dim=D, q_norm=qn, k_norm=kn, eps=1e-6)
    eq, ek, ev = ref.rope_kv(qkv, pos, slot, cos, sin, store[0], store[1], **kw)
    q = ops.rope_kv(qkv, pos, slot, cos, sin, store[0], store[1], **kw)
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert first_mismatch(q.float(), eq.float(), tol, tol) is None
    assert first_mismatch(store[0, :, :, :Tkv].float(), ek[:, :, :Tkv].float(), tol, tol) is None
    assert torch.equal(store[1, :, :, :Tkv], ev[:, :, :Tkv])
    x = qkv.view(B, S, H + 2 * Hkv, D)[:, :, :H].float()
    torch_norm = torch.nn.functional.rms_norm(x, (D,), qn.float(), 1e-6)
    assert first_mismatch(ref.qk_norm(x, qn, 1e-6), torch_norm, 1e-6, 1e-5) is None
    with pytest.raises(ValueError, match="go together"):
        ops.rope_kv(qkv, pos, slot, cos, sin, store[0], store[1], n_heads=H, n_kv_heads=Hkv,
                    head_dim=D, q_norm=qn)


def test_silu_mul():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 33, generator=g), torch.randn(4, 33, generator=g)
    assert first_mismatch(ops.silu_mul(a, b), ref.silu_mul(a, b), 1e-6, 1e-5) is None


def _head_inputs(B=3, S=10, Lb=6, d=16, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, d, generator=g)
    W = torch.randn(V, d, generator=g) * 1.5
    row_map = torch.randint(0, S, (B, Lb), generator=g, dtype=torch.int64).to(torch.int32)
    row_map[0, 1] = -1
    row_map[2, :2] = -1
    return hidden, row_map, W


@pytest.mark.parametrize("mode", list(ref.CONF_MODES))
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True)])
def test_lm_head_confidence_matches_reference(mode, temperature, flags):
    hidden, row_map, W = _head_inputs()
    B = hidden.shape[0]
    kw = dict(mode=mode, temperature=temperature, seed=torch.tensor([5, 5, 9]),
              step=torch.tensor([0, 3, 1]), pos_base=torch.tensor([0, 8, 16]), eos_id=3, eot_id=4,
              suppress_eos=flags[0], eos_eot_conf=flags[1])
    x0, conf = ops.lm_head_confidence(hidden, row_map, W, **kw)
    rx0, rconf = ref.lm_head_confidence(hidden, row_map, W, **kw)
    scored = row_map >= 0
    assert first_mismatch(x0[scored], rx0[scored]) is None
    assert first_mismatch(conf, rconf, 1e-6, 1e-5) is None
    assert torch.isinf(conf[~scored]).all() and (conf[~scored] < 0).all()
    if flags[0]:
        assert not (x0[scored] == 3).any()
    assert x0.shape == conf.shape == (B, 6) and x0.dtype == torch.int64


def test_eos_eot_confidence_rule():
    hidden, row_map, W = _head_inputs(seed=1)
    W[3] = hidden.mean((0, 1)) * 50  # make EOS (id 3) the argmax almost everywhere
    x0, conf = ops.lm_head_confidence(
        hidden, row_map, W, mode="low_confidence", temperature=0.0, seed=torch.zeros(3, dtype=torch.long),
        step=torch.zeros(3, dtype=torch.long), pos_base=torch.zeros(3, dtype=torch.long),
        eos_id=3, eot_id=4, suppress_eos=False, eos_eot_conf=True)
    eos = (x0 == 3) & (row_map >= 0)
    assert eos.any() and (conf[eos] == -1).all()
    assert (conf[~eos & (row_map >= 0)] > 0).all()


def test_gumbel_sampler_frequencies_follow_softmax():
    """x0 at temperature T is a draw from softmax(logits / T): chi-square over 4000 draws."""
    torch.manual_seed(0)
    V, d, T, n = 6, 4, 0.8, 4000
    hidden = torch.randn(1, 1, d)
    W = torch.randn(V, d)
    logits = (hidden[0, 0] @ W.T).double()
    p = torch.softmax(logits / T, -1)
    row_map = torch.zeros(n, 1, dtype=torch.int32)
    x0, _ = ops.lm_head_confidence(
        hidden.expand(n, 1, d), row_map, W, mode="low_confidence", temperature=T,
        seed=torch.full((n,), 42), step=torch.arange(n), pos_base=torch.zeros(n, dtype=torch.long),
        eos_id=0, eot_id=None, suppress_eos=False, eos_eot_conf=False)
    counts = torch.bincount(x0[:, 0], minlength=V).double()
    expected = p * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # 5 degrees of freedom: P(chi2 > 20.5) = 0.001
    assert chi2 < 20.5, (counts.tolist(), expected.tolist())


@pytest.mark.parametrize("k", [[1, 1, 1], [3, 0, 5], [6, 2, 4]])
def test_select_topk_commit(k):
    g = torch.Generator().manual_seed(sum(k))
    B, L, Lb = 3, 12, 6
    x = torch.full((B, L), 99)
    conf = torch.rand(B, Lb, generator=g)
    conf[0, 2] = conf[0, 4] = 0.95  # exact tie: lowest index first
    conf[1, 0] = float("-inf")  # never committed
    conf[2, :2] = float("-inf")
    x0 = torch.randint(0, 50, (B, Lb), generator=g)
    start = torch.tensor([2, 4, 6], dtype=torch.int32)
    kk = torch.tensor(k)
    want = ref.select_topk_commit(x, x0, conf, start, kk)
    got = x.clone()
    ops.select_topk_commit(got, x0, conf, start, kk)
    assert first_mismatch(got, want) is None
    assert int((got != x).sum()) == sum(min(ki, int(torch.isfinite(c).sum())) for ki, c in zip(k, conf))


def test_block_causal_query_without_keys_gets_zeros():
    """A padding query of a block-padded row sees no key in the prefill: zeros (as the Triton
    kernel), never SDPA's backend-dependent value, so no NaN can reach a padding slot's K/V."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 2, 16, generator=g) for _ in range(3))
    start = torch.tensor([0, 4], dtype=torch.int32)  # row 1: columns 0-3 are padding
    end = torch.full((2,), 8, dtype=torch.int32)
    out = TorchOps.attention(q, k, v, start, end, block_causal=4, q_start=0)
    assert torch.equal(out[1, :4], torch.zeros_like(out[1, :4]))
    assert torch.isfinite(out).all() and out[0, :4].abs().sum() > 0


@pytest.mark.parametrize("bk, q_start", [(0, 0), (4, 0), (3, 20)])
def test_attention_kv_full_skips_only_the_span_mask(bk, q_start):
    """kv_full (the host knows every row attends all keys): the same result as the span mask
    [0, Skv) it skips, with and without the block-causal mask."""
    g = torch.Generator().manual_seed(bk)
    B, Sq, Skv, H, Hkv, D = 2, 7, 30, 4, 2, 8
    q = torch.randn(B, Sq, H, D, generator=g)
    k, v = torch.randn(2, B, Skv, Hkv, D, generator=g)
    start = torch.zeros(B, dtype=torch.int32)
    end = torch.full((B,), Skv, dtype=torch.int32)
    kw = dict(block_causal=bk, q_start=q_start)
    full = ops.attention(q, k, v, start, end, kv_full=True, **kw)
    assert first_mismatch(full, ops.attention(q, k, v, start, end, **kw), 1e-6, 1e-6) is None
    assert first_mismatch(full, ref.attention(q, k, v, start, end, **kw), 1e-5, 1e-4) is None
