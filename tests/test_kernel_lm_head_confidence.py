"""Fused LM head + confidence kernel vs reference.lm_head_confidence (interpreter on CPU)."""
from __future__ import annotations

import math

import pytest
import torch

from fastdiff.kernels import lm_head_confidence as lm
from fastdiff.ops import reference as ref
from kernel_checks import assert_close, assert_equal, count_launches, kernels_must_run

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning",  # interpreter: masked lanes
                                      "ignore::DeprecationWarning")
EOS, EOT = 5, 7


@pytest.fixture(autouse=True)
def _kernel_ran(request, monkeypatch):
    yield from kernels_must_run(request, monkeypatch, lm, "_lm_head_partial_kernel")


def _problem(B, S, d, V, Lb, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, S, d, generator=g).to(dtype)
    weight = (torch.randn(V, d, generator=g) / math.sqrt(d) * 3).to(dtype)
    row_map = torch.randint(0, S, (B, Lb), generator=g, dtype=torch.int32)
    row_map[torch.rand(B, Lb, generator=g) < 0.2] = -1
    seeds = torch.randint(0, 2**62, (B,), generator=g)
    step = torch.randint(0, 1000, (B,), generator=g, dtype=torch.int32)
    pos_base = torch.randint(0, 4000, (B,), generator=g)
    return hidden, row_map, weight, seeds, step, pos_base


def _gap(hidden, row_map, weight, temperature, seed, step, pos_base, suppress):
    """[B, Lb] gap between the best and second-best sampling key in fp64 (near-tie detector)."""
    B, Lb = row_map.shape
    dev = hidden.device
    rows = hidden[torch.arange(B, device=dev)[:, None], row_map.long().clamp(min=0)].double()
    logits = rows @ weight.double().T
    if suppress:
        logits[..., EOS] = float("-inf")
    if temperature > 0:
        pos = pos_base[:, None].long() + torch.arange(Lb, device=dev)[None]
        u = ref.uniform(seed[:, None, None], step[:, None, None], pos[..., None],
                        torch.arange(weight.shape[0], device=dev)[None, None], stream=0)
        logits = logits / temperature + ref.gumbel(u).double()
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def _compare(problem, mode, temperature, suppress, eos_eot, num_splits, atol, what):
    hidden, row_map, weight, seeds, step, pos_base = problem
    kw = dict(mode=mode, temperature=temperature, seed=seeds, step=step, pos_base=pos_base,
              eos_id=EOS, eot_id=EOT, suppress_eos=suppress, eos_eot_conf=eos_eot)
    x0, conf = lm.lm_head_confidence(hidden, row_map, weight, num_splits=num_splits, **kw)
    rx, rc = ref.lm_head_confidence(hidden, row_map, weight, **kw)
    assert x0.dtype == torch.int64 and conf.dtype == torch.float32
    clear = _gap(hidden, row_map, weight, temperature, seeds, step, pos_base, suppress) > 1e-3
    assert clear.float().mean() > 0.9, f"{what}: too many near-ties to be a test"
    assert_equal(torch.where(clear, x0, -1), torch.where(clear, rx, -1), f"{what}: x0")
    if mode == "margin":  # depends on the top two only, not on which token was drawn
        clear = torch.ones_like(clear)
    assert_close(torch.where(clear, conf, 0.0), torch.where(clear, rc, 0.0), atol, 1e-4,
                 f"{what}: conf")
    return x0, conf


@pytest.mark.parametrize("mode", lm.MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_modes_match_reference(monkeypatch, mode, temperature):
    partial = count_launches(monkeypatch, lm, "_lm_head_partial_kernel")
    combine = count_launches(monkeypatch, lm, "_lm_head_combine_kernel")
    problem = _problem(B=2, S=9, d=40, V=333, Lb=5, seed=1)
    for splits, suppress, eos_eot in ((1, False, False), (3, True, True)):
        _compare(problem, mode, temperature, suppress, eos_eot, splits, 2e-5,
                 f"{mode} T={temperature} splits={splits}")
    assert partial.launches == combine.launches == 2


@pytest.mark.parametrize("B,S,d,V,Lb", [(1, 1, 16, 130, 1), (3, 4, 33, 257, 7)])
def test_odd_shapes(B, S, d, V, Lb):
    problem = _problem(B, S, d, V, Lb, seed=B * V)
    for T in (0.0, 1.3):
        _compare(problem, "low_confidence", T, False, False, None, 2e-5, f"shape T={T}")


def test_many_splits_and_rows():
    """More vocabulary splits than one combine chunk (BLOCK_S) and more rows than one block."""
    V = lm.BLOCK_S * lm.pick_config(40, torch.float32)["BLOCK_V"] + 77
    problem = _problem(B=1, S=3, d=16, V=V, Lb=40, seed=5)
    _compare(problem, "neg_entropy", 0.9, True, False, lm.BLOCK_S + 3, 2e-5, "many splits")


def test_fp16_and_strided_hidden():
    hidden, row_map, weight, seeds, step, pos_base = _problem(2, 6, 32, 200, 4, seed=9,
                                                              dtype=torch.float16)
    wide = torch.zeros(2, 6, 48, dtype=torch.float16)
    wide[..., 8:40] = hidden
    strided = wide[..., 8:40]  # row stride 48: a view into a bigger buffer
    problem = (strided, row_map, weight, seeds, step, pos_base)
    for mode in ("low_confidence", "margin"):
        _compare(problem, mode, 0.0, False, True, 2, 2e-3, f"fp16 {mode}")


def test_bf16_via_interpreter_upcast():
    problem = _problem(2, 5, 32, 180, 4, seed=4, dtype=torch.bfloat16)
    for T in (0.0, 0.9):
        _compare(problem, "maskgit_plus", T, True, True, 2, 2e-5, f"bf16 T={T}")


def test_eos_rules():
    """EOS made the argmax of every row: suppression must pick another token; with the rule on,
    a position whose x0 is EOT gets confidence -1; unscored positions get -inf."""
    hidden, row_map, weight, seeds, step, pos_base = _problem(2, 5, 24, 150, 6, seed=3)
    weight[EOS] = hidden.mean((0, 1)) * 50
    weight[EOT] = hidden.mean((0, 1)) * 49
    kw = dict(mode="low_confidence", temperature=0.0, seed=seeds, step=step, pos_base=pos_base,
              eos_id=EOS, eot_id=EOT)
    x0, conf = lm.lm_head_confidence(hidden, row_map, weight, suppress_eos=False,
                                     eos_eot_conf=False, **kw)
    assert (x0 == EOS).float().mean() > 0.5
    x0, conf = lm.lm_head_confidence(hidden, row_map, weight, suppress_eos=True,
                                     eos_eot_conf=True, **kw)
    rx, rc = ref.lm_head_confidence(hidden, row_map, weight, suppress_eos=True,
                                    eos_eot_conf=True, **kw)
    assert not (x0 == EOS).any() and (x0 == EOT).any()
    assert_equal(x0, rx, "x0")
    assert_equal(conf == -1, (x0 == EOT) & (row_map >= 0), "EOT conf -1")
    assert_equal(torch.isinf(conf), row_map < 0, "unscored -inf")
    assert_close(conf, rc, 2e-5, 1e-4, "conf")


def _chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(x / 2, dtype=torch.float64)))


def test_gumbel_sampler_frequencies():
    """x0 at T > 0 is a sample of softmax(logits / T): 4 steps x 400 positions of one hidden
    row, Pearson chi-square against the exact probabilities; fixed seeds, so deterministic. The
    bound: p-value > 1e-3 (a correct sampler fails it with probability 0.001 per seed draw)."""
    V, d, T, n_pos = 12, 16, 0.7, 400
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 1, d, generator=g)
    weight = torch.randn(V, d, generator=g) * 0.25
    row_map = torch.zeros(1, n_pos, dtype=torch.int32)
    p = ((hidden[0, 0].double() @ weight.double().T) / T).softmax(-1)
    counts = torch.zeros(V, dtype=torch.float64)
    for step in range(4):
        x0, _ = lm.lm_head_confidence(
            hidden, row_map, weight, mode="maskgit_plus", temperature=T,
            seed=torch.tensor([1234]), step=torch.tensor([step]), pos_base=torch.tensor([0]),
            eos_id=0, eot_id=None, suppress_eos=False, eos_eot_conf=False)
        counts += torch.bincount(x0[0], minlength=V).double()
    expected = p * counts.sum()
    assert expected.min() > 5, "chi-square needs >= 5 expected per cell"
    stat = float(((counts - expected) ** 2 / expected).sum())
    pval = _chi2_sf(stat, V - 1)
    assert pval > 1e-3, f"chi2={stat:.1f}, p={pval:.2e}; counts {counts.tolist()} vs {expected}"
    # and the test has power: frequencies of the untempered distribution are rejected
    p1 = (hidden[0, 0].double() @ weight.double().T).softmax(-1) * counts.sum()
    assert _chi2_sf(float(((counts - p1) ** 2 / p1).sum()), V - 1) < 1e-3


def test_launcher_errors():
    hidden, row_map, weight, seeds, step, pos_base = _problem(1, 2, 16, 20, 2, seed=0)
    kw = dict(temperature=0.0, seed=seeds, step=step, pos_base=pos_base, eos_id=EOS,
              eot_id=None, suppress_eos=False, eos_eot_conf=False)
    with pytest.raises(ValueError, match="mode"):
        lm.lm_head_confidence(hidden, row_map, weight, mode="bogus", **kw)
    with pytest.raises(ValueError, match="int32"):
        lm.lm_head_confidence(hidden, row_map.long(), weight, mode="random", **kw)
    with pytest.raises(ValueError, match="share"):
        lm.lm_head_confidence(hidden, row_map, weight.half(), mode="random", **kw)
    with pytest.raises(ValueError, match="contiguous"):
        lm.lm_head_confidence(hidden, row_map, weight.t().contiguous().t(), mode="random", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_gpu_llada_8b_shape_bf16(temperature):
    """32 block rows x LLaDA-8B's head (126464 x 4096) in bf16 vs the fp32 logits of the same
    bf16 operands: x0 equal where the top-2 gap is clear, conf close."""
    dev = "cuda"
    B, S, d, V, Lb = 1, 64, 4096, 126464, 32
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(B, S, d, device=dev, generator=g).bfloat16()
    weight = (torch.randn(V, d, device=dev, generator=g) * 0.02).bfloat16()
    row_map = torch.arange(Lb, dtype=torch.int32, device=dev)[None] + 16
    seeds = torch.tensor([42], device=dev)
    step = torch.tensor([3], device=dev)
    pos_base = torch.tensor([0], device=dev)
    for mode in lm.MODES:
        kw = dict(mode=mode, temperature=temperature, seed=seeds, step=step, pos_base=pos_base,
                  eos_id=126081, eot_id=126348, suppress_eos=True, eos_eot_conf=True)
        x0, conf = lm.lm_head_confidence(hidden, row_map, weight, **kw)
        rx, rc = ref.lm_head_confidence(hidden.float(), row_map, weight.float(), **kw)
        gap = _gap(hidden.float(), row_map, weight.float(), temperature, seeds, step, pos_base,
                   True)
        clear = gap > 2e-2
        assert clear.float().mean() > 0.8
        assert_equal(torch.where(clear, x0, -1).cpu(), torch.where(clear, rx, -1).cpu(),
                     f"{mode} x0")
        assert_close(torch.where(clear, conf, 0.0).cpu(), torch.where(clear, rc, 0.0).cpu(),
                     1e-3, 1e-2, f"{mode} conf")
