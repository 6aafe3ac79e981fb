"""add_rms_norm kernel vs reference.add_rms_norm (interpreter on CPU): s bit-exact, y within a
rounding step of the dtype (the sum of squares is reduced in another order) and, in fp16/bf16,
equal in all but a rare element (the reference's intermediate rounding is reproduced)."""
from __future__ import annotations

import pytest
import torch

from fastdiff.kernels import add_rms_norm as arn
from fastdiff.ops import reference as ref
from kernel_checks import assert_close, assert_equal, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 2e-3), torch.bfloat16: (8e-3, 1.6e-2)}
EPS = 1e-5


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, arn, "_add_rms_norm_kernel")


def _rows(N: int, d: int, dtype, g, *, pad: int = 0, scale: float = 1.0) -> torch.Tensor:
    """[N, d] in dtype; pad > 0: a row-strided view (row stride d + pad) of a wider buffer."""
    buf = (torch.randn(N, d + pad, generator=g) * scale).to(dtype)
    return buf[:, :d]


def _check(s, y, x, delta, w, what):
    es, ey = ref.add_rms_norm(x, delta, w, EPS)
    assert_equal(s, es, f"{what}: s")
    atol, rtol = TOL[x.dtype]
    assert_close(y, ey, atol, rtol, f"{what}: y")
    assert y.dtype == x.dtype and y.is_contiguous()
    if x.dtype != torch.float32:  # rounding points: skipping one changes ~25% of the elements
        n_bad = int((y != ey).sum())
        assert n_bad <= y.numel() // 100, f"{what}: y differs in {n_bad} of {y.numel()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,d,pad", [(1, 1, 0), (3, 37, 5), (2, 128, 0), (4, 200, 3)])
def test_matches_reference(monkeypatch, dtype, N, d, pad):
    counter = count_launches(monkeypatch, arn, "_add_rms_norm_kernel")
    g = torch.Generator().manual_seed(N * 1000 + d)
    x, delta = _rows(N, d, dtype, g, pad=pad, scale=3.0), _rows(N, d, dtype, g, pad=2 * pad)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(dtype)
    x0 = x.clone()
    s, y = arn.add_rms_norm(x, delta, w, EPS)
    _check(s, y, x, delta, w, f"{dtype} N={N} d={d}")
    assert s.is_contiguous() and s.data_ptr() != x.data_ptr()
    assert_equal(x, x0, "x untouched")
    s2, y2 = arn.add_rms_norm(x, None, w, EPS)  # no residual: s is x itself
    assert s2 is x
    _check(s2, y2, x, None, w, f"{dtype} N={N} d={d} no delta")
    assert counter.launches == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [45, arn.MAX_SINGLE_D + 3])  # one block; chunked (3 chunks)
def test_in_place_residual(monkeypatch, dtype, d):
    """out_sum = x (strided rows): the residual stream updated in place, on both paths."""
    counter = count_launches(monkeypatch, arn, "_add_rms_norm_kernel")
    assert arn.pick_config(d)["SINGLE"] == (d <= arn.MAX_SINGLE_D)
    g = torch.Generator().manual_seed(d)
    x, delta = _rows(3, d, dtype, g, pad=7), _rows(3, d, dtype, g)
    w = torch.randn(d, generator=g).to(dtype)
    x0 = x.clone()
    s, y = arn.add_rms_norm(x, delta, w, EPS, out_sum=x)
    assert s is x
    _check(x, y, x0, delta, w, f"in place {dtype} d={d}")
    out = torch.full((3, d), 7.0, dtype=dtype)
    s, y = arn.add_rms_norm(x0, None, w, EPS, out_sum=out)  # no delta: x copied into out_sum
    assert s is out
    _check(s, y, x0, None, w, f"copy into out_sum {dtype} d={d}")
    assert counter.launches == 2


def test_rounding_points_bf16():
    """Values where the bf16 rounding of s (ties to even) and of the normalized row matter."""
    x = torch.tensor([[1.0, 256.0, -3.0, 1.0 + 2 ** -7, 0.5]], dtype=torch.bfloat16)
    delta = torch.tensor([[2 ** -8, 1.0, 2 ** -7, 2 ** -8, -2 ** -10]], dtype=torch.bfloat16)
    w = torch.tensor([1.0, 0.5, 3.0, -1.0, 2.0], dtype=torch.bfloat16)
    s, y = arn.add_rms_norm(x, delta, w, EPS)
    assert s.tolist() == [[1.0, 256.0, -3.0, 1.0 + 2 ** -6, 0.5]]  # ties round to even
    _check(s, y, x, delta, w, "bf16 ties")


def test_large_and_small_rows():
    """eps dominates an all-zero row; big values do not overflow the fp32 sum of squares."""
    x = torch.zeros(2, 64, dtype=torch.float16)
    x[1] = 6.0e4
    delta = torch.zeros_like(x)
    w = torch.ones(64, dtype=torch.float16)
    s, y = arn.add_rms_norm(x, delta, w, EPS)
    assert torch.isfinite(y).all()
    _check(s, y, x, delta, w, "zeros / large fp16")


def test_launcher_errors():
    x = torch.randn(3, 8)
    w = torch.ones(8)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        arn.add_rms_norm(x[0], None, w, EPS)
    with pytest.raises(ValueError, match="delta must be"):
        arn.add_rms_norm(x, torch.randn(3, 9), w, EPS)
    with pytest.raises(ValueError, match="like x"):
        arn.add_rms_norm(x, x.half(), w, EPS)
    with pytest.raises(ValueError, match="weight"):
        arn.add_rms_norm(x, None, w.half(), EPS)
    with pytest.raises(ValueError, match="one of"):
        arn.add_rms_norm(x.long(), None, w.long(), EPS)
    with pytest.raises(ValueError, match="contiguous last"):
        arn.add_rms_norm(torch.randn(8, 3).t(), None, w, EPS)
    with pytest.raises(ValueError, match="out_sum"):
        arn.add_rms_norm(x, x, w, EPS, out_sum=torch.empty(3, 8, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("d", [4096, 3584])
def test_gpu_model_shapes_bf16(d):
    g = torch.Generator(device="cuda").manual_seed(d)
    x = torch.randn(64, d, device="cuda", generator=g).bfloat16()
    delta = torch.randn(64, d, device="cuda", generator=g).bfloat16()
    w = torch.randn(d, device="cuda", generator=g).bfloat16()
    s, y = arn.add_rms_norm(x, delta, w, EPS)
    _check(s, y, x, delta, w, f"gpu d={d}")
