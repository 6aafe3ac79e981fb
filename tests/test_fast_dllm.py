"""Fast-dLLM (dllm-spec.md section 4): caches, threshold / factor decoding and early stop,
engine vs the literal single-row reference `generate_fast` (float64), fp32 engine on the tiny
writer checkpoint. Batches are left padded; every row must equal its own single run."""
import json

import pytest
import torch

from fastdiff import Engine, GenerationConfig
from fastdiff.decoding import reference as R
from fastdiff.models import load_weights

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]
SHAPES = [(32, 32, 16), (32, 8, 16), (16, 4, 8)]  # (gen_length, block_length, steps)
POLICIES = {"topk": {}, "threshold": {"threshold": 0.9}, "factor": {"factor": 1.0}}


@pytest.fixture(scope="module")
def setup(tiny_ckpt):
    engine = Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)
    W = load_weights(tiny_ckpt, engine.config, dtype=torch.float32)
    return engine, W, json.loads((tiny_ckpt / "config.json").read_text())


def reference(setup, prompt, gen: GenerationConfig):
    engine, W, cfg = setup
    return R.generate_fast(W, cfg, prompt, gen_length=gen.gen_length,
                           block_length=gen.block_length, steps=gen.steps,
                           threshold=gen.threshold, factor=gen.factor, cache=gen.cache,
                           stop_at_eos=gen.stop_at_eos, eot_id=engine.eot_id)


def run_and_compare(setup, prompts, **kw):
    engine = setup[0]
    gen = GenerationConfig(**kw)
    got = engine.generate(prompts, gen)
    for i, (p, c) in enumerate(zip(prompts, got)):
        want, nfe = reference(setup, p, gen)
        if c.full_ids != want:
            j = next(j for j, (a, b) in enumerate(zip(c.full_ids, want)) if a != b)
            pytest.fail(f"row {i}: first mismatch at generated position {j}: "
                        f"{c.full_ids[j]} vs reference {want[j]} ({kw})")
        assert c.nfe == nfe, f"row {i}: nfe {c.nfe} vs reference {nfe}"
    return got


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "g%d-b%d" % s[:2])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_section4_reference(setup, cache, policy, shape, batch):
    gen_length, block_length, steps = shape
    prompts = PROMPTS[:1] if batch == 1 else PROMPTS
    got = run_and_compare(setup, prompts, gen_length=gen_length, block_length=block_length,
                          steps=steps, cache=cache, **POLICIES[policy])
    if policy == "topk":
        assert all(c.nfe == steps for c in got)
    elif batch == 3:  # fewer forwards than tokens: some step committed several tokens
        assert min(c.nfe for c in got) < gen_length


def test_caches_change_results_but_stay_close(setup):
    """The caches are approximations: they are not the no-cache result, only near it."""
    engine = setup[0]
    kw = dict(gen_length=64, block_length=16, steps=32)
    ids = {c: [r.full_ids for r in engine.generate(PROMPTS, cache=c, **kw)]
           for c in ("none", "prefix", "dual")}
    assert ids["prefix"] != ids["none"] or ids["dual"] != ids["none"]


def test_threshold_one_token_per_step_when_tau_is_one(setup):
    got = run_and_compare(setup, PROMPTS, gen_length=16, block_length=8, threshold=1.0)
    assert all(c.nfe == 16 for c in got)  # only the single most confident each step


def _first_stop(c, stops):
    return next((j for j, t in enumerate(c.full_ids) if t in stops), None)


@pytest.mark.parametrize("cache, extra", [
    ("none", dict(block_length=16, steps=32)),
    ("dual", dict(block_length=8, threshold=0.9)),
    ("prefix", dict(block_length=8, steps=32))])
def test_early_stop(setup, cache, extra):
    engine = setup[0]
    stops = {engine.config.eos_token_id, engine.eot_id}
    prompts = PROMPTS + [[42]]
    kw = dict(gen_length=64, cache=cache, **extra)
    plain = engine.generate(prompts, **kw)
    early = run_and_compare(setup, prompts, stop_at_eos=True, **kw)
    lower = False
    for p, e in zip(plain, early):
        assert e.token_ids == p.token_ids
        first = _first_stop(e, stops)
        if first is None:
            assert e.full_ids == p.full_ids and e.nfe == p.nfe and e.finish_reason == "length"
            continue
        assert e.finish_reason == "eos"
        assert all(t == engine.config.eos_token_id for t in e.full_ids[first + 1:])
        assert e.nfe <= p.nfe
        lower |= e.nfe < p.nfe
    assert lower, "no row stopped early: pick a case where EOS comes early"
    # In a batch, the other rows are unaffected: each row equals its single run.
    for p, e in zip(prompts, early):
        alone = engine.generate([p], stop_at_eos=True, **kw)[0]
        assert alone.full_ids == e.full_ids and alone.nfe == e.nfe


@pytest.mark.parametrize("kwargs, field", [
    (dict(threshold=0.9, factor=1.0), "exclusive"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(factor=0), "factor"),
    (dict(cache="paged"), "cache"),
    (dict(cfg_scale=1.0, cache="dual"), "cfg_scale"),
    (dict(stop_at_eos="yes"), "stop_at_eos"),
])
def test_invalid_fast_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**kwargs)


def test_steps_not_validated_with_threshold():
    GenerationConfig(gen_length=32, block_length=8, steps=7, threshold=0.9)  # steps unused


def test_threshold_step_has_no_host_sync(setup, monkeypatch, no_host_sync):
    """Each step (threshold / factor / early stop / caches) runs with host syncs raising; only
    the loop's between-step flag read may touch the host."""
    from fastdiff.decoding import loop
    guarded = no_host_sync.wrap(loop.step)
    monkeypatch.setattr(loop, "step", guarded)
    for kw in (dict(cache="dual", threshold=0.9), dict(cache="prefix", factor=1.0, stop_at_eos=True),
               dict(cache="none", temperature=0.8, seed=3, stop_at_eos=True, steps=16)):
        assert len(setup[0].generate(PROMPTS, gen_length=32, block_length=8, **kw)) == 3
    assert guarded.calls > 3
