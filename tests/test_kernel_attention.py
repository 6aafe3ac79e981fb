"""Attention kernel vs reference.attention (fp64) under the interpreter, plain and block-causal
(block diffusion's prefill); bf16 at LLaDA-8B and SDAR shapes on a GPU."""
from __future__ import annotations

import pytest
import torch
import triton

from fastdiff.kernels import attention as at
from fastdiff.ops import reference as ref
from kernel_checks import assert_close, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, at, "_attention_kernel")


def _qkv(B, Sq, H, Hkv, D, Skv, dtype, seed, device="cpu", pad=(3, 5)):
    """q contiguous; k/v strided views into a bigger [B, Hkv, cap, D] cache (as the KV cache is
    stored), so the kernel must honour their strides."""
    g = torch.Generator(device=device).manual_seed(seed)
    cap = Skv + sum(pad)
    cache = torch.randn(2, B, Hkv, cap, D, generator=g, device=device).to(dtype)
    k = cache[0].transpose(1, 2)[:, pad[0]:pad[0] + Skv]
    v = cache[1].transpose(1, 2)[:, pad[0]:pad[0] + Skv]
    q = torch.randn(B, Sq, H, D, generator=g, device=device).to(dtype)
    return q, k, v


def _ranges(B, Skv, seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, max(1, Skv // 3), (B,), generator=g, dtype=torch.int32)
    end = torch.randint(Skv // 2 + 1, Skv + 1, (B,), generator=g, dtype=torch.int32)
    start[0], end[0] = 0, Skv  # one row with the full range
    return start, torch.maximum(end, start + 1)


CASES = [  # B, Sq, H, Hkv, D, Skv, num_splits
    (1, 1, 1, 1, 32, 1, None),  # one query, one key
    (2, 5, 4, 2, 32, 77, None),  # GQA, Sq != Skv, odd lengths
    (2, 5, 4, 2, 32, 77, 3),  # split-KV: 3 chunks of whole key tiles, some rows miss one
    (3, 17, 6, 2, 64, 50, 2),  # GQA 3:1, Sq just over a 16-row tile
    (1, 32, 2, 1, 128, 130, 2),  # a 32-token block over a longer cache, head_dim 128
    (2, 70, 2, 2, 32, 45, None),  # Sq > 64: the non-split prefill path, two query tiles
    (1, 32, 7, 1, 32, 90, 2),  # Dream's 7:1 GQA: 224 packed rows of a split 32-token block
    (2, 9, 14, 2, 64, 40, None),  # 7:1, 63 packed rows per KV head, padded batch
]


def _kv_splits(Sq, D, Skv, splits, dtype, group=1) -> int:
    """KV splits the launcher makes of a requested count: chunks of whole BLOCK_N key tiles
    (tiles picked for the group x Sq packed rows of a KV head)."""
    if not splits or Sq > at.SPLIT_MAX_SQ:
        return 1
    bn = at.pick_config(group * Sq, D, dtype)["BLOCK_N"]
    chunk = triton.cdiv(triton.cdiv(Skv, splits), bn) * bn
    return triton.cdiv(Skv, chunk)


@pytest.mark.parametrize("B,Sq,H,Hkv,D,Skv,splits", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(monkeypatch, B, Sq, H, Hkv, D, Skv, splits, dtype):
    fwd = count_launches(monkeypatch, at, "_attention_kernel")
    comb = count_launches(monkeypatch, at, "_attention_combine_kernel")
    q, k, v = _qkv(B, Sq, H, Hkv, D, Skv, dtype, seed=Sq * 7 + Skv)
    assert k.stride(-1) == 1 and k.storage_offset() > 0  # a slice of a bigger cache
    start, end = _ranges(B, Skv, seed=Skv)
    out = at.attention(q, k, v, start, end, num_splits=splits)
    expect = ref.attention(q, k, v, start, end)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, expect, TOL[dtype], TOL[dtype], f"attention {dtype}")
    assert fwd.launches == 1
    assert fwd.grids[0][1] == B * Hkv  # GQA: one program column per KV head, K/V loaded once
    n_splits = _kv_splits(Sq, D, Skv, splits, dtype, H // Hkv)
    assert n_splits > 1 or not splits or Skv <= 64  # a long cache does split: the merge runs
    assert comb.launches == (1 if n_splits > 1 else 0)


def test_bf16_via_interpreter_upcast():
    """bf16 inputs (upcast inside the kernel under the interpreter): relative error against the
    fp64 result at most 2x the torch backend's own bf16 error."""
    from fastdiff.ops.torch_backend import TorchOps
    q, k, v = _qkv(2, 6, 4, 2, 64, 45, torch.bfloat16, seed=1)
    start, end = _ranges(2, 45, seed=2)
    exact = ref.attention(q.double(), k.double(), v.double(), start, end)
    out = at.attention(q, k, v, start, end, num_splits=1)
    err = float((out.double() - exact).norm() / exact.norm())
    err_torch = float((TorchOps.attention(q, k, v, start, end).double() - exact).norm()
                      / exact.norm())
    assert out.dtype == torch.bfloat16 and err <= 2 * err_torch + 1e-6, (err, err_torch)


def test_strided_q_and_empty_range():
    """q as a view with head stride != D; a row whose range is empty gets zeros (documented)."""
    B, Sq, H, D, Skv = 2, 3, 2, 32, 20
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, Sq, 3, H, D, generator=g)  # fused projection layout
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # Skv = Sq here
    start = torch.tensor([0, 2], dtype=torch.int32)
    end = torch.tensor([3, 2], dtype=torch.int32)
    out = at.attention(q, k, v, start, end)
    assert_close(out[0], ref.attention(q, k, v, start, end)[0], 2e-5, 2e-5, "strided q")
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for splits in (2,):
        kk = torch.randn(1, 130, 1, D, generator=g)
        start = torch.tensor([70], dtype=torch.int32)
        end = torch.tensor([70], dtype=torch.int32)
        out = at.attention(torch.randn(1, 2, 1, D), kk, kk, start, end, num_splits=splits)
        assert torch.equal(out, torch.zeros_like(out))


def _allowed(Sq, Skv, start, end, bk, q_start):
    """[B, Sq, Skv] bool: key n in [start_b, end_b) and n // bk <= (q_start + m) // bk."""
    n = torch.arange(Skv)
    m = q_start + torch.arange(Sq)
    rng = (n[None] >= start[:, None].long()) & (n[None] < end[:, None].long())  # [B, Skv]
    return rng[:, None, :] & (n[None, :] // bk <= m[:, None] // bk)[None]


BC_CASES = [  # B, Sq, H, Hkv, D, Skv, bk, q_start, starts, splits
    (2, 70, 4, 1, 32, 70, 4, 0, (0, 8), None),  # prefill, Sq > 64, GQA 4:1, pad a multiple of bk
    (3, 17, 2, 2, 64, 17, 3, 0, (0, 3, 5), None),  # odd bk, pad 5: a block with no key at all
    (1, 33, 7, 1, 32, 60, 16, 9, (0,), None),  # 7:1 (packed rows cross heads), q_start > 0
    (2, 20, 4, 2, 32, 60, 8, 32, (0, 5), 2),  # split-KV, queries at columns 32..51
    (2, 12, 8, 2, 128, 90, 4, 70, (0, 6), 3),  # SDAR's head dim and GQA, split over a cache
]


@pytest.mark.parametrize("B,Sq,H,Hkv,D,Skv,bk,q_start,starts,splits", BC_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_block_causal_matches_reference(monkeypatch, B, Sq, H, Hkv, D, Skv, bk, q_start,
                                        starts, splits, dtype):
    """Key block <= query block on top of the per-row ranges; a query with no allowed key (left
    padding that is not a multiple of bk) gets zeros; keys past the last query's block are
    never read (NaN there stays out of the result)."""
    fwd = count_launches(monkeypatch, at, "_attention_kernel")
    q, k, v = _qkv(B, Sq, H, Hkv, D, Skv, dtype, seed=Sq + bk)
    start = torch.tensor(starts, dtype=torch.int32)
    end = torch.full((B,), Skv, dtype=torch.int32)
    end[1:] -= 2  # a key range ending inside the last query block
    expect = ref.attention(q, k, v, start, end, block_causal=bk, q_start=q_start)
    plain = ref.attention(q, k, v, start, end)
    past = (q_start + Sq - 1) // bk * bk + bk  # first key column no query may see
    assert past < Skv or Sq == Skv
    k[:, past:] = float("nan")  # a suffix after the last block (prefix-cache layout): unread
    v[:, past:] = float("nan")
    out = at.attention(q, k, v, start, end, block_causal=bk, q_start=q_start, num_splits=splits)
    assert fwd.launches == 1 and out.dtype == dtype and out.shape == q.shape
    some = _allowed(Sq, Skv, start, end, bk, q_start).any(-1)  # [B, Sq]
    assert_close(out[some], expect[some], TOL[dtype], TOL[dtype], f"block-causal bk={bk}")
    assert torch.equal(out[~some], torch.zeros_like(out[~some])), "no allowed key: zeros"
    assert not torch.allclose(plain[some], expect[some], atol=1e-3), "the mask changes nothing"


@pytest.mark.parametrize("splits", [1, 2])
def test_block_causal_wider_than_keys_equals_plain(splits):
    """A block covering every key is no mask: bit-equal to the plain path (the causal variant
    changes no arithmetic)."""
    q, k, v = _qkv(2, 9, 4, 2, 32, 40, torch.float32, seed=4)
    start, end = _ranges(2, 40, seed=5)
    plain = at.attention(q, k, v, start, end, num_splits=splits)
    wide = at.attention(q, k, v, start, end, block_causal=64, q_start=3, num_splits=splits)
    assert torch.equal(wide, plain)


def test_launcher_errors():
    q, k, v = _qkv(1, 2, 2, 1, 32, 8, torch.float32, seed=0)
    s, e = torch.tensor([0], dtype=torch.int32), torch.tensor([8], dtype=torch.int32)
    with pytest.raises(ValueError, match="head_dim"):
        at.attention(q[..., :24], k[..., :24], v[..., :24], s, e)
    with pytest.raises(ValueError, match="int32"):
        at.attention(q, k, v, s.long(), e)
    with pytest.raises(ValueError, match="multiple"):
        at.attention(q[:, :, :1].expand(1, 2, 3, 32), k.expand(1, 8, 2, 32), v.expand(1, 8, 2, 32),
                     s, e)
    with pytest.raises(ValueError, match="contiguous"):
        at.attention(q.transpose(2, 3).contiguous().transpose(2, 3), k, v, s, e)
    with pytest.raises(ValueError, match="share"):
        at.attention(q.half(), k, v, s, e)
    with pytest.raises(ValueError, match="block_causal"):
        at.attention(q, k, v, s, e, block_causal=-1)
    with pytest.raises(ValueError, match="q_start"):
        at.attention(q, k, v, s, e, block_causal=4, q_start=-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("B,Sq,Skv", [(1, 32, 2048), (4, 32, 1024), (2, 512, 512)])
def test_gpu_llada_8b_shapes_bf16(B, Sq, Skv):
    """bf16 at LLaDA-8B's attention shape (32 heads x 128): error against the fp32/fp64 result
    at most 2x PyTorch SDPA's own bf16 error."""
    from fastdiff.ops.torch_backend import TorchOps
    H, D = 32, 128
    q, k, v = _qkv(B, Sq, H, H, D, Skv, torch.bfloat16, seed=B * Sq, device="cuda", pad=(0, 64))
    start = torch.randint(0, 64, (B,), dtype=torch.int32, device="cuda")
    start[0] = 0
    end = torch.full((B,), Skv, dtype=torch.int32, device="cuda")
    exact = ref.attention(q.double(), k.double(), v.double(), start, end)
    out = at.attention(q, k, v, start, end)
    sdpa = TorchOps.attention(q, k, v, start, end)
    err = (out.double() - exact).norm() / exact.norm()
    err_sdpa = (sdpa.double() - exact).norm() / exact.norm()
    assert torch.isfinite(out).all()
    assert err <= 2 * err_sdpa + 1e-6, f"kernel {err:.3e} vs SDPA {err_sdpa:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("B,Sq,bk,pad", [(1, 1024, 4, 0), (2, 512, 16, 32), (2, 256, 4, 6)])
def test_gpu_sdar_block_causal_prefill_bf16(B, Sq, bk, pad):
    """SDAR-4B/8B attention (32 / 8 heads x 128): the block-causal prefill in bf16, error against
    fp64 at most 2x SDPA's with the same boolean mask (rows with an allowed key)."""
    from fastdiff.ops.torch_backend import TorchOps
    q, k, v = _qkv(B, Sq, 32, 8, 128, Sq, torch.bfloat16, seed=Sq + bk, device="cuda",
                   pad=(0, 0))
    start = torch.full((B,), pad, dtype=torch.int32, device="cuda")
    start[0] = 0
    end = torch.full((B,), Sq, dtype=torch.int32, device="cuda")
    kw = dict(block_causal=bk, q_start=0)
    some = _allowed(Sq, Sq, start.cpu(), end.cpu(), bk, 0).any(-1).cuda()  # [B, Sq]
    exact = ref.attention(q.double(), k.double(), v.double(), start, end, **kw)[some]
    out = at.attention(q, k, v, start, end, **kw)
    sdpa = TorchOps.attention(q, k, v, start, end, **kw)[some]
    assert torch.isfinite(out).all()
    err = (out[some].double() - exact).norm() / exact.norm()
    err_sdpa = (sdpa.double() - exact).norm() / exact.norm()
    assert err <= 2 * err_sdpa + 1e-6, f"kernel {err:.3e} vs SDPA {err_sdpa:.3e}"
