"""Launcher guards that matter on a GPU more than under the interpreter: per-row vectors a
kernel reads at ptr + b must be contiguous (a strided view would hand row b another row's
value), the attention grid's second dimension has CUDA's 65535 limit, and an LM head over zero
rows returns empty results instead of dividing by zero. The kernels run under the interpreter."""
import pytest
import torch

from fastdiff.kernels import attention as att
from fastdiff.kernels import lm_head_confidence as lm
from fastdiff.kernels import select_commit as sc
from fastdiff.kernels import step_prepare as sp


def strided(values, dtype):
    """A [B] view with stride 2 (the first column of a [B, 2] tensor)."""
    return torch.tensor([[v, 0] for v in values], dtype=dtype)[:, 0]


def test_attention_refuses_strided_bounds_and_oversized_grids():
    q = torch.randn(2, 3, 4, 32)
    k = v = torch.randn(2, 5, 4, 32)
    start, end = torch.zeros(2, dtype=torch.int32), torch.full((2,), 5, dtype=torch.int32)
    with pytest.raises(ValueError, match="kv_end must be contiguous"):
        att.attention(q, k, v, start, strided([5, 5], torch.int32))
    B = att.MAX_GRID_Y // 4 + 1  # B * Hkv just over the limit
    q, k = torch.zeros(B, 1, 4, 32), torch.zeros(B, 1, 4, 32)
    z = torch.zeros(B, dtype=torch.int32)
    with pytest.raises(ValueError, match="split the batch"):
        att.attention(q, k, k, z, z + 1)


def test_lm_head_refuses_strided_counters_and_handles_zero_rows():
    hidden, W = torch.randn(2, 4, 16), torch.randn(40, 16)
    row_map = torch.arange(4, dtype=torch.int32).repeat(2, 1)
    kw = dict(mode="low_confidence", temperature=0.0, eos_id=1, eot_id=None,
              suppress_eos=False, eos_eot_conf=False)
    good = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="pos_base must be contiguous"):
        lm.lm_head_confidence(hidden, row_map, W, seed=good, step=good,
                              pos_base=strided([0, 8], torch.int64), **kw)
    x0, conf = lm.lm_head_confidence(hidden[:, :0], row_map[:, :0], W, seed=good, step=good,
                                     pos_base=good, **kw)
    assert x0.shape == conf.shape == (2, 0)


def test_select_refuses_strided_block_start():
    x = torch.zeros(2, 8, dtype=torch.int64)
    x0, conf = torch.zeros(2, 4, dtype=torch.int64), torch.rand(2, 4)
    with pytest.raises(ValueError, match="block_start must be contiguous"):
        sc.select_commit(x, x0, conf, strided([0, 4], torch.int64),
                         k=torch.ones(2, dtype=torch.int32))


def test_step_prepare_refuses_strided_row_state():
    x = torch.zeros(2, 12, dtype=torch.int64)
    pos = torch.arange(12).repeat(2, 1)
    kw = dict(block=0, i=0, prompt_len=4, block_length=4, lo=None, S=4, write_from_block=False,
              steps=2, mask_id=7)
    with pytest.raises(ValueError, match="m0 must be contiguous"):
        sp.step_prepare(x, pos, torch.ones(2, dtype=torch.bool), None,
                        strided([0, 0], torch.int64), **kw)
    with pytest.raises(ValueError, match="active must be contiguous"):
        sp.step_prepare(x, pos, strided([True, True], torch.bool), None,
                        torch.zeros(2, dtype=torch.int64), **kw)
