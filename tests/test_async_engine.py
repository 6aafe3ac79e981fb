"""AsyncEngine: batching (and that it never changes an answer), streaming, cancellation,
overload, and errors that fail one request without stopping the worker."""
import asyncio

import pytest

from fastdiff import AsyncEngine, Engine
from fastdiff.serving import ContextLengthError, OverloadedError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu", max_batch_size=8)


@pytest.fixture(scope="module")
def solo(tiny_ckpt):
    """A second engine for single runs (the AsyncEngine's worker owns `engine`)."""
    return Engine.from_pretrained(tiny_ckpt, device="cpu")


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def single(solo, prompt, gen, seed):
    return solo.generate_ids([solo.encode(prompt)], gen, seeds=[seed])[0]


def same(result, completion) -> None:
    assert (result.token_ids, result.text, result.finish_reason, result.nfe) == (
        completion.token_ids, completion.text, completion.finish_reason, completion.nfe)
    assert result.completion_tokens == len(completion.token_ids)


def test_batches_compatible_requests_and_matches_single_runs(engine, solo):
    """6 requests with one setting run as one batch, 2 with another as a second, a long prompt
    (another length bucket) alone; every row equals its single run."""
    long_prompt = "the quick brown fox " * 30
    prompts = [f"prompt number {i}" + "!" * i for i in range(6)]

    async def main():
        async with AsyncEngine(engine, max_batch_size=8, max_wait_ms=300) as ae:
            sampled = ae.make_config(gen_length=16, block_length=8, temperature=0.8)
            greedy = ae.make_config(gen_length=16)
            jobs = [ae.generate(p, sampled, seed=10 + i) for i, p in enumerate(prompts)]
            jobs += [ae.generate(p, greedy) for p in prompts[:2]]
            jobs.append(ae.generate(long_prompt, sampled, seed=99))
            out = await asyncio.gather(*jobs)
            return out, ae.stats(), sampled, greedy

    out, stats, sampled, greedy = run(main())
    assert len(engine.encode(long_prompt)) > 64  # another bucket than the short prompts
    assert stats["batch_sizes"] == {6: 1, 2: 1, 1: 1}, stats
    assert stats["batches"] == 3 and stats["requests_completed"] == 9
    for i, p in enumerate(prompts):
        same(out[i], single(solo, p, sampled, 10 + i))
        assert out[i].prompt_tokens == len(solo.encode(p))
    for i, p in enumerate(prompts[:2]):
        same(out[6 + i], single(solo, p, greedy, 0))  # greedy: the seed does not matter
    same(out[8], single(solo, long_prompt, sampled, 99))


def test_stream_events_and_final_result(engine, solo):
    async def main():
        async with AsyncEngine(engine, max_wait_ms=0) as ae:
            gen = ae.make_config(gen_length=32, block_length=8, threshold=0.6)
            per_block = [ev async for ev in ae.stream("hello there", gen, seed=3)]
            fixed = ae.make_config(gen_length=16, block_length=8, steps=8, temperature=0.5)
            per_step = [ev async for ev in ae.stream("hello there", fixed, seed=4,
                                                     stream_interval="step")]
            eos = ae.make_config(gen_length=32, block_length=8, stop_at_eos=True)
            early = [ev async for ev in ae.stream("prompt number 0", eos)]
            alone = await ae.generate("hello there", gen, seed=3)
            return per_block, per_step, early, alone, gen, eos

    per_block, per_step, early, alone, gen, eos = run(main())
    mask = engine.config.mask_token_id
    # one event per finished block, the last one final; new_tokens add up to the canvas
    assert [ev.block for ev in per_block[:-1]] == [0, 1, 2] and per_block[-1].done
    canvas = [mask] * 32
    for ev in per_block:
        for j, tok in ev.new_tokens.items():
            assert canvas[j] == mask
            canvas[j] = tok
        assert canvas == ev.canvas
        if not ev.done:
            assert mask not in ev.canvas[: 8 * (ev.block + 1)]
    final = per_block[-1]
    ref = single(solo, "hello there", gen, 3)
    assert (final.text, final.finish_reason, final.usage) == (
        ref.text, ref.finish_reason, {"prompt_tokens": len(solo.encode("hello there")),
                                      "completion_tokens": len(ref.token_ids), "nfe": ref.nfe})
    same(alone, ref)
    # every step: 8 steps, the last one final
    assert [(ev.block, ev.step) for ev in per_step] == [(b, i) for b in (0, 1) for i in range(4)]
    assert [ev.done for ev in per_step] == [False] * 7 + [True]
    assert all(len(ev.new_tokens) == 2 for ev in per_step)
    # early stop: the row's stream ends in the block where it stopped
    ref = single(solo, "prompt number 0", eos, 0)
    assert ref.finish_reason == "eos" and ref.nfe < 8  # precondition: stops in block 0
    assert len(early) == 1 and early[0].done and early[0].block == 0
    assert (early[0].text, early[0].usage["nfe"]) == (ref.text, ref.nfe)


def test_cancel_leaves_the_other_rows_undisturbed(engine, solo):
    async def main():
        async with AsyncEngine(engine, max_batch_size=4, max_wait_ms=300) as ae:
            gen = ae.make_config(gen_length=48, block_length=8, temperature=0.7)
            keep = ae.stream("keep me", gen, seed=1, stream_interval="step")
            drop = ae.stream("drop me", gen, seed=2, stream_interval="step")
            task = asyncio.create_task(ae.generate("drop me too", gen, seed=3))
            other = asyncio.create_task(ae.generate("keep me too", gen, seed=4))
            first = await drop.__anext__()  # the run is under way
            await drop.aclose()
            task.cancel()
            kept = [ev async for ev in keep]
            with pytest.raises(asyncio.CancelledError):
                await task
            return first, kept[-1], await other, ae.stats(), gen

    first, kept, other, stats, gen = run(main())
    assert first.block == 0 and first.step == 0
    assert stats["requests_cancelled"] == 2 and stats["batch_sizes"] == {4: 1}, stats
    ref = single(solo, "keep me", gen, 1)
    assert (kept.text, kept.usage["nfe"]) == (ref.text, ref.nfe)
    same(other, single(solo, "keep me too", gen, 4))


def test_overload_and_cancel_while_queued(engine):
    async def main():
        async with AsyncEngine(engine, max_batch_size=1, max_wait_ms=0, max_queue=2) as ae:
            slow = ae.make_config(gen_length=64, block_length=64)
            quick = ae.make_config(gen_length=4)
            running = ae.stream("busy", slow, stream_interval="step")
            await running.__anext__()  # running now: the queue is empty
            queued = [ae.stream("wait", quick), asyncio.create_task(ae.generate("wait", quick))]
            await asyncio.sleep(0)
            assert ae.stats()["queue_depth"] == 2
            with pytest.raises(OverloadedError, match="max_queue=2"):
                await ae.generate("one too many", quick)
            await queued[0].aclose()  # cancelled while queued: leaves the queue
            assert ae.stats()["queue_depth"] == 1
            await running.aclose()
            after = await ae.generate("after", quick)
            return await queued[1], after, ae.stats()

    res, after, stats = run(main())
    assert res.completion_tokens <= 4 and after.completion_tokens <= 4
    assert stats["requests_rejected"] == 1 and stats["requests_cancelled"] == 2, stats


def test_errors_fail_one_request_and_the_worker_keeps_serving(engine, solo, monkeypatch):
    real = engine.generate_ids

    def flaky(ids, *args, **kwargs):
        if any(7 in p for p in ids):  # a prompt holding token 7 makes the run fail
            raise RuntimeError("device fault")
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(engine, "generate_ids", flaky)

    async def main():
        async with AsyncEngine(engine, max_wait_ms=0) as ae:
            gen = ae.make_config(gen_length=8)
            with pytest.raises(ValueError, match="steps"):
                ae.make_config(gen_length=8, steps=0)
            with pytest.raises(ValueError, match="not a generation setting"):
                ae.make_config(gen_length=8, bogus=1)
            with pytest.raises(ValueError, match="outside the vocabulary"):
                await ae.generate([1, 2, 10**6], gen)
            with pytest.raises(ContextLengthError, match="maximum context length is 1024"):
                await ae.generate([5] * 1020, gen)
            with pytest.raises(ValueError, match="seed"):
                await ae.generate("x", gen, seed=-1)
            bad = await asyncio.gather(ae.generate([3, 7, 9], gen), return_exceptions=True)
            stream = ae.stream([7, 7], gen)
            with pytest.raises(RuntimeError, match="device fault"):
                [ev async for ev in stream]
            ok = await ae.generate("still serving", gen, seed=5)
            return bad[0], ok, ae.stats(), gen

    bad, ok, stats, gen = run(main())
    assert isinstance(bad, RuntimeError) and "device fault" in str(bad)
    same(ok, single(solo, "still serving", gen, 5))
    assert stats["worker_alive"] and stats["requests_failed"] == 2, stats


def test_lifecycle_and_settings_checks(engine):
    with pytest.raises(ValueError, match="max_batch_size=99"):
        AsyncEngine(engine, max_batch_size=99)
    with pytest.raises(ValueError, match="max_wait_ms"):
        AsyncEngine(engine, max_wait_ms=-1)

    async def main():
        ae = AsyncEngine(engine)
        res = await ae.generate("lazy start", ae.make_config(gen_length=4))
        await ae.close()
        assert not ae.stats()["worker_alive"]
        with pytest.raises(RuntimeError, match="closed"):
            await ae.generate("x", ae.make_config(gen_length=4))
        with pytest.raises(ValueError, match="stream_interval"):
            ae.stream("x", stream_interval="token")
        return res

    assert run(main()).finish_reason in ("eos", "length")
