"""End to end: backend="triton" (kernels under the interpreter on a CPU) gives the same tokens as
backend="torch" on the tiny random checkpoint at temperature 0 in fp32, for batch 1 and a padded
batch, with the fixed schedule, a threshold and a factor, every cache mode and early stop. Every
kernel of the step must have run."""
from __future__ import annotations

import pytest

from fastdiff import Engine, GenerationConfig
from fastdiff.kernels import add_rms_norm as an
from fastdiff.kernels import attention as at
from fastdiff.kernels import freeze_finished as ff
from fastdiff.kernels import lm_head_confidence as lm
from fastdiff.kernels import rope_kv as rk
from fastdiff.kernels import select_commit as sc
from fastdiff.kernels import silu_mul as sm
from fastdiff.kernels import step_prepare as sp
from kernel_checks import count_launches

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")
PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81]]


@pytest.fixture(scope="module")
def engines(tiny_ckpt):
    kw = dict(device="cpu", dtype="float32", max_batch_size=2)
    return (Engine.from_pretrained(tiny_ckpt, backend="torch", **kw),
            Engine.from_pretrained(tiny_ckpt, backend="triton", **kw))


CASES = {  # id: (batch, settings)
    "topk-none-1": (1, dict(steps=8)),
    "topk-dual-2": (2, dict(steps=8, cache="dual")),
    "threshold-prefix-2": (2, dict(threshold=0.5, cache="prefix")),
    "threshold-dual-stop-2": (2, dict(threshold=0.5, cache="dual", stop_at_eos=True)),
    "threshold-none-2": (2, dict(threshold=0.5)),
    "factor-dual-1": (1, dict(factor=1.0, cache="dual")),
    "topk-prefix-stop-1": (1, dict(steps=8, cache="prefix", stop_at_eos=True)),
}
SLOW = {"threshold-none-2", "factor-dual-1", "topk-prefix-stop-1"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                  for c in CASES])
def test_triton_equals_torch(monkeypatch, engines, case):
    batch, policy = CASES[case]
    torch_engine, triton_engine = engines
    assert triton_engine.backend == "triton"
    kernels = [(at, "_attention_kernel"), (lm, "_lm_head_partial_kernel"),
               (sc, "_select_commit_kernel"), (an, "_add_rms_norm_kernel"),
               (rk, "_rope_kv_kernel"), (sm, "_silu_mul_kernel"), (sp, "_step_prepare_kernel")]
    if policy.get("stop_at_eos"):
        kernels.append((ff, "_freeze_finished_kernel"))
    counters = [count_launches(monkeypatch, mod, name) for mod, name in kernels]
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
