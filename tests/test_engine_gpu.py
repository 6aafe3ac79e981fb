"""Engine-level GPU checks (skipped without CUDA): graphs on == graphs off, token for token."""
import pytest
import torch

from fastdiff import Engine, GenerationConfig, ModelConfig

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kw", [dict(steps=32), dict(threshold=0.9),
                                dict(steps=32, stop_at_eos=True)], ids=["topk", "tau", "eos"])
@pytest.mark.parametrize("cache", ["none", "dual", "prefix"])
def test_graphs_equal_eager(backend, kw, cache):
    cfg = ModelConfig.preset("tiny")
    common = dict(seed=0, device="cuda", dtype="float32", backend=backend, max_batch_size=4)
    eager = Engine.from_config(cfg, graphs=False, **common)
    graphs = Engine.from_config(cfg, graphs=True, **common)
    gen = GenerationConfig(gen_length=64, block_length=16, cache=cache, **kw)
    for prompts in (PROMPTS[:1], PROMPTS):
        a, b = eager.generate(prompts, gen), graphs.generate(prompts, gen)
        assert [c.full_ids for c in a] == [c.full_ids for c in b]
        assert [c.nfe for c in a] == [c.nfe for c in b]
    torch.cuda.synchronize()
