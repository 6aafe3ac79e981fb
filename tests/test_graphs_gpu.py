"""GPU checks of the device loop (fastdiff._C + fastdiff/decoding/graphs.py): what the driver and
torch offer, the CUDA control kernel against its torch mirror, tokens of the WHILE runner vs the
host-replay fallback vs the eager loop (equal: same shapes, same kernels), zero host round trips
in WHILE mode, and streaming that sees the first block before the generation ends.

All `gpu`-marked: skipped without CUDA. Run on the GPU machine after
`pip install --no-build-isolation --no-deps -e .` (which builds fastdiff._C) with
`pytest -m gpu tests/test_graphs_gpu.py -s` (the support report is printed).
FASTDIFF_GPU_8B=0 skips the LLaDA-8B-shaped case (random bf16 weights, built on the GPU)."""
import json
import os
import time
from dataclasses import replace

import pytest
import torch

from fastdiff import Engine, GenerationConfig, ModelConfig
from fastdiff.decoding.control import Control, ControlSpec
from fastdiff.decoding.graphs import GraphRunner, batch_bucket, bucket_state, prompt_bucket
from fastdiff.decoding.loop import denoise
from fastdiff.decoding.state import DecodeState
from fastdiff.ops import cuda_ext

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200], [42]]
CASES = {"fixed": dict(steps=32), "threshold": dict(threshold=0.9)}


def ext_or_fail():
    ext = cuda_ext.load()
    if ext is None:
        pytest.fail("fastdiff._C is missing on a GPU machine: " + cuda_ext.BUILD_HINT)
    return ext


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cuda")


def clone(st: DecodeState) -> DecodeState:
    return replace(st, **{n: getattr(st, n).clone() for n in DecodeState.TENSORS})


def bucketed(engine, prompts, gen) -> DecodeState:
    st = DecodeState.from_prompts(prompts, gen.gen_length, mask_id=engine.config.mask_token_id,
                                  pad_id=engine.config.pad_token_id, seeds=[7] * len(prompts),
                                  device=engine.model.device)
    return bucket_state(st, batch_bucket(len(prompts)), prompt_bucket(st.prompt_len),
                        engine.config.pad_token_id)


def eager(engine, st, gen, steps: list = None) -> DecodeState:
    """The eager loop on a copy of st; `steps` (a list) collects the (block, step) it ran."""
    st = clone(st)
    hook = None if steps is None else (lambda s, b, i: steps.append((b, i)))
    denoise(engine.model, engine.ops, st, engine._request(gen), on_step=hook)
    torch.cuda.synchronize()
    return st


def graphed(engine, st, gen, mode, **kw) -> GraphRunner:
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen), mode=mode,
                         **kw)
    runner.load(st)
    runner.run()
    torch.cuda.synchronize()
    return runner


def assert_same(got: DecodeState, want: DecodeState, what: str) -> None:
    if not torch.equal(got.x, want.x):
        b, j = (got.x != want.x).nonzero()[0].tolist()
        pytest.fail(f"{what}: row {b} first mismatch at column {j}: {got.x[b, j].item()} vs "
                    f"eager {want.x[b, j].item()}")
    assert got.nfe.tolist() == want.nfe.tolist(), what


def test_report_conditional_support():
    """First GPU call: versions and which conditional-node APIs work (printed, and written to
    $OUT/conditional_support.json when OUT is set); then the WHILE/IF/child-graph self test."""
    info = cuda_ext.conditional_support()
    print("\nconditional support:", json.dumps(info, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "conditional_support.json"), "w") as f:
            json.dump(info, f, indent=1)
    ext = ext_or_fail()
    assert info["while_node"] == "ok" and info["if_node"] == "ok", info
    assert ext.self_test(torch.cuda.current_stream().cuda_stream) == \
        {"iterations": 5, "if0_runs": 2, "if1_runs": 3}
    if info.get("switch_node") == "ok":  # the form the runner builds where it is offered
        assert ext.self_test(torch.cuda.current_stream().cuda_stream, use_switch=True) == \
            {"iterations": 5, "case0_runs": 2, "case1_runs": 3}
        assert cuda_ext.switch_works(ext)


def test_cuda_errors_name_the_call():
    ext = ext_or_fail()
    with pytest.raises(ValueError, match="batch"):
        ext.control_update(ext.ControlSpec(x=8, active=8, ctl=8, k=0, m0=0, mask_id=1, batch=0,
                                           length=8, prompt_len=0, block_length=4, n_blocks=2,
                                           steps_per_block=0, max_steps=4, phases=1, per_block=0),
                           0)
    with pytest.raises(ValueError, match="step graphs"):
        ext.LoopGraph([], ext.ControlSpec(x=8, active=8, ctl=8, k=0, m0=0, mask_id=1, batch=1,
                                          length=8, prompt_len=0, block_length=4, n_blocks=2,
                                          steps_per_block=0, max_steps=4, phases=1,
                                          per_block=0))


@pytest.mark.parametrize("steps", [0, 3])
def test_control_kernel_matches_torch_mirror(steps):
    """Random commits between updates: the CUDA kernel and Control.update agree word for word."""
    ext = ext_or_fail()
    gen = torch.Generator(device="cpu").manual_seed(steps)
    B, P, Lb, nb, M = 5, 3, 6, 3, 99
    x = torch.full((B, P + Lb * nb), M, dtype=torch.int64)
    x[:, :P] = 1
    st = DecodeState(x=x.cuda(), positions=torch.zeros_like(x).cuda(),
                     kv_start=torch.zeros(B, dtype=torch.int32, device="cuda"),
                     kv_end=torch.zeros(B, dtype=torch.int32, device="cuda"),
                     seed=torch.zeros(B, dtype=torch.int64, device="cuda"),
                     step=torch.zeros(B, dtype=torch.int64, device="cuda"),
                     nfe=torch.zeros(B, dtype=torch.int32, device="cuda"),
                     active=torch.ones(B, dtype=torch.bool, device="cuda"),
                     cancel=torch.zeros(B, dtype=torch.bool, device="cuda"),
                     m0=torch.zeros(B, dtype=torch.int64, device="cuda"), prompt_len=P,
                     gen_length=Lb * nb, mask_id=M)
    spec = ControlSpec(block_length=Lb, n_blocks=nb, steps_per_block=steps,
                       max_steps=steps or Lb, phases=2, per_block=True)
    mirror, kernel = Control(st, spec), Control(st, spec)
    stream = torch.cuda.current_stream().cuda_stream
    for it in range(40):
        mirror.update(st)
        ext.control_update(kernel.cuda_spec(ext, st), stream)
        assert kernel.ctl.tolist() == mirror.ctl.tolist(), f"update {it}"
        if steps:
            assert kernel.k.tolist() == mirror.k.tolist(), f"update {it}"
        if not mirror.read().running:
            break
        f = mirror.read()  # commit a random subset of the block's masks; sometimes freeze a row
        cols = slice(P + f.block * Lb, P + (f.block + 1) * Lb)
        blk = st.x[:, cols]
        pick = torch.rand(blk.shape, generator=gen).cuda() < 0.3
        blk[pick & (blk == M)] = 5
        if it == 7:
            st.active[2] = False
    assert not mirror.read().running


@pytest.mark.parametrize("policy", list(CASES))
@pytest.mark.parametrize("cache", ["none", "dual", "prefix"])
@pytest.mark.parametrize("batch", [1, 4])
def test_while_replay_eager_tokens_equal(engine, batch, cache, policy):
    gen = GenerationConfig(gen_length=64, block_length=16, cache=cache, stop_at_eos=True,
                           **CASES[policy])
    st = bucketed(engine, PROMPTS[:batch], gen)
    steps = []
    want = eager(engine, st, gen, steps)
    replay = graphed(engine, st, gen, "replay")
    assert_same(replay.state, want, "host replay")
    loop = graphed(engine, st, gen, "while")
    assert loop.mode == "while", "the WHILE build fell back to replay (see the log)"
    assert_same(loop.state, want, "WHILE runner")
    # the loop steps a block until its slowest live row is done: as many steps as eager ran
    assert loop.control.read().iters == replay.control.read().iters == len(steps)
    # one captured graph per phase whatever the number of blocks (4 here)
    assert len(loop.graphs) == len(replay.graphs) == (1 if cache == "none" else 2)
    print(f"\n{cache}/{policy}: WHILE body picks its step with a {loop.loop.kind} node")


@pytest.mark.parametrize("mode", ["while", "replay"])
def test_cancelled_row_freezes_others_equal(engine, mode):
    """A row cancelled before the launch never takes part; the other rows equal the eager loop
    on the same state (where the cancelled row is frozen from the start too)."""
    gen = GenerationConfig(gen_length=64, block_length=16, cache="dual", threshold=0.9)
    st = bucketed(engine, PROMPTS, gen)
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen), mode=mode)
    runner.load(st)
    runner.cancel(1)
    runner.run()
    torch.cuda.synchronize()
    frozen = clone(st)
    frozen.cancel[1] = True
    want = eager(engine, frozen, gen)
    assert_same(runner.state, want, f"{mode} with row 1 cancelled")
    assert runner.state.nfe[1].item() == 0 and not runner.state.active[1].item()


def test_while_mode_has_no_host_round_trip(engine):
    """design.md: sync debug mode raises on any torch sync; the profiler shows no device-to-host
    copy while the generation runs (one graph launch)."""
    from torch.profiler import ProfilerActivity, profile
    gen = GenerationConfig(gen_length=64, block_length=16, cache="dual", threshold=0.9,
                           stop_at_eos=True)
    st = bucketed(engine, PROMPTS, gen)
    runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen), mode="while")
    runner.load(st)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.set_sync_debug_mode("error")
        try:
            runner.launch()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert not [n for n in names if "DtoH" in n or "Device -> Host" in n], names
    assert runner.control.read().iters > 1


def test_graph_cache_second_request_has_no_sync(engine):
    """The engine-facing path: a second request of a bucket goes through bucketing, copy-in,
    one launch and copy-out with no synchronizing call; tokens equal the eager loop's."""
    from fastdiff.decoding.graphs import GraphCache
    cache = GraphCache(engine.model, engine.ops, engine.config.pad_token_id, mode="while")
    gen = GenerationConfig(gen_length=64, block_length=16, cache="dual", threshold=0.9)
    for i, prompts in enumerate([PROMPTS[:3], PROMPTS[1:4]]):
        st = DecodeState.from_prompts(prompts, gen.gen_length,
                                      mask_id=engine.config.mask_token_id,
                                      pad_id=engine.config.pad_token_id, seeds=[7] * 3,
                                      device=engine.model.device)
        want = eager(engine, bucketed(engine, prompts, gen), gen)
        req = engine._request(gen)
        torch.cuda.synchronize()
        if i == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            cache.decode(st, req)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        extra = want.prompt_len - st.prompt_len
        assert torch.equal(st.x, want.x[:3, extra:]) and st.nfe.tolist() == want.nfe[:3].tolist()
    assert len(cache.runners) == 1


def test_streaming_sees_first_block_before_the_end(engine):
    gen = GenerationConfig(gen_length=256, block_length=32, cache="dual", threshold=0.9)
    st = bucketed(engine, PROMPTS[:2], gen)
    for mode in ("while", "replay"):
        runner = GraphRunner(engine.model, engine.ops, clone(st), engine._request(gen),
                             mode=mode, progress=True)
        runner.load(st)
        torch.cuda.synchronize()
        got, first_running = [], None
        for block, tokens in runner.stream():
            assert block == len(got), f"{mode}: blocks out of order"
            if first_running is None:
                p = None
                while p is None:
                    p = runner.progress.read()
                first_running = p.running
            got.append(tokens)
        torch.cuda.synchronize()
        assert first_running, f"{mode}: the first block arrived only after the end"
        assert torch.equal(torch.cat(got, 1), runner.state.generated().cpu()), mode


@pytest.mark.skipif(os.environ.get("FASTDIFF_GPU_8B") == "0", reason="FASTDIFF_GPU_8B=0")
def test_llada_8b_shapes_tokens_equal():
    """LLaDA-8B shapes, random bf16 weights built on the GPU, triton backend: WHILE runner, host
    replay and eager give equal greedy tokens (batch 1 and 4, cache none and dual)."""
    from fastdiff.models import LLaDAModel, random_weights
    from fastdiff.ops import get_ops
    cfg = ModelConfig.preset("llada-8b")
    ops = get_ops("triton")
    model = LLaDAModel(cfg, random_weights(cfg, dtype=torch.bfloat16, device="cuda"), ops)
    engine = Engine(model, None, backend="triton", max_batch_size=4, max_seq_len=512)
    prompts = [[100 + 7 * i + j for j in range(20 + 9 * i)] for i in range(4)]
    t0 = time.perf_counter()
    for batch, cache, policy in [(1, "none", "fixed"), (1, "dual", "threshold"),
                                 (4, "dual", "fixed"), (4, "none", "threshold")]:
        gen = GenerationConfig(gen_length=64, block_length=32, cache=cache, **CASES[policy])
        st = bucketed(engine, prompts[:batch], gen)
        want = eager(engine, st, gen)
        assert_same(graphed(engine, st, gen, "replay").state, want, f"replay {batch} {cache}")
        assert_same(graphed(engine, st, gen, "while").state, want, f"while {batch} {cache}")
    print(f"\n8B-shaped cases: {time.perf_counter() - t0:.1f} s")
