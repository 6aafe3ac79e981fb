"""kernels/step_prepare.py (interpreted) and the torch op (ops.step_torch) against
reference.step_prepare: host-int and device-scalar block/step index, fixed and block-relative
fed spans, worst-case prefix spans (writes from the block only), cancel, the fixed schedule's
m0 / k, odd block lengths and spans wider than one chunk."""
import pytest
import torch
from kernel_checks import count_launches

from fastdiff.ops import reference as ref
from fastdiff.ops import step_torch

MASK = 99
CASES = {  # name: (prompt_len, block_length, n_blocks, block, i, lo, S, write_from_block)
    "dual_refresh": (5, 8, 3, 1, 0, 0, 29, False),
    "dual_cached": (5, 8, 3, 2, 3, None, 8, False),
    "prefix_exact": (5, 8, 3, 1, 2, 13, 16, False),
    "prefix_worst": (5, 8, 3, 1, 2, 5, 24, True),
    "odd_block": (3, 7, 2, 1, 0, 0, 17, False),
    "wide": (40, 16, 70, 3, 1, 0, 1160, False),
}


def canvas(B, P, Lb, nb, seed):
    g = torch.Generator().manual_seed(seed)
    L = P + Lb * nb
    x = torch.randint(0, 50, (B, L), generator=g)
    x[:, P:] = torch.where(torch.rand(B, L - P, generator=g) < 0.6, MASK, x[:, P:])
    pos = (torch.arange(L)[None] - torch.arange(B)[:, None]).clamp(min=0)
    return x, pos.contiguous()


def run_op(fn, x, pos, active, cancel, m0, device_cursor, **kw):
    if device_cursor:
        cursor = torch.tensor([kw.pop("block"), kw.pop("i")], dtype=torch.int32)
        kw.update(block=cursor[0], i=cursor[1])
    return fn(x, pos, active, cancel, m0, **kw)


@pytest.mark.parametrize("device_cursor", [False, True], ids=["host", "device"])
@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_step_prepare_matches_reference(impl, case, steps, device_cursor, monkeypatch):
    from fastdiff.kernels import step_prepare as kmod
    P, Lb, nb, block, i, lo, S, wfb = CASES[case]
    B = 3
    x, pos = canvas(B, P, Lb, nb, seed=len(case) + steps)
    active = torch.tensor([True, True, False])
    cancel = torch.tensor([False, True, False])
    m0 = torch.tensor([5, 2, 7], dtype=torch.int64)
    kw = dict(block=block, i=i, prompt_len=P, block_length=Lb, lo=lo, S=S,
              write_from_block=wfb, steps=steps, mask_id=MASK)
    want = ref.step_prepare(x, pos, active, cancel, m0, **kw)
    x_before = x.clone()
    if impl == "triton":
        counter = count_launches(monkeypatch, kmod, "_step_prepare_kernel")
        got = run_op(kmod.step_prepare, x, pos, active, cancel, m0, device_cursor, **kw)
        assert counter.launches == 1
    else:
        got = run_op(step_torch.step_prepare, x, pos, active, cancel, m0, device_cursor, **kw)
    assert torch.equal(x, x_before)
    for name in ("ids", "pos", "slot", "rows", "row_map", "block_start", "pos_base"):
        g, w = getattr(got, name), want[name]
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        if not torch.equal(g, w):
            idx = (g != w).nonzero()[0].tolist()
            pytest.fail(f"{name}: first mismatch at {idx}: {g[tuple(idx)]} vs {w[tuple(idx)]}")
    assert active.tolist() == want["active"].tolist()  # the cancelled row is frozen in place
    if steps:
        assert m0.tolist() == want["m0"].tolist() and got.k.tolist() == want["k"].tolist()
    else:
        assert got.k is None and m0.tolist() == [5, 2, 7]


def test_step_prepare_rejects_bad_input():
    from fastdiff.kernels import step_prepare as kmod
    x, pos = canvas(2, 4, 8, 2, 0)
    kw = dict(block=0, i=0, prompt_len=4, block_length=8, lo=None, S=8, write_from_block=False,
              steps=2, mask_id=MASK)
    active = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="m0"):
        kmod.step_prepare(x, pos, active, None, None, **kw)
    with pytest.raises(ValueError, match="int64"):
        kmod.step_prepare(x.int(), pos, active, None, torch.zeros(2, dtype=torch.int64), **kw)
    with pytest.raises(ValueError, match="outside the canvas"):
        kmod.step_prepare(x, pos, active, None, torch.zeros(2, dtype=torch.int64),
                          **dict(kw, lo=10, S=20))
    with pytest.raises(ValueError, match="both"):
        kmod.step_prepare(x, pos, active, None, torch.zeros(2, dtype=torch.int64),
                          **dict(kw, block=torch.zeros((), dtype=torch.int32)))
