"""Random LLaDA checkpoints in the real on-disk layout, for tests, benches and demos.

Weights are scaled so the model is *peaked*: sharp attention (positions see different contexts),
logits with a wide spread (confidences spread over (0, 1) with clear gaps, many above 0.9), an
EOS row that wins at a few percent of positions, and a MASK row that never wins. A near-uniform
random model would make exact comparisons flaky and threshold decoding meaningless."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..config import ModelConfig
from ..ops.reference import philox4x32
from .layouts import layout

SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|mdm_mask|>")
# Dream (Qwen2 tokenizer): <|endoftext|> is EOS / pad, <|im_end|> ends a chat turn
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>")
DREAM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# SDAR (Qwen3 tokenizer): <|MASK|> is the mask; the template's enable_thinking switch
SDAR_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>")
SDAR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
_SEED_TEXT = (
    "A masked diffusion language model starts from a fully masked answer and refines it over a "
    "few denoising steps. Every step predicts all positions at once with bidirectional attention "
    "and commits the positions it is most confident about. def fibonacci(n):\n    if n < 2:\n"
    "        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    "The quick brown fox jumps over the lazy dog while the engine decodes tokens in parallel.")


def philox_normal(seed: int, stream: int, n: int, device, chunk: int = 0) -> torch.Tensor:
    """n standard normals (fp32) from counter-based Philox + Box-Muller: the same draws on any
    device (equal up to the float error of log / cos: last ulps with torch ops, ~1e-6 with the
    Triton kernel a CUDA device uses unless `chunk` asks for the torch path), so random
    weights can be drawn directly on a GPU. Counter = (index low, index high, stream, 0x5EED)."""
    if torch.device(device).type == "cuda" and not chunk:
        fast = _triton_normal(seed, stream, n, device)
        if fast is not None:
            return fast
    out = torch.empty(n, dtype=torch.float32, device=device)
    chunk = chunk or (1 << 26 if out.device.type == "cuda" else 1 << 22)
    key = torch.tensor(seed, dtype=torch.int64, device=device)
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(n, s + chunk), dtype=torch.int64, device=device)
        r0, r1, _, _ = philox4x32(idx & 0xFFFFFFFF, idx >> 32, stream, 0x5EED,
                                  key & 0xFFFFFFFF, key >> 32)
        u1 = ((r0 >> 8).float() + 0.5) * 2.0 ** -24  # (0, 1)
        u2 = (r1 >> 8).float() * 2.0 ** -24  # [0, 1)
        out[s:s + len(idx)] = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    return out


_TRITON_NORMAL_FAILED = []


def _triton_normal(seed: int, stream: int, n: int, device):
    """The same draw by the Triton kernel (fastdiff.kernels.philox_normal; a GPU draws an 8B
    model in well under a second; equal to the torch path up to ~1e-6, the float error of a
    GPU's log / cos), or None once it failed here (logged; the torch path then)."""
    if _TRITON_NORMAL_FAILED:
        return None
    try:
        from ..kernels.philox_normal import philox_normal as kernel
        return kernel(seed, stream, n, device)
    except Exception as e:  # noqa: BLE001 (any Triton failure: the torch path, same values)
        _TRITON_NORMAL_FAILED.append(e)
        import logging
        logging.getLogger(__name__).warning(
            "fastdiff: the Triton random-weight kernel failed (%s: %s); drawing with torch ops "
            "(the same values, slower)", type(e).__name__, e)
        return None


def random_weights(config: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu",
                   eos_rate: float = 0.03) -> dict[str, torch.Tensor]:
    """The family's published names -> peaked random tensors, drawn on `device` (tensor by
    tensor, in fp32 then cast to dtype). Same seed, same weights on any device. eos_rate: the
    share of a fully masked probe's positions where EOS is the argmax (tests raise it to
    exercise EOS). With a tied LM head the embedding doubles as the head and EOS is not
    calibrated."""
    head_std = 6.0
    d, m = config.d_model, config.mlp_hidden_size
    scale = {"q_proj": 1.6 / math.sqrt(d), "k_proj": 1.6 / math.sqrt(d),
             "v_proj": 1.0 / math.sqrt(d), "attn_out": 1.5 / math.sqrt(d),
             "ff_proj": 1.0 / math.sqrt(d), "up_proj": 1.0 / math.sqrt(d),
             "ff_out": 0.5 / math.sqrt(m), "q_bias": 0.1, "k_bias": 0.1, "v_bias": 0.1}
    lay = layout(config)
    shapes = lay.weight_shapes(config)
    out = {}
    for stream, (name, role) in enumerate(lay.roles(config).items()):
        shape = shapes[name]
        if role in ("attn_norm", "ff_norm", "final_norm", "q_norm", "k_norm"):
            out[name] = torch.ones(shape, dtype=dtype, device=device)
            continue
        t = philox_normal(seed, stream, math.prod(shape), device).view(shape)
        if role == "head":  # LM head, logit std head_std
            t *= head_std / math.sqrt(d)
            t[config.mask_token_id] = 0.0  # MASK is never predicted
        elif role != "embed":
            t *= scale[role]
        out[name] = t.to(dtype)
        del t
    if not config.tie_word_embeddings:
        _set_eos_row(config, out, seed, eos_rate)
    return out


def _set_eos_row(config: ModelConfig, weights: dict[str, torch.Tensor], seed: int,
                 target: float = 0.03) -> None:
    """EOS row = g * (MASK embedding direction): EOS wins where a masked position sees little
    context, like a trained model's tail. g is calibrated by a probe forward (fp32, or the
    weights' dtype for models over 1e9 parameters) so EOS is the argmax at ~`target` of the
    masked positions of a fixed probe batch."""
    from ..ops.torch_backend import TorchOps
    from .transformer import DLLMModel
    lay = layout(config)
    head, wte = weights[lay.head], weights[lay.embed]
    direction = wte[config.mask_token_id].float() / config.d_model
    small = sum(w.numel() for w in weights.values()) < 1e9
    model = DLLMModel(config, {k: v.float() for k, v in weights.items()} if small else weights,
                       TorchOps())
    B, P, G = 4, 16, 48
    ids = (philox_normal(seed, 1 << 20, B * P, wte.device).abs() * 1e4).long() % config.vocab_size
    ids = torch.where(ids == config.mask_token_id, 0, ids).view(B, P)
    x = torch.cat([ids, torch.full((B, G), config.mask_token_id, device=wte.device)], 1)
    pos = torch.arange(P + G, device=wte.device).expand(B, -1)
    start = torch.zeros(B, dtype=torch.int32, device=wte.device)
    h = model.forward(x, pos, start, start + P + G)[:, P:].reshape(B * G, -1).float()
    others = h @ model.lm_head.float().T
    others[:, [config.eos_token_id, config.mask_token_id]] = float("-inf")
    best_other = others[:, : config.vocab_size].max(-1).values  # [N]
    e = h @ direction.to(h.device)  # EOS logit per unit gain
    need = torch.where(e > 0, best_other / e.clamp(min=1e-6), torch.full_like(e, float("inf")))
    k = max(1, int(target * need.numel()))
    gain = float(need.sort().values[k - 1]) * 1.0001 if torch.isfinite(need).sum() >= k else 0.0
    head[config.eos_token_id] = (gain * direction).to(head.dtype)


def _corpus(n_words: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic training text: a seed paragraph plus pseudo-words from syllables."""
    rng = random.Random(seed)
    syll = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    lexicon = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    lines = [_SEED_TEXT] * 20
    for _ in range(n_words // 12):
        lines.append(" ".join(rng.choice(lexicon) for _ in range(12)) + ".")
    return lines


def build_tokenizer(config: ModelConfig, seed: int = 0) -> HFTokenizer:
    """Byte-level BPE trained on a fixed corpus; specials at the config's MASK/EOS ids and the
    top free ids; unused ids filled with regular pseudo-word tokens so every id decodes."""
    V = config.vocab_size
    if V < 256 + 16:
        raise ValueError(f"vocab_size={V} is too small for a byte-level tokenizer (>= 272)")
    dream = config.family in ("dream", "sdar")  # Qwen tokenizers
    specials = {"dream": DREAM_SPECIALS, "sdar": SDAR_SPECIALS}.get(config.family, SPECIALS)
    base = HFTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=V - len(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    base.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    spec = json.loads(base.to_str())
    trained = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    mask = {"dream": "<|mask|>", "sdar": "<|MASK|>"}.get(config.family, "<|mdm_mask|>")
    special_ids = {mask: config.mask_token_id, "<|endoftext|>": config.eos_token_id}
    if config.family == "sdar" and config.stop_token_ids and \
            config.stop_token_ids[0] != config.eos_token_id:
        special_ids["<|im_end|>"] = config.stop_token_ids[0]  # generation_config's first eos
    free_top = [i for i in range(V - 1, -1, -1) if i not in special_ids.values()]
    for tok in specials:
        if tok not in special_ids:
            special_ids[tok] = free_top.pop(0)
    taken = set(special_ids.values())
    slots = iter(i for i in range(V) if i not in taken)
    vocab = {tok: next(slots) for tok, _ in trained}
    for n, i in enumerate(slots):  # fill the rest with pseudo-words so every id decodes
        vocab[f"\u0120w{n}"] = i
    vocab.update(special_ids)
    spec["model"]["vocab"] = vocab
    spec["added_tokens"] = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False,
                                 normalized=False, special=True)
                            for t, i in sorted(special_ids.items(), key=lambda kv: kv[1])]
    if dream:  # Qwen2 adds no BOS
        tok = HFTokenizer.from_str(json.dumps(spec))
        tok.decoder = decoders.ByteLevel()
        return tok
    bos = special_ids["<|startoftext|>"]
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<|startoftext|>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<|startoftext|>": {
                                  "id": "<|startoftext|>", "ids": [bos],
                                  "tokens": ["<|startoftext|>"]}}}
    tok = HFTokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.ByteLevel()
    return tok


def save_random_checkpoint(path: str | Path, config: ModelConfig, *, seed: int = 0,
                           dtype: torch.dtype = torch.bfloat16, shards: int = 2,
                           tokenizer: bool = True, eos_rate: float = 0.03) -> Path:
    """Write config.json, safetensors (sharded with an index when shards > 1), tokenizer.json and
    tokenizer_config.json to `path` (created). Returns the folder."""
    if shards < 1:
        raise ValueError(f"shards={shards} is invalid: expected >= 1")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = random_weights(config, seed=seed, dtype=dtype, eos_rate=eos_rate)
    with open(path / "config.json", "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2)
    if config.stop_token_ids:  # SDAR: generation_config.json's eos list holds the stop ids
        with open(path / "generation_config.json", "w", encoding="utf-8") as f:
            json.dump({"bos_token_id": config.bos_token_id, "eos_token_id":
                       list(config.stop_token_ids), "pad_token_id": config.pad_token_id,
                       "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95}, f,
                      indent=2)
    names = list(weights)
    if shards == 1:
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        groups = [names[i::shards] for i in range(shards)]
        weight_map, total = {}, 0
        for k, group in enumerate(groups):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: weights[n].contiguous() for n in group}, str(path / fname),
                      metadata={"format": "pt"})
            for n in group:
                weight_map[n] = fname
                total += weights[n].numel() * weights[n].element_size()
        with open(path / "model.safetensors.index.json", "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer:
        build_tokenizer(config, seed=seed).save(str(path / "tokenizer.json"))
        if config.family == "dream":
            tcfg = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                    "mask_token": "<|mask|>", "chat_template": DREAM_CHAT_TEMPLATE}
        elif config.family == "sdar":
            tcfg = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                    "mask_token": "<|MASK|>", "add_bos_token": False,
                    "chat_template": SDAR_CHAT_TEMPLATE}
        else:
            tcfg = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "chat_template": CHAT_TEMPLATE}
        with open(path / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(tcfg, f, indent=2)
    return path

