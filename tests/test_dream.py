"""Dream (dllm-spec.md section 5, and section 4 applied to Dream): the engine (fp32, CPU) against
the literal float64 oracle fastdiff/decoding/reference_dream.py, token for token, on a
Dream-layout random checkpoint (dream-tiny: GQA 4 query / 2 KV heads, q/k/v biases, shifted
logits). Sampling cases feed the oracle the engine's Philox noise at the same (seed, step,
generation position, column, stream). Also: the oracle's own schedule / KV-cache checks, a
frequency check of temperature sampling, the Triton path under the interpreter, and loading
a checkpoint with the published Dream-7B config.json keys."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdiff.decoding import reference_dream as RD
from fastdiff.ops import reference as ops_ref
from stats_checks import chi2
from ckpt_utils import write_two_shards

PROMPTS = [[5, 77, 300, 12, 9], [640, 3, 81], [11, 12, 13, 14, 15, 16, 17, 18, 200]]
STREAMS = {"gumbel": 0, "random": 1, "alg": 2}


# ------------------------------------------------------------------ helpers


def first_mismatch(got, want):
    return next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), None)


def philox_noise(seed, prompt_len):
    """The engine's counter-based noise laid out as the oracle's hook asks for it: column c of
    the canvas is generation position c - prompt_len; step = the row's forward counter."""
    def uniform(kind, step, shape):
        L = shape[1]
        pos = torch.arange(L) - prompt_len
        s, k = torch.tensor(seed), torch.tensor(step)
        if kind == "gumbel":
            u = ops_ref.uniform(s, k, pos[None, :, None], torch.arange(shape[2])[None, None],
                                stream=STREAMS[kind])
        else:
            u = ops_ref.uniform(s, k, pos[None], 0, stream=STREAMS[kind])
        return u.expand(shape)
    return uniform


def load_hf_weights(path):
    """Every tensor of every safetensors file of a checkpoint folder, by name (engine-free)."""
    W = {}
    for f in sorted(path.glob("*.safetensors")):
        W.update(load_file(str(f)))
    return W


def random_dream(seed=0, d=48, H=4, Hkv=2, layers=2, mlp=80, V=96, tie=False, mask=95):
    """Engine-free tiny Dream weights (HF names) and config dict, for the oracle's self-checks."""
    g = torch.Generator().manual_seed(seed)
    hd = d // H
    r = lambda *s, std=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * std  # noqa: E731
    W = {"model.embed_tokens.weight": r(V, d), "model.norm.weight": 1 + r(d, std=0.1)}
    if not tie:
        W["lm_head.weight"] = r(V, d, std=4 / math.sqrt(d))
    for i in range(layers):
        p = f"model.layers.{i}."
        W.update({p + "input_layernorm.weight": 1 + r(d, std=0.1),
                  p + "post_attention_layernorm.weight": 1 + r(d, std=0.1),
                  p + "self_attn.o_proj.weight": r(d, H * hd, std=1 / math.sqrt(d)),
                  p + "mlp.gate_proj.weight": r(mlp, d, std=1 / math.sqrt(d)),
                  p + "mlp.up_proj.weight": r(mlp, d, std=1 / math.sqrt(d)),
                  p + "mlp.down_proj.weight": r(d, mlp, std=1 / math.sqrt(mlp))})
        for n, out in (("q", H * hd), ("k", Hkv * hd), ("v", Hkv * hd)):
            W[p + f"self_attn.{n}_proj.weight"] = r(out, d, std=2 / math.sqrt(d))
            W[p + f"self_attn.{n}_proj.bias"] = r(out, std=0.3)
    cfg = dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=H,
               num_key_value_heads=Hkv, intermediate_size=mlp, vocab_size=V,
               rope_theta=10000.0, rms_norm_eps=1e-6, mask_token_id=mask, eos_token_id=V - 2,
               pad_token_id=V - 2, tie_word_embeddings=tie)
    return W, cfg


# ------------------------------------------------------------------ the oracle on its own


def test_oracle_schedule_when_steps_equal_gen_length(monkeypatch):
    """Float32 timesteps and int() truncation: steps == gen_length commits [0, 1, ..., 1, 2]."""
    W, cfg = random_dream()
    counts, inner = [], RD.dream_logits

    def counting(weights, c, x, am):
        counts.append(int((x == cfg["mask_token_id"]).sum()))
        return inner(weights, c, x, am)
    monkeypatch.setattr(RD, "dream_logits", counting)
    for G in (8, 16):
        counts.clear()
        x = RD.dream_generate(W, cfg, torch.tensor([[3, 4, 5]]), steps=G, gen_length=G)
        assert (x == cfg["mask_token_id"]).sum() == 0
        commits = [a - b for a, b in zip(counts, counts[1:] + [0])]
        assert commits == [0] + [1] * (G - 2) + [2], commits
    # two rows, one n for both: int(8 * (1 - s/t)) = 1, 2, 2, then the remaining 3, per row
    counts.clear()
    RD.dream_generate(W, cfg, torch.tensor([[3, 4, 5], [6, 7, 8]]), steps=4, gen_length=8)
    assert [a - b for a, b in zip(counts, counts[1:] + [0])] == [2, 4, 4, 6]


def test_oracle_cached_forward_is_exact_when_nothing_changed():
    """With the canvas unchanged since the block-start forward, every cache mode's fed rows equal
    the full forward's (the KV variant is the same model)."""
    W, cfg = random_dream(seed=1)
    x = torch.tensor([7, 8, 9, 10, 11] + [cfg["mask_token_id"]] * 12)
    L = len(x)
    full = RD.dream_logits(W, cfg, x[None], torch.ones(1, L, dtype=torch.bool))[0]
    out, stored = RD.dream_logits_kv(W, cfg, x, 0, L)
    torch.testing.assert_close(out, full, rtol=0, atol=1e-9)
    for mode, hi in (("prefix", L), ("dual", 13)):
        part, _ = RD.dream_logits_kv(W, cfg, x, 8, hi, stored, mode, fresh_from=9)
        torch.testing.assert_close(part, full[8:hi], rtol=0, atol=1e-9)
    # a padded row equals its unpadded run (positions j - pad, pads never attended)
    xp = torch.cat([torch.tensor([1, 1, 1]), x])
    am = torch.tensor([False] * 3 + [True] * L)
    torch.testing.assert_close(RD.dream_logits(W, cfg, xp[None], am[None])[0, 3:], full,
                               rtol=0, atol=1e-9)
    # tied head: lm_head absent, embed_tokens used
    Wt, ct = random_dream(seed=1, tie=True)
    untied = dict(Wt, **{"lm_head.weight": Wt["model.embed_tokens.weight"]})
    assert "lm_head.weight" not in Wt
    torch.testing.assert_close(RD.dream_logits(Wt, ct, x[None], am[None, 3:]),
                               RD.dream_logits(untied, dict(ct, tie_word_embeddings=False),
                                               x[None], am[None, 3:]), rtol=0, atol=0)


def test_oracle_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64))
    low = torch.finfo(torch.float64).min
    # top_p 0.6: cumulative 0.5, 0.8 -> 0.3 is the first token past the boundary and stays
    assert (RD.filter_logits(logits, top_p=0.6) == low).tolist() == [[False, False, True, True]]
    assert (RD.filter_logits(logits, top_p=0.1) == low).tolist() == [[False, True, True, True]]
    assert (RD.filter_logits(logits, top_p=1.0) == low).sum() == 0
    assert (RD.filter_logits(logits, top_k=3) == low).tolist() == [[False, False, False, True]]
    z = RD.filter_logits(logits, 2.0, top_p=0.6, top_k=1)  # temperature first, then p, then k
    assert (z == low).tolist() == [[False, True, True, True]]
    x0, conf = RD.sample_tokens(logits, "topk_margin", 0.0, 0.7, None)
    torch.testing.assert_close(conf, torch.tensor([0.5 / 0.8 - 0.3 / 0.8], dtype=torch.float64))
    _, ent = RD.sample_tokens(logits, "entropy", 0.0, None, None)
    p = logits.exp()
    torch.testing.assert_close(ent, (p * torch.log(p + 1e-10)).sum(-1))


def test_oracle_one_block_equals_dream_generate():
    """dream_generate_fast with one block, the fixed rule and no cache is dream_generate."""
    W, cfg = random_dream(seed=2)
    prompt = [3, 4, 5, 6]
    for kw in (dict(alg="maskgit_plus", top_p=0.9), dict(alg="entropy", top_k=5),
               dict(alg="origin", temperature=0.8), dict(alg="topk_margin", alg_temp=0.5)):
        noise = philox_noise(11, len(prompt))
        want = RD.dream_generate(W, cfg, torch.tensor([prompt]), steps=6, gen_length=12,
                                 uniform=noise, **kw)[0, 4:].tolist()
        got, nfe = RD.dream_generate_fast(W, cfg, prompt, gen_length=12, block_length=12,
                                          steps=6, uniform=noise, **kw)
        assert got == want, kw
        assert nfe <= 6


# ------------------------------------------------------------------ engine vs oracle


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fastdiff import Engine, ModelConfig
    from fastdiff.models import save_random_checkpoint
    path = save_random_checkpoint(tmp_path_factory.mktemp("dream"),
                                  ModelConfig.preset("dream-tiny"), seed=0, dtype=torch.float32)
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    return engine, load_hf_weights(path), json.loads((path / "config.json").read_text()), path


def gen_config(**kw):
    from fastdiff import GenerationConfig
    return GenerationConfig(**kw)


def reference_run(setup, prompts, kw):
    _, W, cfg, _ = setup
    P = max(len(p) for p in prompts)
    x = torch.tensor([[cfg["pad_token_id"]] * (P - len(p)) + p for p in prompts])
    am = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts])
    args = {k: kw[k] for k in ("temperature", "top_p", "top_k", "alg", "alg_temp") if k in kw}
    out = RD.dream_generate(W, cfg, x, am, steps=kw["steps"], gen_length=kw["gen_length"],
                            uniform=philox_noise(kw.get("seed") or 0, P), **args)
    return out[:, P:].tolist()


def check_generate(setup, prompts, **kw):
    engine = setup[0]
    got = engine.generate_ids(prompts, gen_config(**kw))
    want = reference_run(setup, prompts, kw)
    for i, (c, w) in enumerate(zip(got, want)):
        j = first_mismatch(c.full_ids, w)
        if j is not None:
            pytest.fail(f"row {i}: first mismatch at generated position {j}: engine "
                        f"{c.full_ids[j]} vs reference {w[j]} ({kw})\nengine {c.full_ids}\n"
                        f"refer. {w}")
        assert c.nfe == kw["steps"], f"row {i}: nfe {c.nfe} vs {kw['steps']} forwards"
    return got


FILTERS = {"plain": {}, "top_p": dict(top_p=0.9), "top_k": dict(top_k=5),
           "top_p_k": dict(top_p=0.95, top_k=3)}


ALGS = ["maskgit_plus", "topk_margin", "entropy"]
GREEDY = ([(3, alg, filt) for alg in ALGS for filt in FILTERS]  # padded batch: every pair
          + [(1, alg, filt) for alg, filt in zip(ALGS, ["top_p_k", "plain", "top_p"])])


@pytest.mark.parametrize("batch, alg, filt", GREEDY, ids=lambda v: str(v))
def test_greedy_equals_reference(setup, alg, filt, batch):
    steps = {"plain": 16, "top_p": 8, "top_k": 5, "top_p_k": 11}[filt]  # incl. steps == gen
    prompts = PROMPTS[:1] if batch == 1 else PROMPTS
    check_generate(setup, prompts, gen_length=16, steps=steps, alg=alg, temperature=0.0,
                   alg_temp=0.0 if filt == "top_k" else None, **FILTERS[filt])


def test_dream_defaults_are_one_greedy_block(setup):
    """A Dream checkpoint's defaults: one block over the whole generation, temperature 0, no
    filters, steps = gen_length; the tokens are dream_generate's with the resolved alg."""
    gen = setup[0].resolve_config(gen_config(gen_length=16))
    assert (gen.block_length, gen.steps, gen.temperature, gen.top_p, gen.top_k) == \
        (16, 16, 0.0, None, None)
    assert gen.alg in ("maskgit_plus", "topk_margin", "entropy") and not gen.alg_temp
    got = setup[0].generate_ids(PROMPTS, gen_config(gen_length=16))
    want = reference_run(setup, PROMPTS, dict(gen_length=16, steps=16, alg=gen.alg))
    assert [c.full_ids for c in got] == want and all(c.nfe == 16 for c in got)


def test_greedy_exact_ties_go_to_the_lowest_position(setup):
    """top_k=1 makes every confidence exactly equal (p = 1): the tie rule decides the order."""
    got = check_generate(setup, PROMPTS, gen_length=16, steps=4, alg="maskgit_plus", top_k=1)
    assert all(setup[0].config.mask_token_id not in c.full_ids for c in got)


SAMPLING = {  # id: settings (all with a seed; compared with the oracle fed the engine's noise)
    "origin-T0": dict(alg="origin", temperature=0.0),
    "origin-T0.8-top_p": dict(alg="origin", temperature=0.8, top_p=0.9),
    "maskgit-T1-top_k": dict(alg="maskgit_plus", temperature=1.0, top_k=8),
    "entropy-algtemp-T0": dict(alg="entropy", alg_temp=0.5, temperature=0.0),
    "margin-algtemp-T0.7": dict(alg="topk_margin", alg_temp=1.0, temperature=0.7, top_p=0.95),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_sampling_equals_reference_with_the_engine_noise(setup, case):
    kw = dict(gen_length=16, steps=8, seed=1234, **SAMPLING[case])
    got = check_generate(setup, PROMPTS, **kw) if SAMPLING[case]["alg"] != "origin" else None
    if got is None:  # origin may finish early: compare tokens; nfe is at most steps
        engine = setup[0]
        got = engine.generate_ids(PROMPTS, gen_config(**kw))
        want = reference_run(setup, PROMPTS, kw)
        for i, (c, w) in enumerate(zip(got, want)):
            j = first_mismatch(c.full_ids, w)
            assert j is None, f"row {i}: first mismatch at {j}: {c.full_ids[j]} vs {w[j]} ({kw})"
            assert 1 <= c.nfe <= kw["steps"]
    greedy = reference_run(setup, PROMPTS, dict(kw, seed=0, temperature=0.0, alg_temp=None,
                                                  alg="maskgit_plus"))
    assert [c.full_ids for c in got] != greedy  # the noise had an effect


def test_same_seed_same_tokens(setup):
    engine = setup[0]
    kw = dict(gen_length=16, steps=8, alg="entropy", temperature=0.9, top_p=0.95, alg_temp=0.3)
    a = engine.generate_ids(PROMPTS, gen_config(seed=7, **kw))
    b = engine.generate_ids(PROMPTS, gen_config(seed=7, **kw))
    c = engine.generate_ids(PROMPTS, gen_config(seed=8, **kw))
    assert [x.full_ids for x in a] == [x.full_ids for x in b]
    assert [x.full_ids for x in a] != [x.full_ids for x in c]




@pytest.mark.slow
def test_sampling_frequencies_follow_the_filtered_tempered_softmax(setup):
    """steps=1: every position is drawn once from softmax(top_k(logits / T)) of the all-MASK
    canvas. N seeds x G positions against the oracle's distribution, Pearson chi-square within
    6 sigma of its df; the same counts must fail against the untempered distribution (power)."""
    engine, W, cfg, _ = setup
    prompt, G, N, T, k = PROMPTS[0], 32, 64, 1.6, 6
    counts = torch.zeros(G, cfg["vocab_size"], dtype=torch.float64)
    gen = gen_config(gen_length=G, steps=1, alg="origin", temperature=T, top_k=k)
    for first in range(0, N, 16):  # 16 rows per batch, one seed each
        for c in engine.generate_ids([prompt] * 16, gen, seeds=list(range(first, first + 16))):
            counts[torch.arange(G), torch.tensor(c.full_ids)] += 1
    x = torch.tensor([prompt + [cfg["mask_token_id"]] * G])
    logits = RD.dream_logits(W, cfg, x, torch.ones_like(x, dtype=torch.bool))[0]
    logits = logits[len(prompt) - 1: -1]  # shifted: position j <- output j - 1
    bound = lambda df: df + 6 * math.sqrt(2 * df)  # noqa: E731
    stat, df = chi2(counts, RD.filter_logits(logits, T, None, k).softmax(-1), N)
    assert stat < bound(df), f"chi-square {stat:.1f} over {df} df"
    wrong, wdf = chi2(counts, RD.filter_logits(logits, 1.0, None, k).softmax(-1), N)
    assert wrong > bound(wdf), f"no power: {wrong:.1f} over {wdf} df against T=1"


# ------------------------------------------------------------------ section 4 on Dream


def check_fast(setup, prompts, **kw):
    engine, W, cfg, _ = setup
    got = engine.generate_ids(prompts, gen_config(**kw))
    args = {k: kw[k] for k in ("steps", "threshold", "factor", "cache", "alg", "temperature",
                               "top_p", "top_k", "alg_temp") if k in kw}
    for i, (p, c) in enumerate(zip(prompts, got)):
        want, nfe = RD.dream_generate_fast(W, cfg, p, gen_length=kw["gen_length"],
                                           block_length=kw["block_length"],
                                           uniform=philox_noise(kw.get("seed") or 0, len(p)),
                                           **args)
        j = first_mismatch(c.full_ids, want)
        if j is not None:
            pytest.fail(f"row {i}: first mismatch at generated position {j}: engine "
                        f"{c.full_ids[j]} vs reference {want[j]} ({kw})\nengine {c.full_ids}\n"
                        f"refer. {want}")
        assert c.nfe == nfe, f"row {i}: nfe {c.nfe} vs reference {nfe} ({kw})"
    return got


POLICIES = {"fixed": dict(steps=8), "threshold": dict(threshold=0.7), "factor": dict(factor=1.0)}


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_blocks_and_caches_equal_section4_reference(setup, policy, cache):
    got = check_fast(setup, PROMPTS, gen_length=16, block_length=8, cache=cache,
                     alg="maskgit_plus", **POLICIES[policy])
    if policy != "fixed":
        assert min(c.nfe for c in got) < 16  # some step committed several tokens


@pytest.mark.parametrize("kw", [
    dict(alg="entropy", top_p=0.9, steps=16, cache="dual"),
    dict(alg="topk_margin", threshold=0.5, cache="prefix", top_k=20),
    dict(alg="maskgit_plus", temperature=0.8, seed=5, threshold=0.8, cache="dual"),
    dict(alg="origin", temperature=0.7, seed=9, steps=8, cache="dual"),
    dict(alg="maskgit_plus", alg_temp=0.4, seed=3, steps=8, cache="prefix")],
    ids=["entropy-fixed-dual", "margin-thr-prefix", "T-thr-dual", "origin-dual", "algtemp-prefix"])
def test_blocks_with_dream_scores_and_noise(setup, kw):
    check_fast(setup, PROMPTS, gen_length=16, block_length=8, **kw)


def test_caches_change_results(setup):
    """Guard against a test that cannot fail: the caches are approximations here."""
    engine = setup[0]
    kw = dict(gen_length=32, block_length=8, steps=16, alg="maskgit_plus")
    ids = {c: [r.full_ids for r in engine.generate_ids(PROMPTS, gen_config(cache=c, **kw))]
           for c in ("none", "prefix", "dual")}
    assert ids["prefix"] != ids["none"] or ids["dual"] != ids["none"]


# ------------------------------------------------------------------ Triton under the interpreter


TRITON_CASES = {  # GQA (4 query / 2 KV heads) in every case
    "greedy-top_p-batch": (PROMPTS[1:], dict(gen_length=8, steps=4, alg="maskgit_plus",
                                             top_p=0.9)),
    "threshold-dual-margin": (PROMPTS[1:2], dict(gen_length=8, block_length=4, threshold=0.6,
                                                 cache="dual", alg="topk_margin")),
    "algtemp-T-prefix": (PROMPTS[:2], dict(gen_length=8, block_length=4, steps=4, seed=4,
                                           cache="prefix", alg="entropy", alg_temp=0.5,
                                           temperature=0.8)),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_equals_reference(setup, monkeypatch, case):
    from fastdiff import Engine
    from fastdiff.kernels import attention as at
    from fastdiff.kernels import lm_head_confidence as lm
    from fastdiff.kernels import rope_kv as rk
    from kernel_checks import count_launches
    prompts, kw = TRITON_CASES[case]
    engine = Engine.from_pretrained(setup[3], device="cpu", dtype="float32", backend="triton",
                                    max_batch_size=len(PROMPTS))
    assert engine.backend == "triton"
    kernels = [(at, "_attention_kernel"), (rk, "_rope_kv_kernel")]
    if "top_p" not in kw and "top_k" not in kw:  # the fused LM head has no filtered form
        kernels.append((lm, "_lm_head_partial_kernel"))
    counters = [count_launches(monkeypatch, mod, name) for mod, name in kernels]
    triton_setup = (engine,) + tuple(setup[1:])
    if "block_length" in kw:
        check_fast(triton_setup, prompts, **kw)
    else:
        check_generate(triton_setup, prompts, **kw)
    assert all(c.launches > 0 for c in counters), [(n, c.launches) for (_, n), c in
                                                  zip(kernels, counters)]


# ------------------------------------------------------------------ loading


DREAM_7B_CONFIG = {  # Dream-org/Dream-v0-Instruct-7B config.json, every published key
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                 "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "pad_token_id": 151643, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2", "use_cache": False, "use_sliding_window": False,
    "vocab_size": 152064}


def write_dream_7b_like(path, tie=False):
    """The published config.json keys with tiny sizes (real ids, real vocab), bf16 weights in
    two shards + index, written here with safetensors (no fastdiff code)."""
    cfg = dict(DREAM_7B_CONFIG, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               max_window_layers=2, tie_word_embeddings=tie)
    W, _ = random_dream(seed=5, d=32, H=4, Hkv=2, layers=2, mlp=48, V=cfg["vocab_size"], tie=tie)
    W = {k: v.to(torch.bfloat16).contiguous() for k, v in W.items()}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    write_two_shards(path, W)
    return path, W, cfg


@pytest.mark.parametrize("tie", [False, True])
def test_loads_published_dream_config_and_shards(tmp_path, tie):
    from fastdiff import Engine
    path, W, cfg = write_dream_7b_like(tmp_path / "dream", tie=tie)
    engine = Engine.from_pretrained(path, device="cpu", dtype="float32", backend="torch")
    c = engine.config
    assert (c.family, c.n_kv_heads, c.mask_token_id, c.eos_token_id) == ("dream", 2, 151666, 151643)
    prompt = [151643, 100, 2000, 30000, 7]
    got = engine.generate_ids([prompt], gen_config(gen_length=8, steps=8, alg="maskgit_plus"))
    want = RD.dream_generate(W, cfg, torch.tensor([prompt]), steps=8, gen_length=8)
    assert got[0].full_ids == want[0, 5:].tolist()


def test_unknown_model_type_is_named(tmp_path):
    from fastdiff import Engine
    path, _, cfg = write_dream_7b_like(tmp_path / "qwen")
    (path / "config.json").write_text(json.dumps(dict(cfg, model_type="qwen2",
                                                      architectures=["Qwen2ForCausalLM"])))
    with pytest.raises(ValueError, match="'qwen2'"):
        Engine.from_pretrained(path, device="cpu", dtype="float32")


def test_misshaped_tensor_names_file_and_tensor(tmp_path):
    from fastdiff import Engine
    path, W, _ = write_dream_7b_like(tmp_path / "bad")
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.k_proj.bias"
    fname = index[name]
    shard = load_file(str(path / fname))
    shard[name] = shard[name][:-1].contiguous()
    save_file(shard, str(path / fname), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        Engine.from_pretrained(path, device="cpu", dtype="float32")
    assert fname in str(err.value) and name in str(err.value), str(err.value)
    shutil.rmtree(path)


def test_oracle_forward_equals_transformers_qwen2():
    """The oracle's forward is Qwen2's with bidirectional attention: transformers' Qwen2 (a dev
    dependency) fed a full 4D mask over the real tokens and positions j - pad agrees (its RoPE
    tables are float32, hence the tolerance; causal attention would differ by ~10)."""
    transformers = pytest.importorskip("transformers")
    W, cfg = random_dream(seed=3)
    hc = transformers.Qwen2Config(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=80, vocab_size=96, rope_theta=cfg["rope_theta"], rms_norm_eps=1e-6,
        tie_word_embeddings=False, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(hc).double().eval()
    model.load_state_dict(W, strict=True)
    x = torch.tensor([[1, 1, 7, 8, 9, 10, 95, 95, 95, 95]])
    am = torch.tensor([[False, False] + [True] * 8])
    mask4 = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    mask4[..., ~am[0]] = torch.finfo(torch.float64).min
    with torch.no_grad():
        hf = model(input_ids=x, attention_mask=mask4,
                   position_ids=(torch.arange(10) - 2).clamp(min=0)[None]).logits
    torch.testing.assert_close(RD.dream_logits(W, cfg, x, am)[0, 2:], hf[0, 2:], rtol=0, atol=1e-4)
