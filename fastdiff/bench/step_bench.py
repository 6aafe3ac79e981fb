"""One denoising step in isolation: the cached (dual) step and the full refresh forward at a
given context, against the step's floor (weight + KV bytes read / copy bandwidth). On a GPU the
step is timed as a CUDA graph replay (as the engine runs it: no host launch gaps), else (or if
its capture fails, logged) eagerly; each row says which ("timing")."""
from __future__ import annotations

import torch

from .. import GenerationConfig
from ..decoding.cache import CACHED, REFRESH
from ..decoding.loop import step
from ..decoding.state import DecodeState
from . import env
from .runner import step_floor_ms


def time_steps(engine, *, batch: int, context: int, block_length: int = 32, warmup: int = 2,
               repeats: int = 10) -> list[dict]:
    """Rows for the refresh step (full forward over `context` tokens) and the dual-cache step
    (block only, attending to the whole cached context) at the last block of a generation."""
    cfg, dev = engine.config, engine.model.device
    gen_length = block_length * 2
    prompt_len = context - gen_length
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), generator=g)
    prompts = torch.where(prompts == cfg.mask_token_id, 0, prompts).tolist()
    gen = GenerationConfig(gen_length=gen_length, block_length=block_length,
                           steps=gen_length, cache="dual")
    req = engine._request(gen)
    state = DecodeState.from_prompts(prompts, gen_length, mask_id=cfg.mask_token_id,
                                     pad_id=cfg.pad_token_id, seeds=[0] * batch, device=dev)
    block = 1  # the last block
    req.policy.bind(state)
    bandwidth = env.copy_bandwidth(dev)
    from .step_profile import matmul_rate
    rate = matmul_rate(dev, engine.model.dtype)
    rows = []
    with torch.inference_mode():
        for name, i, fed, kv in (("refresh_step", 0, context, 0),
                                 ("dual_cached_step", 1, block_length, context)):
            x0 = state.x.clone()

            def once():
                state.x.copy_(x0)  # every repeat sees the same masked block
                step(engine.model, engine.ops, state, req, min(i, CACHED), block, i)
            step(engine.model, engine.ops, state, req, REFRESH, block, 0)  # fill the cache
            if i > 0:  # step i starts from the canvas step 0 left
                x0 = state.x.clone()
            run, timing = _as_graph(once, dev)
            times = env.timed(run, dev, warmup=warmup, repeats=repeats)
            ms = 1e3 * env.median(times)
            floor = step_floor_ms(engine.model, kv * batch, bandwidth)
            compute = 1e3 * step_flops(engine.model, fed * batch, context, block_length * batch) \
                / rate
            rows.append(dict(kind=name, batch=batch, context=context, block_length=block_length,
                             tokens_fed=fed * batch, step_ms_p50=ms,
                             step_ms_p90=1e3 * env.percentile(times, 0.9), floor_ms=floor,
                             floor_fraction=floor / ms, copy_bandwidth_gbs=bandwidth / 1e9,
                             compute_floor_ms=compute, matmul_tflops=rate / 1e12,
                             floor_fraction_with_compute=max(floor, compute) / ms,
                             backend=engine.backend, timing=timing, random_weights=True))
    return rows


def step_flops(model, tokens: int, keys: int, scored: int) -> float:
    """FLOPs of a forward over `tokens` fed tokens attending to `keys` keys each, `scored`
    rows through the LM head: 2 x layer weights x tokens + attention 4 x tokens x keys x
    (H x head_dim) per layer + 2 x head weights x scored (a compute floor next to the bytes
    floor: a refresh step at thousands of tokens is compute bound, its bytes floor is not its
    limit)."""
    cfg = model.config
    layer = sum(t.numel() for t in model.layers[0].tensors() if t.dim() == 2)
    attn = 4 * tokens * keys * cfg.n_heads * cfg.head_dim
    return cfg.n_layers * (2 * layer * tokens + attn) + 2 * model.lm_head.numel() * scored


def _as_graph(fn, dev: torch.device):
    """(callable, "cuda graph") replaying fn captured in a CUDA graph (warmed up on a side
    stream first), or (fn, "eager") on a CPU or when the capture fails (the reason logged)."""
    if dev.type != "cuda":
        return fn, "eager"
    try:
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            fn()
            fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, "cuda graph"
    except Exception as e:  # noqa: BLE001 (time it eagerly, and say so)
        print(f"[step] capturing the step failed ({type(e).__name__}: {e}); timing it eagerly",
              flush=True)
        torch.cuda.synchronize(dev)
        return fn, "eager"
