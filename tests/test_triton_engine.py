"""End to end: backend="triton" (kernels under the interpreter on a CPU) gives the same tokens as
backend="torch" on the tiny random checkpoint at temperature 0 in fp32, for batch 1 and a padded
batch, with the fixed schedule and with a threshold. Every kernel must have run."""
from __future__ import annotations

import pytest

from fastdiff import Engine, GenerationConfig
from fastdiff.kernels import attention as at
from fastdiff.kernels import lm_head_confidence as lm
from fastdiff.kernels import select_commit as sc
from kernel_checks import count_launches

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")
PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81]]


@pytest.fixture(scope="module")
def engines(tiny_ckpt):
    kw = dict(device="cpu", dtype="float32", max_batch_size=2)
    return (Engine.from_pretrained(tiny_ckpt, backend="torch", **kw),
            Engine.from_pretrained(tiny_ckpt, backend="triton", **kw))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("policy", [dict(steps=8), dict(threshold=0.5),
                                    pytest.param(dict(factor=1.0), marks=pytest.mark.slow)],
                         ids=["topk", "threshold", "factor"])
def test_triton_equals_torch(monkeypatch, engines, batch, policy):
    torch_engine, triton_engine = engines
    assert triton_engine.backend == "triton"
    counters = [count_launches(monkeypatch, at, "_attention_kernel"),
                count_launches(monkeypatch, lm, "_lm_head_partial_kernel"),
                count_launches(monkeypatch, sc, "_select_commit_kernel")]
    gen = GenerationConfig(gen_length=16, block_length=8, temperature=0.0, **policy)
    prompts = PROMPTS[:batch]
    want = torch_engine.generate(prompts, gen)
    got = triton_engine.generate(prompts, gen)
    for i, (a, b) in enumerate(zip(got, want)):
        if a.full_ids != b.full_ids:
            j = next(j for j, (x, y) in enumerate(zip(a.full_ids, b.full_ids)) if x != y)
            pytest.fail(f"row {i}: first mismatch at position {j}: triton {a.full_ids[j]} vs "
                        f"torch {b.full_ids[j]} ({policy})")
        assert a.nfe == b.nfe, f"row {i}: nfe {a.nfe} vs {b.nfe}"
    assert all(c.launches > 0 for c in counters), [c.launches for c in counters]
