"""select_commit kernel vs reference.select_{topk,threshold,factor}_commit (interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from fastdiff.kernels import select_commit as sc
from fastdiff.ops import reference as ref
from fastdiff.ops.torch_backend import TorchOps
from kernel_checks import assert_equal, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")

MASK = 999


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, sc, "_select_commit_kernel")


def _inputs(B: int, Lb: int, L: int, seed: int, ties: bool = False, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(B, Lb, generator=g)
    if ties:  # few distinct values: ties decided by the lowest index
        conf = (conf * 4).floor() / 4
    conf[torch.rand(B, Lb, generator=g) < 0.25] = float("-inf")  # ineligible
    if B > 1:
        conf[-1] = float("-inf")  # a row with nothing eligible (frozen or done)
    x0 = torch.randint(0, 500, (B, Lb), generator=g)
    x = torch.full((B, L), MASK, dtype=dtype)
    bs = torch.randint(0, L - Lb + 1, (B,), generator=g)
    return x, x0, conf, bs


def _check(x, x0, conf, bs, expected_canvas, commit, committed, left, what):
    assert_equal(x, expected_canvas.to(x.dtype), f"{what}: canvas")
    changed = torch.zeros_like(commit)
    for b in range(x.shape[0]):
        changed[b] = expected_canvas[b, int(bs[b]):int(bs[b]) + conf.shape[1]] != MASK
    assert_equal(commit, changed, f"{what}: commit mask")
    assert_equal(committed, 5 + changed.sum(1).int(), f"{what}: committed counter")
    elig = torch.isfinite(conf)
    assert_equal(left, (elig & ~changed).sum(1).int(), f"{what}: left counter")


@pytest.mark.parametrize("B,Lb,L", [(1, 1, 1), (3, 7, 20), (2, 13, 13), (4, 32, 70), (2, 37, 50)])
@pytest.mark.parametrize("ties", [False, True])
def test_topk_matches_reference(monkeypatch, B, Lb, L, ties):
    counter = count_launches(monkeypatch, sc, "_select_commit_kernel")
    x, x0, conf, bs = _inputs(B, Lb, L, seed=B * 100 + Lb, ties=ties)
    k_max = min(Lb, 5)
    for k_vals, km in (([1] * B, None), ([3] * B, k_max), ([Lb] * B, None)):
        k = torch.tensor(k_vals[:B], dtype=torch.int32)
        k[0] = 1  # per-row k: 1, odd, K_MAX
        if B > 2:
            k[1] = sc.pick_config(Lb, "topk", km)["K_MAX"]
        xx = x.clone()
        committed = torch.full((B,), 5, dtype=torch.int32)
        left = torch.zeros(B, dtype=torch.int32)
        commit = sc.select_commit(xx, x0, conf, bs, k=k, k_max=km, committed=committed, left=left)
        expect = ref.select_topk_commit(x, x0, conf, bs, k)
        _check(xx, x0, conf, bs, expect, commit, committed, left, f"topk k={k.tolist()}")
        x_t = x.clone()
        assert_equal(commit, TorchOps.select_topk_commit(x_t, x0, conf, bs, k), "vs TorchOps")
    assert counter.launches == 3


def test_topk_partial_sort_path(monkeypatch):
    """K_MAX < BLOCK_L (tl.topk) with k = K_MAX and k above it (clamped, documented)."""
    counter = count_launches(monkeypatch, sc, "_select_commit_kernel")
    B, Lb, L = 3, 45, 60
    x, x0, conf, bs = _inputs(B, Lb, L, seed=7, ties=True)
    cfg = sc.pick_config(Lb, "topk", 9)
    assert cfg["K_MAX"] == 16 < cfg["BLOCK_L"] == 64
    k = torch.tensor([16, 9, 30], dtype=torch.int32)
    xx = x.clone()
    sc.select_commit(xx, x0, conf, bs, k=k, k_max=9)
    assert_equal(xx, ref.select_topk_commit(x, x0, conf, bs, k.clamp(max=16)), "topk K_MAX")
    assert counter.launches == 1


RULES = {  # rule -> (kernel keyword, values: per-row tensor, scalars)
    "threshold": ("tau", lambda B: (torch.linspace(0.3, 1.5, B), 0.75, 2.0)),  # 2.0: top only
    "factor": ("factor", lambda B: (torch.linspace(0.2, 3.0, B), 1.0, 0.01)),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("B,Lb,L", [(1, 1, 3), (3, 7, 20), (4, 33, 40)])
@pytest.mark.parametrize("ties", [False, True])
def test_threshold_and_factor_match_reference(monkeypatch, rule, B, Lb, L, ties):
    counter = count_launches(monkeypatch, sc, "_select_commit_kernel")
    x, x0, conf, bs = _inputs(B, Lb, L, seed=B + Lb, ties=ties)
    if rule == "factor":  # confidences near 1: prefixes of many lengths
        conf = torch.where(torch.isfinite(conf), 0.6 + 0.4 * conf, conf)
    keyword, values = RULES[rule]
    reference = getattr(ref, f"select_{rule}_commit")
    for v in values(B):
        xx = x.clone()
        committed = torch.full((B,), 5, dtype=torch.int32)
        left = torch.zeros(B, dtype=torch.int32)
        commit = sc.select_commit(xx, x0, conf, bs, committed=committed, left=left, **{keyword: v})
        expect = reference(x, x0, conf, bs, v)
        _check(xx, x0, conf, bs, expect, commit, committed, left, f"{rule} {keyword}={v}")
    assert counter.launches == 3


def test_factor_rule_by_hand():
    """c = [0.9, 0.8, 0.74, 0.7]; f = 1: thresholds 1 - 1/(i+1) = 0.5, 0.667, 0.75, 0.8 ->
    commit the first two (0.74 < 0.75 stops the prefix)."""
    conf = torch.tensor([[0.7, 0.9, 0.74, 0.8]])
    x = torch.full((1, 4), MASK)
    x0 = torch.tensor([[10, 11, 12, 13]])
    commit = sc.select_commit(x, x0, conf, torch.tensor([0]), factor=1.0)
    assert commit.tolist() == [[False, True, False, True]]
    assert x.tolist() == [[MASK, 11, MASK, 13]]


def test_nonfinite_never_committed_and_int32_canvas():
    conf = torch.tensor([[float("nan"), float("inf"), 0.1, float("-inf"), 0.2]])
    x = torch.full((1, 6), MASK, dtype=torch.int32)
    x0 = torch.arange(5)[None]
    commit = sc.select_commit(x, x0, conf, torch.tensor([1], dtype=torch.int32),
                              k=torch.tensor([5]))
    assert commit.tolist() == [[False, False, True, False, True]]
    assert x.tolist() == [[MASK, MASK, MASK, 2, MASK, 4]]


@pytest.mark.parametrize("rule", ["topk", "threshold", "factor"])
def test_step_and_nfe_counters(monkeypatch, rule):
    """step/nfe += 1, in the same launch, in every row that took part (any finite confidence),
    as reference.count_step; rows with no finite confidence (frozen or done) are not counted."""
    counter = count_launches(monkeypatch, sc, "_select_commit_kernel")
    B, Lb, L = 4, 13, 30
    x, x0, conf, bs = _inputs(B, Lb, L, seed=21)  # last row: all -inf
    conf[1] = float("-inf")
    conf[1, 3], conf[1, 7] = float("nan"), float("inf")  # not finite either
    conf[0, 5] = conf[2, 0] = 0.5  # rows 0 and 2 take part
    step = torch.tensor([0, 5, 2**40, 7])  # int64: beyond the int32 range
    nfe = torch.tensor([3, 0, 9, 1], dtype=torch.int32)
    expect_step, expect_nfe = step.clone(), nfe.clone()
    ref.count_step(expect_step, expect_nfe, conf)
    assert expect_step.tolist() == [1, 5, 2**40 + 1, 7] and expect_nfe.tolist() == [4, 0, 10, 1]
    kw, reference = {
        "topk": ({"k": torch.full((B,), 2, dtype=torch.int32)}, ref.select_topk_commit),
        "threshold": ({"tau": 0.5}, ref.select_threshold_commit),
        "factor": ({"factor": 1.0}, ref.select_factor_commit)}[rule]
    xx = x.clone()
    sc.select_commit(xx, x0, conf, bs, step=step, nfe=nfe, **kw)
    assert_equal(step, expect_step, f"{rule}: step")
    assert_equal(nfe, expect_nfe, f"{rule}: nfe")
    assert_equal(xx, reference(x, x0, conf, bs, *kw.values()), f"{rule}: canvas")
    assert counter.launches == 1


def test_launcher_errors():
    x, x0, conf, bs = _inputs(2, 5, 9, seed=0)
    k = torch.tensor([1, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="exactly one"):
        sc.select_commit(x, x0, conf, bs, k=k, tau=0.5)
    with pytest.raises(ValueError, match="float32"):
        sc.select_commit(x, x0, conf.half(), bs, k=k)
    with pytest.raises(ValueError, match="k_max"):
        sc.select_commit(x, x0, conf, bs, k=k, k_max=sc.MAX_BLOCK_L + 1)
    with pytest.raises(ValueError, match="exceeds"):
        big = torch.zeros(1, sc.MAX_BLOCK_L + 1)
        sc.select_commit(torch.zeros(1, sc.MAX_BLOCK_L + 1, dtype=torch.long), big.long(), big,
                         torch.tensor([0]), tau=0.5)
    with pytest.raises(ValueError, match="contiguous"):
        sc.select_commit(x, x0, torch.zeros(5, 2).t(), bs, k=k)
    with pytest.raises(ValueError, match="step must be torch.int64"):
        sc.select_commit(x, x0, conf, bs, k=k, step=torch.zeros(2, dtype=torch.int32),
                         nfe=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="together"):
        sc.select_commit(x, x0, conf, bs, k=k, step=torch.zeros(2, dtype=torch.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_select_commit_llada_shapes():
    B, Lb, L = 16, 32, 1024
    for ties in (False, True):
        x, x0, conf, bs = _inputs(B, Lb, L, seed=11, ties=ties)
        k = torch.randint(1, Lb + 1, (B,), dtype=torch.int32)
        xx = x.cuda()
        step = torch.zeros(B, dtype=torch.int64, device="cuda")
        nfe = torch.zeros(B, dtype=torch.int32, device="cuda")
        sc.select_commit(xx, x0.cuda(), conf.cuda(), bs.cuda(), k=k.cuda(), k_max=Lb, step=step,
                         nfe=nfe)
        assert_equal(xx.cpu(), ref.select_topk_commit(x, x0, conf, bs, k), "gpu topk")
        took = torch.isfinite(conf).any(1)
        assert_equal(step.cpu(), took.long(), "gpu step")
        assert_equal(nfe.cpu(), took.int(), "gpu nfe")
        for km in (1, 4, 8):  # the loop's k_max = ceil(Lb / steps) < Lb: the tl.topk path
            kk = torch.randint(1, km + 1, (B,), dtype=torch.int32)
            xx = x.cuda()
            sc.select_commit(xx, x0.cuda(), conf.cuda(), bs.cuda(), k=kk.cuda(), k_max=km)
            assert_equal(xx.cpu(), ref.select_topk_commit(x, x0, conf, bs, kk), f"gpu k_max {km}")
        for kw, fn in ((dict(tau=0.6), ref.select_threshold_commit),
                       (dict(factor=1.0), ref.select_factor_commit)):
            xx = x.cuda()
            sc.select_commit(xx, x0.cuda(), conf.cuda(), bs.cuda(), **kw)
            assert_equal(xx.cpu(), fn(x, x0, conf, bs, *kw.values()), f"gpu {kw}")


def test_launcher_errors_for_a_broadcast_k():
    """The kernel reads k[b] at k_ptr + b: a broadcast (stride-0) k would give row b the value
    of row 0 + b elements later, so the launcher refuses it."""
    from fastdiff.kernels import select_commit as sc
    x = torch.zeros(3, 8, dtype=torch.int64)
    conf = torch.rand(3, 4)
    k = torch.tensor([2]).expand(3)
    with pytest.raises(ValueError, match="k must be contiguous"):
        sc.select_commit(x, torch.zeros(3, 4, dtype=torch.int64), conf,
                         torch.zeros(3, dtype=torch.int32), k=k)
