"""SDAR block diffusion (dllm-spec.md section 6): the engine (fp32, CPU) against the literal float64
oracle fastdiff/decoding/reference_sdar.py, token for token and in NFE, on an SDAR-layout random
checkpoint (sdar-tiny: explicit head_dim != d / H, GQA, per-head QK-norm, block_size 4).
Sampling cases feed the oracle the engine's Philox noise at the same (seed, denoising step,
generation position, column). Also: the oracle's own checks (schedule, exact cache, block-causal
prefill, the forward against transformers' Qwen3, the draw and commit rules), a frequency check
of temperature sampling, the Triton path under the interpreter, and loading checkpoints with
the published SDAR-4B / SDAR-8B config.json keys."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdiff.decoding import reference_sdar as RS
from fastdiff.ops import reference as ops_ref
from stats_checks import chi2
from ckpt_utils import write_two_shards

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]
INF = float("inf")


# ------------------------------------------------------------------ helpers


def first_mismatch(got, want):
    j = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), None)
    return j if j is not None or len(got) == len(want) else min(len(got), len(want))


def philox_noise(seed, prompt_len):
    """The engine's counter-based noise laid out as the oracle's hook asks for it: row r of the
    canvas is generation position r - prompt_len, column = vocab id, step = the row's count of
    denoising forwards before this one (stream 0)."""
    def uniform(kind, step, shape):
        assert kind == "gumbel"
        pos = torch.arange(shape[0]) - prompt_len
        return ops_ref.uniform(torch.tensor(seed), torch.tensor(step), pos[:, None],
                               torch.arange(shape[1])[None], stream=0)
    return uniform


def load_hf_weights(path):
    """Every tensor of every safetensors file of a checkpoint folder, by name (engine-free)."""
    W = {}
    for f in sorted(path.glob("*.safetensors")):
        W.update(load_file(str(f)))
    return W


def random_sdar(seed=0, d=40, H=4, Hkv=2, hd=12, layers=2, mlp=64, V=96, bias=False,
                tie=False, mask=95):
    """Engine-free tiny SDAR weights (HF names; head_dim explicit and != d / H) and config."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * std  # noqa: E731
    W = {"model.embed_tokens.weight": r(V, d), "model.norm.weight": 1 + r(d, std=0.1)}
    if not tie:
        W["lm_head.weight"] = r(V, d, std=4 / math.sqrt(d))
    for i in range(layers):
        p = f"model.layers.{i}."
        W.update({p + "input_layernorm.weight": 1 + r(d, std=0.1),
                  p + "post_attention_layernorm.weight": 1 + r(d, std=0.1),
                  p + "self_attn.q_norm.weight": 1 + r(hd, std=0.3),
                  p + "self_attn.k_norm.weight": 1 + r(hd, std=0.3),
                  p + "self_attn.q_proj.weight": r(H * hd, d, std=2 / math.sqrt(d)),
                  p + "self_attn.k_proj.weight": r(Hkv * hd, d, std=2 / math.sqrt(d)),
                  p + "self_attn.v_proj.weight": r(Hkv * hd, d, std=1 / math.sqrt(d)),
                  p + "self_attn.o_proj.weight": r(d, H * hd, std=1 / math.sqrt(H * hd)),
                  p + "mlp.gate_proj.weight": r(mlp, d, std=1 / math.sqrt(d)),
                  p + "mlp.up_proj.weight": r(mlp, d, std=1 / math.sqrt(d)),
                  p + "mlp.down_proj.weight": r(d, mlp, std=1 / math.sqrt(mlp))})
        if bias:
            for n, out in (("q", H * hd), ("k", Hkv * hd), ("v", Hkv * hd), ("o", d)):
                W[p + f"self_attn.{n}_proj.bias"] = r(out, std=0.3)
    cfg = dict(model_type="sdar", hidden_size=d, num_hidden_layers=layers,
               num_attention_heads=H, num_key_value_heads=Hkv, head_dim=hd,
               intermediate_size=mlp, vocab_size=V, rope_theta=10000.0, rms_norm_eps=1e-6,
               attention_bias=bias, mask_token_id=mask, eos_token_id=V - 2,
               tie_word_embeddings=tie, block_size=4)
    return W, cfg


# ------------------------------------------------------------------ the oracle on its own


def test_oracle_schedule():
    assert RS.schedule(4, 4) == [1, 1, 1, 1]
    assert RS.schedule(8, 3) == [3, 3, 2]
    assert RS.schedule(4, 6) == [1, 1, 1, 1, 0, 0]  # steps > B: trailing zero quotas
    assert RS.schedule(16, 5) == [4, 3, 3, 3, 3]
    for B in (1, 2, 4, 7, 8, 16):
        for steps in range(1, 2 * B + 2):
            assert sum(RS.schedule(B, steps)) == B


def test_oracle_cached_block_equals_full_block_causal_forward():
    """A denoising forward of block j against the cache of blocks < j equals the same rows of one
    block-causal forward of the whole row (the cache is exact); the store forward's K/V are the
    full forward's K/V rows; a prefill forward's K/V are the same as built block by block."""
    for bias, B in ((False, 4), (True, 3)):
        W, cfg = random_sdar(seed=1, bias=bias)
        x = torch.tensor([7, 8, 9, 10, 11, 12, 13] + [cfg["mask_token_id"]] * (4 * B - 7))
        full, kv = RS.block_causal_logits(W, cfg, x, B)
        for j in range(4):
            _, cache = RS.block_causal_logits(W, cfg, x[: j * B], B) if j else (None, None)
            part, fed = RS.cached_block_logits(W, cfg, x[j * B:(j + 1) * B], j * B, cache)
            torch.testing.assert_close(part, full[j * B:(j + 1) * B], rtol=0, atol=1e-10)
            for (k, v), (fk, fv) in zip(fed, kv):
                torch.testing.assert_close(k, fk[j * B:(j + 1) * B], rtol=0, atol=1e-12)
                torch.testing.assert_close(v, fv[j * B:(j + 1) * B], rtol=0, atol=1e-12)


def test_oracle_prefill_is_block_causal_not_causal():
    """Within a block a position sees the later ones (so changing token 2 changes position 0's
    logits at B = 4), never a later block (changing token 4 leaves positions 0..3 alone); the
    grid starts at position 0."""
    W, cfg = random_sdar(seed=2)
    x = torch.tensor([3, 4, 5, 6, 7, 8, 9, 10])
    base, _ = RS.block_causal_logits(W, cfg, x, 4)
    same_block = RS.block_causal_logits(W, cfg, x.index_fill(0, torch.tensor([2]), 50), 4)[0]
    later = RS.block_causal_logits(W, cfg, x.index_fill(0, torch.tensor([4]), 50), 4)[0]
    assert (same_block[0] - base[0]).abs().max() > 1e-3
    assert (same_block[4:] - base[4:]).abs().max() > 1e-3  # later blocks see block 0
    torch.testing.assert_close(later[:4], base[:4], rtol=0, atol=0)
    assert (later[5] - base[5]).abs().max() > 1e-3  # position 5 sees 4 (same block)
    # B = 1 is plain causal attention: position 0 no longer sees token 2
    causal = RS.block_causal_logits(W, cfg, x, 1)[0]
    assert (causal[0] - base[0]).abs().max() > 1e-3
    changed = RS.block_causal_logits(W, cfg, x.index_fill(0, torch.tensor([2]), 50), 1)[0]
    torch.testing.assert_close(changed[:2], causal[:2], rtol=0, atol=0)


def test_oracle_forward_equals_transformers_qwen3():
    """The oracle's forward is Qwen3's (per-head q/k norm before RoPE, explicit head_dim, GQA,
    attention_bias on all four projections) with a block-causal mask: transformers' Qwen3 (a dev
    dependency) fed the 4D mask agrees; its RoPE tables are float32, hence the tolerance."""
    transformers = pytest.importorskip("transformers")
    for bias in (False, True):
        W, cfg = random_sdar(seed=3, bias=bias)
        hc = transformers.Qwen3Config(
            hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=12, intermediate_size=64, vocab_size=96, rope_theta=cfg["rope_theta"],
            rms_norm_eps=1e-6, attention_bias=bias, tie_word_embeddings=False,
            attn_implementation="eager")
        model = transformers.Qwen3ForCausalLM(hc).double().eval()
        model.load_state_dict(W, strict=True)
        x = torch.tensor([[7, 8, 9, 10, 11, 95, 95, 95, 95, 95]])
        blk = torch.arange(10) // 4
        mask4 = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
        mask4[0, 0][blk[None, :] > blk[:, None]] = torch.finfo(torch.float64).min
        with torch.no_grad():
            hf = model(input_ids=x, attention_mask=mask4,
                       position_ids=torch.arange(10)[None]).logits
        ours = RS.block_causal_logits(W, cfg, x[0], 4)[0]
        torch.testing.assert_close(ours, hf[0], rtol=0, atol=1e-4)
        wrong = RS.block_causal_logits(W, dict(cfg, rope_theta=1e6), x[0], 4)[0]
        assert (wrong - hf[0]).abs().max() > 1e-2  # the comparison can fail


def test_oracle_tied_head():
    W, cfg = random_sdar(seed=4, tie=True)
    assert "lm_head.weight" not in W
    untied = dict(W, **{"lm_head.weight": W["model.embed_tokens.weight"]})
    x = [3, 4, 5, 6, 7]
    torch.testing.assert_close(RS.block_causal_logits(W, cfg, x, 4)[0],
                               RS.block_causal_logits(untied, dict(cfg, tie_word_embeddings=False),
                                                      x, 4)[0], rtol=0, atol=0)


def test_oracle_filters_and_draw():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    dropped = lambda z: (z == -INF).tolist()  # noqa: E731
    # top_p 0.6: cumulative before = 0, 0.5, 0.8 -> 0.15 is the first token dropped
    assert dropped(RS.filter_logits(logits, top_p=0.6)) == [[False, False, True, True]]
    assert dropped(RS.filter_logits(logits, top_p=0.45)) == [[False, True, True, True]]
    assert dropped(RS.filter_logits(logits, top_p=0.1)) == [[False, True, True, True]]
    assert dropped(RS.filter_logits(logits, top_p=1.0)) == [[False] * 4]
    assert dropped(RS.filter_logits(logits, top_k=3)) == [[False, False, False, True]]
    assert dropped(RS.filter_logits(logits, top_k=0)) == [[False] * 4]
    # top_k first, then top_p on the renormalised survivors: after top_k=2, p = (5/8, 3/8)
    assert dropped(RS.filter_logits(logits, top_k=2, top_p=0.6)) == [[False, True, True, True]]
    assert dropped(RS.filter_logits(logits, top_k=3, top_p=0.6)) == [[False, False, True, True]]
    tie = torch.tensor([[1.0, 2.0, 2.0, 0.0]], dtype=torch.float64)  # keeps >= the k-th
    assert dropped(RS.filter_logits(tie, top_k=2)) == [[True, False, False, True]]
    # T = 0: argmax; eval conf = softmax(logits)[x0], filtered = the filtered probability
    x0, conf = RS.draw(logits, 0.0, top_k=2, confidence="eval")
    assert x0.tolist() == [0] and conf.item() == pytest.approx(0.5)
    x0, conf = RS.draw(logits, 0.0, top_k=2, confidence="filtered")
    assert conf.item() == pytest.approx(0.5 / 0.8)
    assert RS.draw(logits, 0.0, top_k=1, confidence="filtered")[1].item() == 1.0  # script
    # T > 0: eval = softmax(logits / T)[x0] unfiltered; the Gumbel draw never picks a dropped one
    u = torch.tensor([[0.1, 0.2, 0.999999, 0.3]], dtype=torch.float64)
    x0, conf = RS.draw(logits, 2.0, top_k=2, confidence="eval", u=u)
    p = (logits / 2).softmax(-1)
    assert x0.item() in (0, 1) and conf.item() == pytest.approx(p[0, x0].item())
    assert RS.draw(logits, 2.0, confidence="eval", u=u)[0].item() == 2  # unfiltered: it wins
    # the Gumbel-max draw follows softmax(z): 20000 draws within 5 sigma
    g = torch.Generator().manual_seed(0)
    z = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)).expand(20000, 4)
    x0, _ = RS.draw(z, 1.0, u=torch.rand(20000, 4, generator=g, dtype=torch.float64))
    freq = torch.bincount(x0, minlength=4) / 20000
    assert (freq - torch.tensor([0.5, 0.3, 0.15, 0.05])).abs().max() < 5 * math.sqrt(0.25 / 20000)


def test_oracle_commit_rules():
    c = torch.tensor([0.9, 0.2, 0.95, 0.6, 0.6, 0.1], dtype=torch.float64)
    all_m = torch.ones(6, dtype=torch.bool)
    some = torch.tensor([False, True, True, True, True, True])
    static = lambda conf, m, n: RS.commit_positions(conf, m, n, "low_confidence_static")  # noqa
    assert static(c, all_m, 2) == [2, 0]
    assert static(c, all_m, 4) == [2, 0, 3, 4]  # tie at 0.6: lowest position first
    assert static(c, some, 2) == [2, 3]  # position 0 is not masked: never committed
    assert static(c, some, 9) == [2, 3, 4, 1, 5]  # quota beyond the masks: only the masks
    dyn = lambda conf, m, n, t: RS.commit_positions(conf, m, n, "low_confidence_dynamic", t)  # noqa
    assert dyn(c, all_m, 1, 0.5) == [0, 2, 3, 4]  # |H| >= n: all of H, beyond the quota
    assert dyn(c, all_m, 2, 0.9) == [2, 0]  # strict: 0.9 is not > 0.9, |H| = 1 < 2 -> top 2
    assert dyn(c, all_m, 1, 0.9) == [2]
    assert dyn(c, some, 3, 0.5) == [2, 3, 4]
    assert dyn(c, some, 4, 0.5) == [2, 3, 4, 1]
    seq = lambda m, n: RS.commit_positions(c, m, n, "sequential")  # noqa: E731
    assert seq(all_m, 2) == [0, 1] and seq(some, 3) == [1, 2, 3] and seq(some, 9) == [1, 2, 3, 4, 5]
    assert seq(torch.tensor([False, False, False, False, True, True]), 1) == [4]
    assert seq(all_m, 0) == [] and static(c, all_m, 0) == []


def _counting_forwards(monkeypatch):
    calls = []
    full, cached = RS.block_causal_logits, RS.cached_block_logits

    def f(W, cfg, x, B):
        calls.append(("prefill", len(x)))
        return full(W, cfg, x, B)

    def c(W, cfg, block, start, cache):
        calls.append(("block", start, 0 if cache is None else len(cache[0][0])))
        return cached(W, cfg, block, start, cache)
    monkeypatch.setattr(RS, "block_causal_logits", f)
    monkeypatch.setattr(RS, "cached_block_logits", c)
    return calls


def test_oracle_loop_structure(monkeypatch):
    """P < B: no prefill; P >= B: one prefill of floor(P/B)*B tokens; every block forward sees
    exactly the cache of the blocks before it; NFE = denoising + store + prefill forwards;
    total = ceil((P+G)/B)*B; the prompt is never overwritten."""
    W, cfg = random_sdar(seed=5)
    calls = _counting_forwards(monkeypatch)
    # P = 3 < B = 4, G = 6: total 12, blocks 0..2; block 0 has 1 MASK
    x, nfe = RS.sdar_generate(W, cfg, [3, 4, 5], gen_length=6, block_length=4, denoising_steps=4)
    assert len(x) == 12 and x[:3] == [3, 4, 5] and cfg["mask_token_id"] not in x
    assert calls[0] == ("block", 0, 0) and all(k[0] == "block" for k in calls)
    # block 0: 1 denoise + store; blocks 1, 2: 4 denoise + store
    assert nfe == len(calls) == 2 + 5 + 5
    assert [k[2] for k in calls] == [0, 0] + [4] * 5 + [8] * 5
    # P = 9, B = 4, steps 3 (quotas 2, 1, 1), G = 7: total 16, prefill 8, blocks 2, 3
    calls.clear()
    x, nfe = RS.sdar_generate(W, cfg, list(range(3, 12)), gen_length=7, block_length=4,
                              denoising_steps=3)
    assert len(x) == 16 and x[:9] == list(range(3, 12))
    assert calls[0] == ("prefill", 8)
    # block 2 holds 3 MASKs: quotas 2, 1 -> 2 denoise + store; block 3: 3 + store
    assert nfe == len(calls) == 1 + 3 + 4
    # P = 8 (a multiple of B): prefill 8, the first decoded block starts at 8
    calls.clear()
    x, nfe = RS.sdar_generate(W, cfg, list(range(3, 11)), gen_length=4, block_length=4,
                              denoising_steps=8)  # steps > B: zero quotas never reached
    assert calls == [("prefill", 8)] + [("block", 8, 8)] * 5 and nfe == 6 and len(x) == 12


def test_oracle_stop_after_a_whole_block():
    """A stop id is checked only after a block: the block holding it is finished (tokens after
    it kept), later blocks stay MASK; without stop ids the same first blocks are decoded."""
    W, cfg = random_sdar(seed=6)
    prompt, mask = [3, 4, 5], cfg["mask_token_id"]
    free, nfe_free = RS.sdar_generate(W, cfg, prompt, gen_length=20, block_length=4,
                                      denoising_steps=2)
    stop = free[5]  # a token of block 1 (positions 4..7)
    first = min(j for j in range(3, 24) if free[j] == stop)
    x, nfe = RS.sdar_generate(W, cfg, prompt, gen_length=20, block_length=4, denoising_steps=2,
                              stop_ids=[stop])
    end = (first // 4 + 1) * 4
    assert x[:end] == free[:end] and set(x[end:]) == {mask}
    assert RS.decoded_length(x, 3, 4, mask) == end - 3
    assert RS.decoded_length(free, 3, 4, mask) == 21
    # block 0 holds one MASK (1 denoise + store), later blocks 2 denoise + store each
    assert nfe == 2 + 3 * (first // 4) and nfe_free == 2 + 3 * 5


def test_oracle_noise_hook_steps():
    """Temperature > 0: the hook is asked once per denoising forward with step 0, 1, 2, ... (the
    prefill and store forwards do not count) and shape [total, V]."""
    W, cfg = random_sdar(seed=7)
    asked = []

    def hook(kind, step, shape):
        asked.append((kind, step, shape))
        return torch.rand(shape, dtype=torch.float64)
    x, nfe = RS.sdar_generate(W, cfg, list(range(3, 9)), gen_length=6, block_length=4,
                              denoising_steps=2, temperature=0.9, uniform=hook)
    # P = 6: prefill 4; block 1 (2 MASKs): quota 2 -> 1 denoise; block 2: 2 denoise
    assert asked == [("gumbel", s, (12, 96)) for s in range(3)]
    assert nfe == 1 + 2 + 3 and cfg["mask_token_id"] not in x


# ------------------------------------------------------------------ engine vs oracle


def perturb_norms(path, seed=0):
    """The writer stores every RMSNorm weight as ones, under which q/k-norm before or after RoPE
    (a rotation) and a swapped q_norm / k_norm give the same numbers: rewrite the norm weights of
    the checkpoint's shards with random ones near 1 so the tests can tell them apart."""
    g = torch.Generator().manual_seed(seed)
    for f in sorted(path.glob("*.safetensors")):
        shard = load_file(str(f))
        for name, t in shard.items():
            if name.endswith("norm.weight"):
                shard[name] = (1 + 0.3 * torch.randn(t.shape, generator=g)).to(t.dtype)
        save_file(shard, str(f), metadata={"format": "pt"})


def stop_ids_of(path):
    """Section 6's stop ids from the files: generation_config.json's eos list + config eos."""
    cfg = json.loads((path / "config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())["eos_token_id"]
    return sorted(set(gen if isinstance(gen, list) else [gen]) | {cfg["eos_token_id"]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fastdiff import Engine, ModelConfig
    from fastdiff.models import save_random_checkpoint
    path = save_random_checkpoint(tmp_path_factory.mktemp("sdar"), ModelConfig.preset("sdar-tiny"),
                                  seed=0, dtype=torch.float32)
    perturb_norms(path)
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    return engine, load_hf_weights(path), json.loads((path / "config.json").read_text()), path


def gen_config(**kw):
    from fastdiff import GenerationConfig
    return GenerationConfig(**kw)


ORACLE_ARGS = ("remasking", "threshold", "temperature", "top_k", "top_p", "confidence")


def oracle_run(setup, prompt, kw, seed):
    """The oracle for one row with the engine's settings (block_length / denoising_steps given
    explicitly by every caller) -> (expected full_ids, nfe)."""
    _, W, cfg, path = setup
    B = kw["block_length"]
    stop = stop_ids_of(path) if kw.get("stop_at_eos", True) else None
    x, nfe = RS.sdar_generate(W, cfg, prompt, gen_length=kw["gen_length"], block_length=B,
                              denoising_steps=kw.get("denoising_steps", B), stop_ids=stop,
                              uniform=philox_noise(seed, len(prompt)),
                              **{k: kw[k] for k in ORACLE_ARGS if k in kw})
    n = RS.decoded_length(x, len(prompt), B, cfg["mask_token_id"])
    return x[len(prompt):len(prompt) + n], nfe


def expected_cut(full, G, stops):
    """token_ids / finish_reason from full_ids: cut before the first stop id and at G."""
    cut = next((j for j, t in enumerate(full[:G]) if t in stops), None)
    return (full[:G], "length") if cut is None else (full[:cut], "eos")


def check(setup, prompts, seeds=None, **kw):
    """engine.generate_ids == the oracle, row by row: full_ids, token_ids, finish_reason, nfe."""
    engine, _, _, path = setup
    got = engine.generate_ids(prompts, gen_config(**kw), seeds=seeds)
    stops = set(stop_ids_of(path))
    for i, (p, c) in enumerate(zip(prompts, got)):
        seed = seeds[i] if seeds else (kw.get("seed") or 0)
        want, nfe = oracle_run(setup, p, kw, seed)
        j = first_mismatch(c.full_ids, want)
        if j is not None:
            pytest.fail(f"row {i} (P={len(p)}): first mismatch at generated position {j}: "
                        f"engine {c.full_ids[j:j + 1]} vs reference {want[j:j + 1]} ({kw})\n"
                        f"engine {c.full_ids}\nrefer. {want}")
        assert c.nfe == nfe, f"row {i} (P={len(p)}): nfe {c.nfe} vs reference {nfe} ({kw})"
        assert (c.token_ids, c.finish_reason) == expected_cut(c.full_ids, kw["gen_length"], stops)
    return got


def test_engine_stop_ids_and_defaults(setup):
    """Stop ids = generation_config's eos list + config eos; SDAR defaults: block_length =
    config block_size, denoising_steps = block_length, static remasking, eval confidence,
    temperature 0, stop at eos."""
    engine, _, cfg, path = setup
    gen = engine.resolve_config(gen_config(gen_length=10))
    assert sorted(engine.stop_ids(gen)) == stop_ids_of(path) == [1016, 1017]
    assert (gen.block_length, gen.denoising_steps, gen.remasking, gen.confidence,
            gen.temperature, gen.stop_at_eos) == (cfg["block_size"], cfg["block_size"],
                                                  "low_confidence_static", "eval", 0.0, True)
    got = engine.generate_ids(PROMPTS, gen_config(gen_length=10))
    for p, c in zip(PROMPTS, got):
        want, nfe = oracle_run(setup, p, dict(gen_length=10, block_length=4), 0)
        assert (c.full_ids, c.nfe) == (want, nfe)


def test_total_steps_are_refused(setup):
    """steps (LLaDA / Dream: the total over all blocks) is not SDAR's per-block count."""
    with pytest.raises(ValueError, match="denoising_steps"):
        setup[0].generate_ids(PROMPTS[:1], gen_config(gen_length=8, steps=8))


GREEDY = {  # id: settings (temperature 0; stop_at_eos False unless said: full-length rows)
    "static-B4": dict(block_length=4, denoising_steps=4),
    "static-B2": dict(block_length=2, denoising_steps=2),
    "static-B8-steps3": dict(block_length=8, denoising_steps=3),  # uneven: 3, 3, 2
    "static-B16-steps5": dict(block_length=16, denoising_steps=5),
    "static-B4-steps6": dict(block_length=4, denoising_steps=6),  # steps > B: zero quotas
    "dynamic-B4": dict(block_length=4, denoising_steps=4, remasking="low_confidence_dynamic",
                       threshold=0.3),
    "dynamic-B8-steps3": dict(block_length=8, denoising_steps=3,
                              remasking="low_confidence_dynamic", threshold=0.5),
    "dynamic-B16-steps16": dict(block_length=16, denoising_steps=16,
                                remasking="low_confidence_dynamic", threshold=0.6),
    "sequential-B4-steps2": dict(block_length=4, denoising_steps=2, remasking="sequential"),
    "sequential-B8-steps3": dict(block_length=8, denoising_steps=3, remasking="sequential"),
    "filtered-topk-B8": dict(block_length=8, denoising_steps=4, confidence="filtered", top_k=3),
    "filtered-topp-dynamic": dict(block_length=4, denoising_steps=4, confidence="filtered",
                                  top_p=0.7, remasking="low_confidence_dynamic", threshold=0.8),
    "eval-topk-topp-B4": dict(block_length=4, denoising_steps=2, confidence="eval", top_k=5,
                              top_p=0.8),
    # top_p applies to the top_k survivors renormalised: the filtered confidence shows it
    "filtered-topk3-topp-dynamic-B8": dict(block_length=8, denoising_steps=4,
                                           confidence="filtered", top_k=3, top_p=0.6,
                                           remasking="low_confidence_dynamic", threshold=0.7),
    # the script's greedy (top_k=1, filtered confidence): every confidence is exactly 1, so the
    # tie rule (lowest position first) decides static; dynamic commits a block in one step
    "filtered-topk1-ties-B8": dict(block_length=8, denoising_steps=4, confidence="filtered",
                                   top_k=1),
    "filtered-topk1-dynamic-B8": dict(block_length=8, denoising_steps=8, confidence="filtered",
                                      top_k=1, remasking="low_confidence_dynamic", threshold=0.9),
    # confidences exactly 1.0 at threshold 1.0: the strict > leaves H empty (top n_i each step)
    "filtered-topk1-dynamic-thr1": dict(block_length=8, denoising_steps=4, confidence="filtered",
                                        top_k=1, remasking="low_confidence_dynamic",
                                        threshold=1.0),
}
SLOW_GREEDY = {"static-B16-steps5", "dynamic-B16-steps16", "sequential-B8-steps3"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_GREEDY
                                  else c for c in GREEDY])
def test_greedy_equals_reference(setup, case):
    """Three prompts (P = 5, 3, 9: P < B, P > B and not a multiple of B; P = 8 is in
    test_prompt_lengths) as one batch: each row equals the oracle's single run."""
    check(setup, PROMPTS, gen_length=13, stop_at_eos=False, temperature=0.0, **GREEDY[case])


@pytest.mark.parametrize("P", [1, 4, 7, 8, 16])
def test_prompt_lengths(setup, P):
    """P < B, P == B, P a multiple of B, P not: the grid is absolute from the first token."""
    prompt = [(37 * j + 11) % 1000 for j in range(P)]
    check(setup, [prompt], gen_length=9, block_length=4, denoising_steps=2, stop_at_eos=False)
    check(setup, [prompt], gen_length=8, block_length=8, denoising_steps=8, stop_at_eos=False)


def test_dynamic_rule_commits_beyond_the_quota(setup):
    """Guard against a dynamic test that cannot fail: with the threshold used above some step
    commits more than its quota (fewer forwards than static) and some step falls back to top-n_i
    (more forwards than with threshold 0)."""
    kw = dict(gen_length=13, stop_at_eos=False, block_length=4, denoising_steps=4)
    static = check(setup, PROMPTS, **kw)
    dyn = check(setup, PROMPTS, remasking="low_confidence_dynamic", threshold=0.3, **kw)
    everything = check(setup, PROMPTS, remasking="low_confidence_dynamic", threshold=1e-9, **kw)
    assert sum(c.nfe for c in dyn) < sum(c.nfe for c in static)
    assert sum(c.nfe for c in everything) < sum(c.nfe for c in dyn)
    assert [c.full_ids for c in dyn] != [c.full_ids for c in static]


def test_batch_rows_equal_their_single_runs(setup):
    """A batch of 3 prompts of different lengths (left padding inside the engine must not shift
    a grid): each row equals its own single run, token for token and in NFE."""
    engine = setup[0]
    prompts = [PROMPTS[1], [7] * 8, PROMPTS[2]]
    for kw in (dict(block_length=4, denoising_steps=3),
               dict(block_length=8, denoising_steps=4, remasking="low_confidence_dynamic",
                    threshold=0.4, temperature=0.9, top_k=20, seed=3)):
        kw = dict(gen_length=11, stop_at_eos=True, **kw)
        batch = check(setup, prompts, seeds=[5, 6, 7], **kw)
        for i, p in enumerate(prompts):
            single = engine.generate_ids([p], gen_config(**kw), seeds=[5 + i])[0]
            assert (single.full_ids, single.nfe, single.token_ids) == \
                (batch[i].full_ids, batch[i].nfe, batch[i].token_ids), f"row {i} ({kw})"


def test_stop_after_a_whole_block(setup):
    """Stop ids end a row only after the whole block holding one is committed (tokens after the
    stop in that block are kept in full_ids), later blocks are never decoded (not in full_ids,
    no forwards); token_ids are cut before the first stop id, finish_reason "eos". The writer's
    EOS calibration makes EOS the argmax at some masked positions; the candidates must include
    a row that stops before its last block (else this test could not fail)."""
    prompts = [[3 * j + 1 for j in range(P)] for P in (2, 5, 6, 9)] + PROMPTS
    prompts.append([1016, 40, 41, 1017, 42])  # stop ids in the prompt never stop a row
    B, G = 4, 24
    early = 0
    for kw in (dict(block_length=B, denoising_steps=2),
               dict(block_length=B, denoising_steps=4, remasking="low_confidence_dynamic",
                    threshold=0.5)):
        got = check(setup, prompts, gen_length=G, stop_at_eos=True, **kw)
        free = setup[0].generate_ids(prompts, gen_config(gen_length=G, stop_at_eos=False, **kw))
        for p, c, f in zip(prompts, got, free):
            total = -(-(len(p) + G) // B) * B - len(p)
            assert c.full_ids == f.full_ids[:len(c.full_ids)]
            if len(c.full_ids) < total:
                early += 1
                assert c.finish_reason == "eos" and c.nfe < f.nfe
                assert (len(p) + len(c.full_ids)) % B == 0  # ends at a block end
    assert early >= 2, "no row stopped before its last block: raise the EOS rate"


SAMPLING = {  # id: settings (all seeded; the oracle is fed the engine's Philox noise)
    "static-T0.8-topk": dict(block_length=4, denoising_steps=4, temperature=0.8, top_k=8),
    "dynamic-T1-topp-filtered": dict(block_length=8, denoising_steps=3, temperature=1.0,
                                     top_p=0.9, confidence="filtered",
                                     remasking="low_confidence_dynamic", threshold=0.5),
    "sequential-T0.7": dict(block_length=4, denoising_steps=3, temperature=0.7,
                            remasking="sequential"),
    "static-T1.3-topk-topp-eval": dict(block_length=2, denoising_steps=2, temperature=1.3,
                                       top_k=30, top_p=0.85),
    "static-T0.9-filtered-B16": dict(block_length=16, denoising_steps=6, temperature=0.9,
                                     confidence="filtered", top_k=40),
    # eval confidence at T != 1 is the TEMPERED unfiltered probability
    "dynamic-T0.5-eval": dict(block_length=4, denoising_steps=4, temperature=0.5, top_k=4,
                              remasking="low_confidence_dynamic", threshold=0.7),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_equals_reference_with_the_engine_noise(setup, case):
    kw = dict(gen_length=13, stop_at_eos=False, **SAMPLING[case])
    got = check(setup, PROMPTS, seeds=[1234, 99, 2**40 + 7], **kw)
    greedy = [oracle_run(setup, p, dict(kw, temperature=0.0), 0)[0] for p in PROMPTS]
    assert [c.full_ids for c in got] != greedy  # the noise had an effect


def test_same_seed_same_tokens(setup):
    engine = setup[0]
    kw = dict(gen_length=16, block_length=4, denoising_steps=4, temperature=1.0, top_p=0.95,
              remasking="low_confidence_dynamic", threshold=0.4, stop_at_eos=False)
    a = engine.generate_ids(PROMPTS, gen_config(seed=7, **kw))
    b = engine.generate_ids(PROMPTS, gen_config(seed=7, **kw))
    c = engine.generate_ids(PROMPTS, gen_config(seed=8, **kw))
    assert [x.full_ids for x in a] == [x.full_ids for x in b]
    assert [x.nfe for x in a] == [x.nfe for x in b]
    assert [x.full_ids for x in a] != [x.full_ids for x in c]




def test_sampling_frequencies_follow_the_filtered_tempered_softmax(setup):
    """P = B = G = 16 (the prompt is prefilled), one denoising step: every position of the block
    is drawn once from softmax(top_k(logits / T)) of the all-MASK block against the prompt's
    cache. N seeds x 16 positions against the oracle's distribution, Pearson chi-square within
    6 sigma of its df; the same counts must fail against the untempered distribution (power)."""
    engine, W, cfg, _ = setup
    B, N, T, k = 16, 64, 1.6, 6
    prompt = [(53 * j + 7) % 1000 for j in range(B)]
    counts = torch.zeros(B, cfg["vocab_size"], dtype=torch.float64)
    gen = gen_config(gen_length=B, block_length=B, denoising_steps=1, temperature=T, top_k=k,
                     stop_at_eos=False)
    for first in range(0, N, 16):  # 16 rows per batch, one seed each
        for c in engine.generate_ids([prompt] * 16, gen, seeds=list(range(first, first + 16))):
            assert c.nfe == 3  # the prefill, one denoising forward, the store
            counts[torch.arange(B), torch.tensor(c.full_ids)] += 1
    x = prompt + [cfg["mask_token_id"]] * B
    logits = RS.block_causal_logits(W, cfg, x, B)[0][B:]
    bound = lambda df: df + 6 * math.sqrt(2 * df)  # noqa: E731
    stat, df = chi2(counts, RS.filter_logits(logits / T, k).softmax(-1), N)
    assert stat < bound(df), f"chi-square {stat:.1f} over {df} df"
    wrong, wdf = chi2(counts, RS.filter_logits(logits, k).softmax(-1), N)
    assert wrong > bound(wdf), f"no power: {wrong:.1f} over {wdf} df against T=1"


# ------------------------------------------------------------------ Triton under the interpreter


TRITON_CASES = {  # GQA (4 query / 2 KV heads, head_dim 32 != d / H) in every case
    # a batch with an uneven schedule (quotas 2, 1, 1): a row reading another step's quota
    # differs whatever memory lies past the quota tensor
    "static-prefill-batch": ([PROMPTS[1], PROMPTS[2]],
                             dict(gen_length=6, block_length=4, denoising_steps=3)),
    "dynamic-T-B8": ([PROMPTS[0]], dict(gen_length=8, block_length=8, denoising_steps=3,
                                        remasking="low_confidence_dynamic", threshold=0.4,
                                        temperature=0.8, top_k=20, seed=4)),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_equals_reference(setup, monkeypatch, case):
    from fastdiff import Engine
    from fastdiff.kernels import attention as at
    from fastdiff.kernels import rope_kv as rk
    from kernel_checks import count_launches
    prompts, kw = TRITON_CASES[case]
    engine = Engine.from_pretrained(setup[3], device="cpu", dtype="float32", backend="triton",
                                    max_batch_size=2)
    assert engine.backend == "triton"
    counters = [count_launches(monkeypatch, mod, name)
                for mod, name in ((at, "_attention_kernel"), (rk, "_rope_kv_kernel"))]
    check((engine,) + tuple(setup[1:]), prompts, stop_at_eos=False, **kw)
    assert all(c.launches > 0 for c in counters), [c.launches for c in counters]


# ------------------------------------------------------------------ loading


SDAR_4B_CONFIG = {  # JetLM/SDAR-4B-Chat config.json keys (dllm-spec.md section 6); the values of
    # the training-only keys other than attn_implementation are stand-ins (ignored at inference)
    "architectures": ["SDARForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
                 "AutoModel": "modeling_sdar.SDARModel",
                 "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
    "attn_implementation": "flex_attention", "block_size": 4, "bos_token_id": 151643,
    "debug": False, "ep_size": 1, "eos_token_id": 151643, "fuse_cross_entropy": True,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560, "initializer_range": 0.02,
    "intermediate_size": 9728, "mask_token_id": 151669, "max_position_embeddings": 32768,
    "max_window_layers": 36, "micro_forward": False, "model_type": "sdar",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "skip_checkpoint": False,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.52.4", "use_cache": True, "use_deepep": False,
    "use_sliding_window": False, "vocab_size": 151936}
SDAR_GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True,
                          "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                          "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                          "transformers_version": "4.52.4"}


def write_sdar_4b_like(path, tie=False):
    """The published config.json keys with tiny sizes (real ids, real vocab, head_dim 16 !=
    32 / 4), bf16 weights in two shards + index and generation_config.json, written here with
    safetensors (no fastdiff code)."""
    cfg = dict(SDAR_4B_CONFIG, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               max_position_embeddings=512, max_window_layers=2, tie_word_embeddings=tie)
    W, _ = random_sdar(seed=5, d=32, H=4, Hkv=2, hd=16, layers=2, mlp=48, V=cfg["vocab_size"],
                       tie=tie, mask=cfg["mask_token_id"])
    if not tie:
        W["lm_head.weight"][cfg["mask_token_id"]] = 0  # MASK is never the argmax
    W = {k: v.to(torch.bfloat16).contiguous() for k, v in W.items()}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "generation_config.json").write_text(json.dumps(SDAR_GENERATION_CONFIG))
    write_two_shards(path, W)
    return path, W, cfg


@pytest.mark.parametrize("tie", [False, True])
def test_loads_published_sdar_config_and_shards(tmp_path, tie):
    from fastdiff import Engine
    path, W, cfg = write_sdar_4b_like(tmp_path / "sdar", tie=tie)
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    c = engine.config
    assert (c.family, c.n_kv_heads, c.head_dim, c.mask_token_id, c.eos_token_id) == \
        ("sdar", 2, 16, 151669, 151643)
    gen = engine.resolve_config(gen_config(gen_length=7))
    assert gen.block_length == 4 and sorted(engine.stop_ids(gen)) == [151643, 151645]
    prompt = [151644, 100, 2000, 30000, 7, 151645]  # P = 6: a prefill and a prompt tail
    got = engine.generate_ids([prompt], gen_config(gen_length=7, denoising_steps=2,
                                                   stop_at_eos=False))[0]
    x, nfe = RS.sdar_generate(W, cfg, prompt, gen_length=7, block_length=4, denoising_steps=2)
    assert (got.full_ids, got.nfe) == (x[6:], nfe)


def test_sdar_8b_config_without_mask_and_block_size(tmp_path):
    """SDAR-8B-Chat's config.json lacks mask_token_id and block_size: the mask comes from the
    tokenizer's mask_token, block_length defaults to 4 with a warning."""
    from fastdiff import Engine, ModelConfig
    from fastdiff.models import save_random_checkpoint
    path = save_random_checkpoint(tmp_path / "sdar8b", ModelConfig.preset("sdar-tiny"), seed=1,
                                  dtype=torch.float32, shards=1)
    cfg = json.loads((path / "config.json").read_text())
    mask = cfg.pop("mask_token_id")
    cfg.pop("block_size")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="block"):
        engine = Engine.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
        gen = engine.resolve_config(gen_config(gen_length=6))
    assert engine.config.mask_token_id == mask and gen.block_length == 4
    got = engine.generate_ids([PROMPTS[0]], gen_config(gen_length=6, stop_at_eos=False))[0]
    x, nfe = RS.sdar_generate(load_hf_weights(path), cfg, PROMPTS[0], gen_length=6,
                              block_length=4, denoising_steps=4, mask_id=mask)
    assert (got.full_ids, got.nfe) == (x[5:], nfe)


def test_unknown_model_type_is_named(tmp_path):
    from fastdiff import Engine
    path, _, cfg = write_sdar_4b_like(tmp_path / "qwen3")
    (path / "config.json").write_text(json.dumps(dict(cfg, model_type="qwen3",
                                                      architectures=["Qwen3ForCausalLM"])))
    with pytest.raises(ValueError, match="'qwen3'"):
        Engine.from_pretrained(path, device="cpu", dtype="float32")


@pytest.mark.parametrize("name, cut", [("model.layers.1.self_attn.k_norm.weight", 1),
                                       ("model.layers.0.self_attn.q_proj.weight", 16)])
def test_misshaped_tensor_names_file_and_tensor(tmp_path, name, cut):
    from fastdiff import Engine
    path, _, _ = write_sdar_4b_like(tmp_path / "bad")
    fname = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]
    shard = load_file(str(path / fname))
    shard[name] = shard[name][:-cut].contiguous()
    save_file(shard, str(path / fname), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        Engine.from_pretrained(path, device="cpu", dtype="float32")
    assert fname in str(err.value) and name in str(err.value), str(err.value)
    shutil.rmtree(path)
