"""silu_mul kernel vs reference.silu_mul on the two halves of [gate | up] (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from fastdiff.kernels import silu_mul as sm
from fastdiff.ops import reference as ref
from kernel_checks import assert_close, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

# fp32: sigmoid's exp differs in the last bits; fp16/bf16: one rounding step of the dtype
TOL = {torch.float32: (1e-6, 4e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, sm, "_silu_mul_kernel")


def _check(gu, what):
    m = gu.shape[1] // 2
    out = sm.silu_mul(gu)
    expect = ref.silu_mul(gu[:, :m], gu[:, m:])
    assert out.dtype == gu.dtype and out.is_contiguous()
    assert_close(out, expect, *TOL[gu.dtype], what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,m,pad", [(1, 1, 0), (3, 37, 5), (2, 1100, 0)])  # 1100: 2 blocks
def test_matches_reference(monkeypatch, dtype, N, m, pad):
    counter = count_launches(monkeypatch, sm, "_silu_mul_kernel")
    g = torch.Generator().manual_seed(N * 100 + m)
    gu = (torch.randn(N, 2 * m + pad, generator=g) * 3).to(dtype)[:, :2 * m]  # strided rows
    _check(gu, f"{dtype} N={N} m={m} pad={pad}")
    assert counter.launches == 1


def test_saturated_gates():
    """Large |gate|: silu -> 0 or gate without inf / NaN (exp overflow is harmless)."""
    gate = torch.tensor([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 6e4, -6e4]])
    gu = torch.cat([gate, torch.full_like(gate, 0.5)], dim=1).half()
    out = sm.silu_mul(gu)
    assert torch.isfinite(out).all(), out
    _check(gu, "saturated fp16")


def test_launcher_errors():
    with pytest.raises(ValueError, match=r"\[N, 2m\]"):
        sm.silu_mul(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\[N, 2m\]"):
        sm.silu_mul(torch.randn(6))
    with pytest.raises(ValueError, match="one of"):
        sm.silu_mul(torch.randn(3, 4).double())
    with pytest.raises(ValueError, match="contiguous last"):
        sm.silu_mul(torch.randn(4, 3).t())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("m", [12288, 18944])  # LLaDA-8B, Dream-7B mlp hidden
def test_gpu_model_shapes_bf16(m):
    g = torch.Generator(device="cuda").manual_seed(m)
    _check(torch.randn(40, 2 * m, device="cuda", generator=g).bfloat16(), f"gpu m={m}")
