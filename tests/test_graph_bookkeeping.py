"""The graph runner's bookkeeping on the CPU (stand-in graphs that call the step): one captured
graph per phase whatever the number of blocks (two for the dual and prefix caches, one without a
cache), a bounded set of shape buckets (least recently used dropped), a KV store that grows by
bucket and drops the graphs holding its old address, a failing WHILE build that falls back to
replay with the same tokens, and per-row cancellation that freezes one row while the others
equal their solo runs (eager loop and graph replay). fp32 tiny writer checkpoint."""
from dataclasses import replace

import pytest
import torch

from fastdiff import Engine, GenerationConfig
from fastdiff.decoding.graphs import EagerCapture, GraphCache, GraphRunner, bucket_state
from fastdiff.decoding.loop import denoise
from fastdiff.decoding.state import DecodeState

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)


def fresh(engine, prompts, gen, seed=0):
    return DecodeState.from_prompts(prompts, gen.gen_length, mask_id=engine.config.mask_token_id,
                                    pad_id=engine.config.pad_token_id, seeds=[seed] * len(prompts),
                                    device=engine.model.device)


def clone(s: DecodeState) -> DecodeState:
    return replace(s, **{n: getattr(s, n).clone() for n in DecodeState.TENSORS})


def eager(engine, state, gen, **kw):
    denoise(engine.model, engine.ops, state, engine._request(gen), **kw)
    return state


def assert_rows_equal(got: DecodeState, want: DecodeState, rows, want_rows=None):
    for r, w in zip(rows, want_rows or rows):
        assert got.x[r].tolist() == want.x[w].tolist(), f"row {r}"
        assert (int(got.nfe[r]), int(got.step[r])) == (int(want.nfe[w]), int(want.step[w])), r


@pytest.mark.parametrize("cache, graphs", [("none", 1), ("prefix", 2), ("dual", 2)])
@pytest.mark.parametrize("gen_length", [16, 64])
def test_one_graph_per_phase_whatever_the_blocks(engine, cache, graphs, gen_length):
    gen = GenerationConfig(gen_length=gen_length, block_length=8, steps=gen_length // 2,
                           cache=cache)
    st = bucket_state(fresh(engine, PROMPTS[:2], gen), 2, 64, engine.config.pad_token_id)
    want = eager(engine, clone(st), gen)
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen),
                         capture=EagerCapture(), use_ext=False)
    assert len(runner.graphs) == graphs == runner.spec.n_branches
    assert runner.spec.n_blocks == gen_length // 8 and not runner.spec.per_block
    runner.load(st)
    assert_rows_equal(runner.run(), want, [0, 1])


def test_graph_cache_is_bounded_lru(engine):
    cache = GraphCache(engine.model, engine.ops, engine.config.pad_token_id,
                       capture=EagerCapture, use_ext=False, max_runners=2)
    gens = [GenerationConfig(gen_length=8 * n, block_length=8, steps=8 * n, cache="dual")
            for n in (1, 2, 3)]
    keys = []
    for gen in gens + [gens[0]]:
        st = fresh(engine, PROMPTS[:1], gen)
        cache.decode(st, engine._request(gen))
        keys.append(next(reversed(cache.runners)))
        assert_rows_equal(st, eager(engine, fresh(engine, PROMPTS[:1], gen), gen), [0])
    assert len(cache.runners) == 2
    assert list(cache.runners) == [keys[2], keys[3]]  # gens[1] was the least recently used
    with pytest.raises(ValueError, match="max_runners"):
        GraphCache(engine.model, engine.ops, 0, max_runners=0)


def test_kv_store_grows_by_bucket_and_drops_stale_graphs(tiny_ckpt):
    eng = Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)
    small = eng.kv_store(1, 100)
    assert (small.max_batch, small.max_len) == (1, 256)
    assert eng.kv_store(1, 200) is small  # fits: no reallocation
    eng._graph_cache = GraphCache(eng.model, eng.ops, eng.config.pad_token_id,
                                  capture=EagerCapture, use_ext=False)
    eng._graph_cache.runners["stale"] = object()
    big = eng.kv_store(3, 300)
    assert big is not small and (big.max_batch, big.max_len) == (4, 512)
    assert not eng._graph_cache.runners  # graphs held the old store's address
    gen = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual")
    a = eng.generate(PROMPTS, gen)
    assert eng._store is big  # the request fit
    assert [c.full_ids for c in a] == [c.full_ids for c in eng.generate(PROMPTS, gen)]


def test_cancel_freezes_one_row_eager(engine):
    """Row 1 is cancelled after the third step (a host write of state.cancel between steps, as
    a serving thread does): it keeps the tokens it had and takes no more forwards; rows 0 and 2
    equal their solo runs."""
    for kw in (dict(steps=16), dict(threshold=0.9), dict(factor=1.0, stop_at_eos=True)):
        gen = GenerationConfig(gen_length=32, block_length=8, cache="dual", **kw)
        seen = {}

        def on_step(state, block, i):
            n = seen.setdefault("n", 0) + 1
            seen["n"] = n
            if n == 3:
                state.cancel[1] = True
                seen["x"], seen["nfe"] = state.x[1].clone(), int(state.nfe[1])

        got = eager(engine, fresh(engine, PROMPTS, gen), gen, on_step=on_step)
        assert not bool(got.active[1]), kw
        assert got.x[1].tolist() == seen["x"].tolist() and int(got.nfe[1]) == seen["nfe"], kw
        assert (got.x[1] == engine.config.mask_token_id).any(), kw  # unfinished when cancelled
        for r in (0, 2):
            solo = eager(engine, fresh(engine, [PROMPTS[r]], gen), gen)
            pad = got.x.shape[1] - solo.x.shape[1]
            assert got.x[r, pad:].tolist() == solo.x[0].tolist(), (kw, r)
            assert int(got.nfe[r]) == int(solo.nfe[0]), (kw, r)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_cancel_in_graph_replay(engine, cache):
    """runner.cancel(row) before the launch: the step and the control honour the flag from the
    first step (the row stays fully masked); the other rows equal their solo runs."""
    gen = GenerationConfig(gen_length=16, block_length=8, steps=8, cache=cache)
    st = bucket_state(fresh(engine, PROMPTS[:2], gen), 2, 64, engine.config.pad_token_id)
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen),
                         capture=EagerCapture(), use_ext=False)
    runner.load(st)
    runner.cancel(0)
    out = runner.run()
    assert (out.generated()[0] == engine.config.mask_token_id).all() and int(out.nfe[0]) == 0
    solo = bucket_state(fresh(engine, PROMPTS[1:2], gen), 1, 64, engine.config.pad_token_id)
    solo = eager(engine, solo, gen)
    assert_rows_equal(out, solo, [1], [0])


class _WhileCapture(EagerCapture):
    """Stand-in graphs that claim to be capturable into a WHILE loop (raw handles)."""

    supports_while = True

    class Graph(EagerCapture.Graph):
        def raw_cuda_graph(self) -> int:
            return 1


class _LoopGraphFails:
    """The real fastdiff._C's host-side control code, on a 'driver' whose WHILE build fails (a
    node type conditional bodies reject): every conditional node reports ok, LoopGraph raises."""

    def __init__(self, ext) -> None:
        self._ext = ext
        self.ControlSpec, self.ProgressSpec = ext.ControlSpec, ext.ProgressSpec
        self.built = 0

    def conditional_support(self) -> dict:
        return {"while_node": "ok", "if_node": "ok", "switch_node": "ok"}

    def control_update(self, spec, stream: int) -> None:
        self._ext.control_update_host(spec)  # the kernel's decision code, on CPU tensors

    def graph_node_types(self, graph: int) -> list:
        return ["kernel", "event_record"]

    def LoopGraph(self, *args, **kwargs):
        self.built += 1
        raise RuntimeError("cudaGraphInstantiate: operation not supported (event node)")


def _graph_engine(tiny_ckpt, capture):
    """A CPU engine whose generate() goes through the graph cache with stand-in graphs."""
    eng = Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)
    eng.graphs = True
    from fastdiff.decoding.graphs import GraphCache as Cache
    eng._graph_cache = Cache(eng.model, eng.ops, eng.config.pad_token_id, capture=capture)
    return eng


def test_failing_while_build_and_unrunnable_extension_keep_the_tokens(tiny_ckpt, monkeypatch,
                                                                      caplog):
    from fastdiff.ops import cuda_ext
    real = cuda_ext.load()
    if real is None:
        pytest.skip("fastdiff._C is not built here: " + cuda_ext.BUILD_HINT)
    plain = Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)
    gens = [GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual"),
            GenerationConfig(gen_length=16, block_length=8, threshold=0.9, cache="prefix")]
    want = [[c.full_ids for c in plain.generate(PROMPTS, g)] for g in gens]

    # 1. the WHILE build fails: logged, replay with the extension's control code instead
    fake = _LoopGraphFails(real)
    monkeypatch.setattr(cuda_ext, "load_runnable", lambda: fake)
    eng = _graph_engine(tiny_ckpt, _WhileCapture)
    with caplog.at_level("WARNING", logger="fastdiff.decoding.graphs"):
        got = [[c.full_ids for c in eng.generate(PROMPTS, g)] for g in gens]
    assert got == want
    assert fake.built == 2 and "falling back to host replay" in caplog.text
    assert {r.mode for r in eng._graph_cache.runners.values()} == {"replay"}
    monkeypatch.undo()

    # 2. the extension loads but cannot run (self test fails): never used, replay included
    class Broken:
        def self_test(self, stream):
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

        def conditional_support(self):
            return {"compiled_cudart": 13000, "driver_version": 12020}

        def __getattr__(self, name):
            raise AssertionError(f"a non-runnable extension was used: {name}")

    cuda_ext._self_test_failure.cache_clear()
    broken = Broken()  # one module object, as importlib returns
    monkeypatch.setattr(cuda_ext, "load", lambda required=False: broken)
    monkeypatch.setattr(cuda_ext, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: type("S", (), {"cuda_stream": 0}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastdiff.ops.cuda_ext"):
        eng = _graph_engine(tiny_ckpt, _WhileCapture)
        got = [[c.full_ids for c in eng.generate(PROMPTS, g)] for g in gens]
        assert cuda_ext.load_runnable() is None
    assert got == want
    assert caplog.text.count("cannot run here") == 1  # detected once, not retried
    assert all(r.ext is None and r.mode == "replay" for r in eng._graph_cache.runners.values())
    cuda_ext._self_test_failure.cache_clear()


def test_replay_follows_blocks_that_end_early(tmp_path_factory):
    """Dream's origin rule can commit a block's last MASK before its last step; the control
    then moves to the next block, so host replay must follow the control words (a fixed
    refresh-then-cached sequence would run the next block without its refresh)."""
    from fastdiff import ModelConfig
    from fastdiff.models import save_random_checkpoint
    path = save_random_checkpoint(tmp_path_factory.mktemp("dream"),
                                  ModelConfig.preset("dream-tiny"), seed=4, dtype=torch.float32)
    eng = Engine.from_pretrained(path, device="cpu", dtype="float32", max_batch_size=4)
    gen = eng.resolve_config(GenerationConfig(gen_length=16, block_length=4, steps=32,
                                              alg="origin", cache="dual", temperature=0.5,
                                              seed=0))
    st = bucket_state(fresh(eng, PROMPTS[:2], gen, seed=0), 2, 64, eng.config.pad_token_id)
    early = []  # blocks done before their last (8th) step

    def note(s, b, i):
        if i < 7 and not bool(s.live_masks(s.prompt_len + 4 * b, 4).any()):
            early.append(b)
    want = eager(eng, clone(st), gen, on_step=note)
    assert set(early) - {3}, "no block but the last ended early: the case tests nothing"
    runner = GraphRunner(eng.model, eng.ops, clone(st), eng._request(gen),
                         capture=EagerCapture(), use_ext=False)
    runner.load(st)
    assert_rows_equal(runner.run(), want, [0, 1])
