"""The device-side control logic (fastdiff/decoding/control.py, the mirror of the CUDA control
kernel) drives the loop's own `step` from a host loop that reads only the control's device flags
between steps, as the host-replay fallback does: tokens, NFE and Philox counters must equal the
eager `denoise` (fixed schedule with k taken from the device, threshold; caches none / prefix /
dual; batch 1 and a padded batch of 3; early stop on and off). fp32 tiny writer checkpoint."""
import dataclasses

import pytest
import torch

from fastdiff import Engine, GenerationConfig
from fastdiff.decoding.control import (CTL_BLOCK, CTL_ITERS, CTL_RUNNING, CTL_STEP, Control,
                                       ControlSpec)
from fastdiff.decoding.loop import denoise, step
from fastdiff.decoding.state import DecodeState

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200], [42]]
POLICIES = {"fixed": dict(steps=16), "threshold": dict(threshold=0.9)}


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu", dtype="float32", max_batch_size=4)


def fresh_state(engine, prompts, gen):
    return DecodeState.from_prompts(prompts, gen.gen_length, mask_id=engine.config.mask_token_id,
                                    pad_id=engine.config.pad_token_id,
                                    seeds=[gen.seed or 0] * len(prompts),
                                    device=engine.model.device)


def run_controlled(engine, prompts, gen):
    """The host loop: one control update, one read of its flags, one step; nothing else."""
    state = fresh_state(engine, prompts, gen)
    req = engine._request(gen)
    ctl = Control(state, ControlSpec.for_request(req, state))
    req.policy.bind(state)
    trace = []
    while True:
        ctl.update(state)
        f = ctl.read()
        assert not f.error
        if not f.running:
            break
        assert f.refresh == (f.step == 0)
        assert f.branch == int(f.step > 0 and ctl.spec.phases == 2)  # one graph per phase
        trace.append((f.block, f.step))
        # block and step index from the control words in device memory, as a captured step
        step(engine.model, engine.ops, state, req, f.branch, ctl.ctl[CTL_BLOCK],
             ctl.ctl[CTL_STEP])
    return state, ctl, trace


def run_eager(engine, prompts, gen):
    state = fresh_state(engine, prompts, gen)
    denoise(engine.model, engine.ops, state, engine._request(gen))
    return state


def assert_same(got, want):
    if not torch.equal(got.x, want.x):
        b, j = (got.x != want.x).nonzero()[0].tolist()
        pytest.fail(f"row {b}: first mismatch at column {j}: {got.x[b, j]} vs eager {want.x[b, j]}")
    assert got.nfe.tolist() == want.nfe.tolist()
    assert got.step.tolist() == want.step.tolist()
    assert got.active.tolist() == want.active.tolist()


@pytest.mark.parametrize("stop", [False, True], ids=["nostop", "stop"])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("batch", [1, 3])
def test_control_drives_loop_like_eager(engine, batch, cache, policy, stop):
    prompts = PROMPTS[:1] if batch == 1 else PROMPTS[:3]
    gen = GenerationConfig(gen_length=32, block_length=8, cache=cache, stop_at_eos=stop,
                           **POLICIES[policy])
    state, ctl, trace = run_controlled(engine, prompts, gen)
    assert_same(state, run_eager(engine, prompts, gen))
    blocks = [b for b, _ in trace]
    assert blocks == sorted(blocks) and trace[0] == (0, 0)
    assert ctl.ctl[CTL_ITERS].item() == len(trace) == max(state.nfe.tolist())
    if policy == "fixed" and not stop:
        assert len(trace) == 16  # 4 blocks x 4 steps, every step commits in every row


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1]], ids=["batch4", "batch1"])
def test_early_stop_freezes_rows_and_ends_early(engine, prompts):
    """Rows that stop on EOS are frozen and wait while the others go on; the loop ends before
    the last block once every row is frozen (the eager loop stops the same way). On the tiny
    checkpoint row 0 stops in its first block at these settings."""
    gen = GenerationConfig(gen_length=64, block_length=16, steps=64, stop_at_eos=True)
    state, _, trace = run_controlled(engine, prompts, gen)
    assert_same(state, run_eager(engine, prompts, gen))
    plain, _, plain_trace = run_controlled(engine, prompts, gen.replace(stop_at_eos=False))
    assert not state.active[0] and state.nfe[0] < plain.nfe[0], "row 0 did not stop early"
    if len(prompts) == 1:
        assert len(trace) < len(plain_trace) // 2  # the loop ended in the first blocks
    else:
        assert state.active.any() and len(trace) == len(plain_trace)  # the others went on


def synthetic(x, active, mask_id=9, prompt_len=1):
    """A state over canvas x with every per-row field, cancel (no row cancelled) included."""
    x = torch.tensor(x)
    B, L = x.shape
    i32, i64 = torch.int32, torch.int64
    extra = {"cancel": torch.zeros(B, dtype=torch.bool), "m0": torch.zeros(B, dtype=i64)}
    names = {f.name for f in dataclasses.fields(DecodeState)}
    st = DecodeState(x=x, positions=torch.zeros_like(x), kv_start=torch.zeros(B, dtype=i32),
                     kv_end=torch.full((B,), L, dtype=i32), seed=torch.zeros(B, dtype=i64),
                     step=torch.zeros(B, dtype=i64), nfe=torch.zeros(B, dtype=i32),
                     active=torch.tensor(active), prompt_len=prompt_len,
                     gen_length=L - prompt_len, mask_id=mask_id,
                     **{k: v for k, v in extra.items() if k in names})
    st.cancel = extra["cancel"] if "cancel" not in names else st.cancel
    return st


def test_block_advance_waiting_and_stop_on_synthetic_state():
    M = 9
    st = synthetic([[1, M, M, M, M], [1, M, M, M, M]], [True, True])
    ctl = Control(st, ControlSpec(block_length=2, n_blocks=2, steps_per_block=2, max_steps=2,
                                  per_block=True))
    ctl.update(st)
    f = ctl.read()
    assert (f.block, f.step, f.refresh, f.running, f.branch) == (0, 0, True, True, 0)
    assert ctl.k.tolist() == [1, 1]  # 2 masks over 2 steps
    st.x[0, 1:3] = 5  # row 0 completes its block; row 1 has one MASK left: row 0 waits
    st.x[1, 1] = 5
    ctl.update(st)
    f = ctl.read()
    assert (f.block, f.step, f.refresh, f.branch) == (0, 1, False, 1)
    st.x[1, 2] = 5  # both complete: the pointer advances, refresh is due
    ctl.update(st)
    f = ctl.read()
    assert (f.block, f.step, f.refresh, f.branch) == (1, 0, True, 2)
    st.active[:] = False  # every row frozen: stop
    ctl.update(st)
    f = ctl.read()
    assert not f.running and f.branch == -1 and f.block == 1 and f.iters == 3
    ctl.update(st)  # stays done, changes nothing
    assert ctl.read() == f


def test_max_steps_advances_and_error_guard():
    M = 9
    st = synthetic([[1, M, M, M, M]], [True])
    ctl = Control(st, ControlSpec(block_length=2, n_blocks=2, steps_per_block=0, max_steps=2,
                                  phases=1, per_block=True))
    seen = []
    for _ in range(6):  # nothing commits: each block runs max_steps steps, then stop
        ctl.update(st)
        f = ctl.read()
        seen.append((f.block, f.step, f.running, f.branch))
    assert seen == [(0, 0, True, 0), (0, 1, True, 0), (1, 0, True, 1), (1, 1, True, 1),
                    (1, 1, False, -1), (1, 1, False, -1)]
    assert ctl.ctl[CTL_RUNNING].item() == 0 and ctl.ctl[CTL_BLOCK].item() == 1


def test_fixed_k_spreads_remainder_first():
    M = 9
    st = synthetic([[1] + [M] * 5], [True])  # one block of 5 masks, 3 steps
    ctl = Control(st, ControlSpec(block_length=5, n_blocks=1, steps_per_block=3, max_steps=3))
    ks = []
    for _ in range(3):
        ctl.update(st)
        ks.append(ctl.k.item())
    assert ks == [2, 2, 1]


def test_update_has_no_host_sync(engine, monkeypatch):
    """update() is device work only, like the kernel it mirrors."""
    gen = GenerationConfig(gen_length=16, block_length=8, threshold=0.9, stop_at_eos=True)
    state = fresh_state(engine, PROMPTS[:3], gen)
    ctl = Control(state, ControlSpec.for_request(engine._request(gen), state))

    def boom(*a, **k):
        raise AssertionError("host sync inside Control.update")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__int__", "nonzero"):
            m.setattr(torch.Tensor, name, boom)
        m.setattr(torch, "nonzero", boom)
        ctl.update(state)
    assert ctl.read().running


def test_cancelled_row_counts_as_stopped():
    """A row cancelled mid-generation (state.cancel) is treated exactly like an early-stopped
    one: the others no longer wait for its MASKs; cancelling every row ends the loop at the next
    update. `active` itself is left to the step."""
    M = 9
    spec = ControlSpec(block_length=3, n_blocks=2, steps_per_block=0, max_steps=3, phases=2)
    words = {}
    for how in ("plain", "frozen", "cancelled"):
        st = synthetic([[1, M, M, M, M, M, M]] * 2, [True, True])
        ctl = Control(st, spec)
        ctl.update(st)  # block 0, step 0
        st.x[0, 1:4] = 5  # row 0 fills block 0; row 1 commits nothing
        if how == "frozen":
            st.active[1] = False
        elif how == "cancelled":
            st.cancel[1] = True
        ctl.update(st)
        words[how] = ctl.ctl.tolist()
        assert st.active.tolist() == [True, how != "frozen"]
    assert words["cancelled"] == words["frozen"], words
    assert (words["cancelled"][CTL_BLOCK], words["plain"][CTL_BLOCK]) == (1, 0), words
    st.cancel[:] = True  # the last state: every row cancelled
    ctl.update(st)
    f = ctl.read()
    assert not f.running and f.branch == -1 and (f.block, f.iters) == (1, 2)


def test_kernel_host_code_matches_the_mirror_with_cancel():
    """The CUDA kernel's decision code (control_update_host: the same control.cuh functions the
    kernel runs) and Control.update agree word for word when rows are cancelled one by one, with
    a fixed schedule (k) and with a threshold; needs the built fastdiff._C."""
    from fastdiff.ops import cuda_ext
    ext = cuda_ext.load()
    if ext is None:
        pytest.skip("fastdiff._C is not built here: " + cuda_ext.BUILD_HINT)
    if "cancel" not in (ext.ControlSpec.__init__.__doc__ or ""):
        pytest.fail("fastdiff._C predates ControlSpec(cancel=...): rebuild it (" +
                    cuda_ext.BUILD_HINT + ")")
    M = 9
    for steps, phases in [(3, 2), (0, 1)]:
        gen = torch.Generator().manual_seed(steps)
        st = synthetic([[1] + [M] * 8] * 4, [True] * 4)
        spec = ControlSpec(block_length=4, n_blocks=2, steps_per_block=steps,
                           max_steps=steps or 4, phases=phases, per_block=False)
        mirror, host = Control(st, spec), Control(st, spec)
        for n in range(20):
            mirror.update(st)
            ext.control_update_host(host.cuda_spec(ext, st))
            assert host.ctl.tolist() == mirror.ctl.tolist(), (steps, n, host.ctl, mirror.ctl)
            assert host.k.tolist() == mirror.k.tolist(), (steps, n)
            f = mirror.read()
            if not f.running:
                break
            blk = st.x[:, 1 + 4 * f.block:1 + 4 * (f.block + 1)]
            blk[(torch.rand(blk.shape, generator=gen) < 0.3) & (blk == M)] = 5
            if n < 4:
                st.cancel[n] = True  # one more row cancelled per update: all of them by n = 3
        assert not mirror.read().running and n == 4, (steps, n)


def test_spec_validation():
    with pytest.raises(ValueError, match="phases"):
        ControlSpec(block_length=4, n_blocks=2, steps_per_block=2, max_steps=2, phases=3)
    with pytest.raises(ValueError, match="block_length"):
        ControlSpec(block_length=0, n_blocks=2, steps_per_block=2, max_steps=2)


def test_static_branches_match_the_control_for_a_fixed_schedule(engine):
    """The host-replay fallback's known sequence (fixed schedule, no early stop) is the one the
    control picks, so replaying it without reads is the same loop."""
    from fastdiff.decoding.graphs import static_branches
    for cache in ("none", "dual"):
        gen = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=cache)
        _, ctl, trace = run_controlled(engine, PROMPTS[:3], gen)
        s = ctl.spec
        picked = [int(i > 0 and s.phases == 2) for b, i in trace]  # one graph per phase
        assert static_branches(s) == picked


def test_bucket_state_keeps_every_row(engine):
    """Graph buckets pad the batch (frozen rows) and the prompt (more left padding): every real
    row decodes to the same tokens and NFE as without the bucket."""
    from fastdiff.decoding.graphs import batch_bucket, bucket_state, prompt_bucket
    assert (batch_bucket(3), prompt_bucket(9), prompt_bucket(64)) == (4, 64, 64)
    gen = GenerationConfig(gen_length=16, block_length=8, threshold=0.9, cache="dual")
    plain = run_eager(engine, PROMPTS[:3], gen)
    big = bucket_state(fresh_state(engine, PROMPTS[:3], gen), 4, 13, engine.config.pad_token_id)
    denoise(engine.model, engine.ops, big, engine._request(gen))
    assert torch.equal(big.generated()[:3], plain.generated())
    assert big.nfe[:3].tolist() == plain.nfe.tolist() and big.nfe[3] == 0
    assert (big.generated()[3] == engine.config.mask_token_id).all()  # the frozen row


@pytest.mark.parametrize("cache, kw", [("none", dict(steps=16)), ("dual", dict(steps=16)),
                                       ("dual", dict(threshold=0.9, stop_at_eos=True)),
                                       ("prefix", dict(factor=1.0))])
def test_graph_runner_replay_logic_equals_eager(engine, cache, kw):
    """GraphRunner's host-replay path (warm-up, one "graph" per block and phase, the static
    sequence or one flag read per step) with stand-in graphs that call the step, on a bucketed
    state (batch 3 -> 4, prompt 9 -> 64): equal to the eager loop on the same state."""
    from dataclasses import replace

    from fastdiff.decoding.graphs import EagerCapture, GraphRunner, bucket_state
    gen = GenerationConfig(gen_length=32, block_length=8, cache=cache, **kw)
    st = bucket_state(fresh_state(engine, PROMPTS[:3], gen), 4, 64, engine.config.pad_token_id)

    def clone(s):
        return replace(s, **{n: getattr(s, n).clone() for n in ("x", "step", "nfe", "active")})

    want = clone(st)
    denoise(engine.model, engine.ops, want, engine._request(gen))
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen),
                         mode="auto", capture=EagerCapture(), use_ext=False)
    assert runner.mode == "replay" and len(runner.graphs) == runner.spec.n_branches
    runner.load(st)
    assert_same(runner.run(), want)
    assert runner.control.read().iters == max(want.nfe.tolist())


def test_graph_cache_reuses_a_bucket_and_writes_back(engine):
    """GraphCache (what the engine's graphs=True path calls): one runner per bucket, reused by a
    second request of the same bucket with another threshold; results written back equal the
    eager loop's."""
    from fastdiff.decoding.graphs import EagerCapture, GraphCache
    cache = GraphCache(engine.model, engine.ops, engine.config.pad_token_id,
                       capture=EagerCapture, use_ext=False)
    for prompts, tau in [(PROMPTS[:3], 0.9), (PROMPTS[1:4], 0.7)]:
        gen = GenerationConfig(gen_length=16, block_length=8, cache="dual", threshold=tau)
        got = fresh_state(engine, prompts, gen)
        cache.decode(got, engine._request(gen))
        assert_same(got, run_eager(engine, prompts, gen))
    assert len(cache.runners) == 1
