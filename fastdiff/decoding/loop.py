"""The one denoising loop (dllm-spec.md section 3). Strategies are objects it consults."""
from __future__ import annotations

import torch

from .policies import Scorer, TopKSchedule
from .state import DecodeState


def _hidden(model, state: DecodeState, cfg_scale: float) -> torch.Tensor:
    """Full-sequence forward -> hidden [B, L, d]; with classifier-free guidance one batched
    forward over [x ; x with the prompt masked] combined as u + (s + 1)(c - u). The LM head is
    linear, so guidance on final hidden states equals guidance on logits."""
    x = state.x
    if cfg_scale <= 0:
        return model.forward(x, state.positions, state.kv_start, state.kv_end)
    un_x = x.clone()
    un_x[:, : state.prompt_len] = state.mask_id  # padding counts as prompt
    both = model.forward(torch.cat([x, un_x]), state.positions.repeat(2, 1),
                         state.kv_start.repeat(2), state.kv_end.repeat(2))
    c, u = both.float().chunk(2)
    return (u + (cfg_scale + 1) * (c - u)).to(both.dtype)


def denoise(model, ops, state: DecodeState, scorer: Scorer, schedule: TopKSchedule, *,
            block_length: int, cfg_scale: float = 0.0) -> DecodeState:
    """Run every block of the generation to completion, updating `state` in place.

    No host reads of tensor values: the number of steps is fixed by the configuration."""
    B, dev = state.batch, state.x.device
    lm_head = model.lm_head[: model.config.vocab_size]
    cols = torch.arange(block_length, device=dev)
    for b in range(state.gen_length // block_length):
        start = state.prompt_len + b * block_length
        block_start = torch.full((B,), start, dtype=torch.int32, device=dev)
        pos_base = torch.full((B,), b * block_length, dtype=torch.int64, device=dev)
        schedule.begin_block(state, start, block_length)
        for i in range(schedule.steps_per_block):
            hidden = _hidden(model, state, cfg_scale)  # [B, L, d]
            masked = state.x[:, start:start + block_length] == state.mask_id
            row_map = torch.where(masked, (start + cols).to(torch.int32)[None], -1)
            x0, conf = scorer(ops, hidden, row_map, lm_head, state, pos_base)
            schedule.commit(ops, state, x0, conf, block_start, i)
            state.step += 1
            state.nfe += 1
    return state
