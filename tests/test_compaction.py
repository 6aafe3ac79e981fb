"""The torch backend's live-row compaction (issue 12's CPU time per forward): a cached step's
last layer and LM head run on the block positions still MASKed only, at a static count n that
the policy bounds from above (policies.*.live_bound). Checked here: the compaction op itself,
that no step ever has more live MASKs than its bound (so no position goes unscored), and that
decoding with compaction gives exactly the tokens and NFE of decoding without it, where the
Philox positions of the compacted rows matter (sampling, random remasking, alg_temp)."""
import pytest
import torch

from fastdiff import Engine, GenerationConfig, ModelConfig
from fastdiff.decoding.policies import FactorPolicy, QuotaPolicy, ThresholdPolicy, TopKSchedule
from fastdiff.models import save_random_checkpoint
from fastdiff.ops.torch_backend import TorchOps
from fastdiff.ops.triton_backend import TritonOps

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]


def test_compact_live_keeps_scored_positions_in_order():
    rows = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    row_map = torch.tensor([[-1, 1, -1, 3, 4], [0, -1, -1, -1, -1]], dtype=torch.int32)
    got_rows, got_map = TorchOps.compact_live(rows, row_map, 3)
    assert got_rows[0].tolist() == [11, 13, 14]
    assert got_rows[1, 0].item() == 20  # then padding (unscored positions' rows)
    assert got_map.tolist() == [[-1, 0, -1, 1, 2], [0, -1, -1, -1, -1]]
    assert got_map.dtype == torch.int32
    assert TorchOps.compacts_rows and not TritonOps.compacts_rows


def test_scored_rows_map_results_back_to_block_positions():
    """Compacted hidden rows scored once each: the same x0 / conf at every block position as
    scoring the uncompacted block, sampling included (Philox positions follow the rows)."""
    g = torch.Generator().manual_seed(0)
    B, Lb, d, V = 2, 6, 16, 40
    hidden = torch.randn(B, Lb, d, generator=g)
    W = torch.randn(V, d, generator=g)
    row_map = torch.tensor([[0, -1, 2, 3, -1, 5], [-1, 1, -1, -1, 4, -1]], dtype=torch.int32)
    kw = dict(seed=torch.tensor([3, 4]), step=torch.tensor([1, 2]), pos_base=torch.tensor([8, 0]),
              eos_id=1, eot_id=None, suppress_eos=False, eos_eot_conf=False)
    rows, cmap = TorchOps.compact_live(torch.arange(Lb).expand(B, Lb), row_map, 4)
    small = hidden.gather(1, rows[..., None].expand(-1, -1, d))
    for mode, t in (("low_confidence", 0.0), ("low_confidence", 0.8), ("random", 0.0),
                    ("maskgit_plus", 0.7), ("neg_entropy", 0.0)):
        want = TorchOps.lm_head_confidence(hidden, row_map, W, mode=mode, temperature=t, **kw)
        got = TorchOps.lm_head_confidence(small, cmap, W, mode=mode, temperature=t, **kw)
        assert torch.equal(got[0][row_map >= 0], want[0][row_map >= 0]), mode
        assert torch.equal(got[1], want[1]), mode
    want = TorchOps.lm_head_confidence_filtered(hidden, row_map, W, mode="maskgit_plus",
                                                temperature=0.9, top_p=0.8, top_k=7, **kw)
    got = TorchOps.lm_head_confidence_filtered(small, cmap, W, mode="maskgit_plus",
                                               temperature=0.9, top_p=0.8, top_k=7, **kw)
    assert torch.equal(got[0][row_map >= 0], want[0][row_map >= 0])
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("Lb, steps", [(8, 8), (8, 3), (12, 5), (32, 8), (4, 6)])
def test_topk_bound_is_the_schedule_worst_case(Lb, steps):
    """For every block MASK count m <= Lb, the count left before step i is at most the bound,
    and the bound is reached by m = Lb (it is exact for a full block)."""
    pol = TopKSchedule(steps)
    for i in range(steps):
        left = []
        for m in range(Lb + 1):
            done = sum(m // steps + (m % steps > j) for j in range(i))
            left.append(max(0, m - done))
        assert max(left) == pol.live_bound(Lb, i) == left[Lb], (m, i)


def test_quota_bound_never_below_the_device_count():
    """Dream's quota with the device's fp32 arithmetic: k = int(count * r_i)."""
    from fastdiff.decoding.policies import dream_ratios
    for steps in (1, 2, 5, 7, 16, 33):
        pol = QuotaPolicy(steps)
        r = dream_ratios(steps, "cpu")
        for Lb in (4, 16, 32, 37):
            for m0 in range(Lb + 1):
                m = torch.tensor(m0)
                for i in range(steps):
                    assert int(m) <= pol.live_bound(Lb, i), (steps, Lb, m0, i)
                    m = m - (m.float() * r[i]).to(torch.int64)
    assert ThresholdPolicy(0.9).live_bound(8, 3) == 5 == FactorPolicy(1.0).live_bound(8, 3)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    llada = save_random_checkpoint(tmp_path_factory.mktemp("llada"), ModelConfig.preset("tiny"),
                                   seed=1, dtype=torch.float32, eos_rate=0.1)
    dream = save_random_checkpoint(tmp_path_factory.mktemp("dream"),
                                   ModelConfig.preset("dream-tiny"), seed=2, dtype=torch.float32)
    return {name: Engine.from_pretrained(p, device="cpu", dtype="float32", backend="torch")
            for name, p in (("llada", llada), ("dream", dream))}


CASES = [
    ("llada", dict(gen_length=24, block_length=8, steps=12, cache="dual")),
    ("llada", dict(gen_length=24, block_length=8, steps=9, cache="prefix", temperature=0.8,
                   seed=5)),
    ("llada", dict(gen_length=16, block_length=16, steps=5, remasking="random", seed=2)),
    ("llada", dict(gen_length=16, block_length=8, steps=16, cache="dual", threshold=0.5)),
    ("llada", dict(gen_length=16, block_length=8, steps=16, factor=1.0, temperature=0.6,
                   seed=9)),
    ("llada", dict(gen_length=24, block_length=8, steps=12, stop_at_eos=True)),
    ("dream", dict(gen_length=16, steps=7, alg="maskgit_plus", temperature=0.7, top_p=0.9,
                   seed=3)),
    ("dream", dict(gen_length=16, steps=6, alg="entropy", alg_temp=0.5, temperature=0.5,
                   seed=4)),
    ("dream", dict(gen_length=16, block_length=8, steps=8, alg="topk_margin", cache="dual")),
]


@pytest.mark.parametrize("family, kw", CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()))
def test_compaction_changes_no_token(engines, monkeypatch, family, kw):
    engine = engines[family]
    seen = []
    real = TorchOps.compact_live

    def checked(rows, row_map, n):
        live = int((row_map >= 0).sum(1).max())
        assert live <= n, f"{live} live MASKs, bound {n}"
        seen.append((live, n))
        return real(rows, row_map, n)

    monkeypatch.setattr(TorchOps, "compact_live", staticmethod(checked))
    gen = GenerationConfig(**kw)
    got = engine.generate_ids(PROMPTS, gen)
    Lb = kw.get("block_length", kw["gen_length"])
    assert seen and any(n < Lb for _, n in seen), "no step was compacted"
    monkeypatch.setattr(TorchOps, "compacts_rows", False)
    want = engine.generate_ids(PROMPTS, gen)
    for a, b in zip(got, want):
        assert a.full_ids == b.full_ids
        assert a.nfe == b.nfe
