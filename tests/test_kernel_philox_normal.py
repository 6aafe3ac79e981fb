"""The Triton random-weight kernel (kernels/philox_normal.py) against the torch path of
fastdiff.models.writer.philox_normal, under the interpreter (CPU tensors); a GPU draws random
8B-shaped weights with it (the device suite builds several)."""
import pytest
import torch

from fastdiff.kernels import philox_normal as pn
from fastdiff.models.writer import philox_normal as torch_normal


@pytest.mark.parametrize("seed, stream, n", [(0, 0, 5000), (1, 1, 1031), (123456789, 7, 3),
                                             (2**40 + 5, 1 << 20, 2048)])
def test_kernel_equals_the_torch_path(seed, stream, n):
    got = pn.philox_normal(seed, stream, n, "cpu")
    want = torch_normal(seed, stream, n, "cpu")
    assert got.shape == want.shape == (n,) and got.dtype == torch.float32
    # the same draws: equal up to a few ulps (the interpreter's numpy log / cos vs torch's)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), (got - want).abs().max()


def test_moments_and_errors():
    z = pn.philox_normal(3, 2, 1 << 16, "cpu")
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert pn.philox_normal(0, 0, 0, "cpu").numel() == 0
    with pytest.raises(ValueError, match="seed"):
        pn.philox_normal(-1, 0, 4, "cpu")


def test_writer_uses_the_kernel_on_cuda_only(monkeypatch):
    """The writer's CUDA path asks the kernel (a stand-in here: no GPU) and returns its draw;
    with the kernel unavailable (None) it would use torch ops; the CPU path never asks."""
    from fastdiff.models import writer
    calls = []

    def kernel(*args):
        calls.append(args)
        return "kernel draw"
    monkeypatch.setattr(writer, "_triton_normal", kernel)
    writer.philox_normal(0, 0, 8, "cpu")
    assert calls == []
    assert writer.philox_normal(5, 2, 8, "cuda") == "kernel draw"
    assert calls == [(5, 2, 8, "cuda")]
