"""Attention kernel vs reference.attention (fp64) under the interpreter; bf16 at LLaDA-8B shapes
on a GPU."""
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
