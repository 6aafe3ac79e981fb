import json

import pytest

from fastdiff import GenerationConfig, ModelConfig


def test_defaults_are_llada_generate():
    g = GenerationConfig().resolve("llada")
    assert (g.gen_length, g.steps, g.block_length, g.temperature, g.cfg_scale, g.remasking,
            g.logits_eos_inf, g.confidence_eos_eot_inf, g.seed) == (
        128, 128, 128, 0.0, 0.0, "low_confidence", False, False, None)


@pytest.mark.parametrize("kwargs, field", [
    (dict(gen_length=100, block_length=32), "gen_length"),
    (dict(gen_length=64, block_length=16, steps=6), "steps"),  # 4 blocks, 6 % 4 != 0
])
def test_cross_field_rules_at_resolution(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**kwargs).resolve("llada")


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(cfg_scale=-1.0), "cfg_scale"),
    (dict(remasking="top_p"), "remasking"),
    (dict(gen_length=0), "gen_length"),
    (dict(steps=0), "steps"),
    (dict(seed=-3), "seed"),
    (dict(logits_eos_inf=1), "logits_eos_inf"),
])
def test_invalid_generation_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GenerationConfig(**kwargs)


def test_llada_steps_beyond_gen_length_fail_at_resolution():
    g = GenerationConfig(gen_length=32, block_length=32, steps=33)  # Dream allows this
    with pytest.raises(ValueError, match="steps=33.*llada"):
        g.resolve("llada")
    assert g.resolve("dream").steps == 33


def test_invalid_remasking_lists_allowed_values():
    with pytest.raises(ValueError, match="low_confidence.*random"):
        GenerationConfig(remasking="nope")


def test_replace_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown generation setting"):
        GenerationConfig().replace(nucleus=0.9)


def test_prompt_plus_gen_length_beyond_context():
    cfg = ModelConfig.preset("tiny")  # max_sequence_length 1024
    g = GenerationConfig(gen_length=128, steps=128, block_length=128)
    g.check_prompts([896], cfg)
    with pytest.raises(ValueError, match="max_sequence_length=1024"):
        g.check_prompts([10, 897], cfg)
    with pytest.raises(ValueError, match="empty"):
        g.check_prompts([], cfg)


def test_presets():
    t, s, big = (ModelConfig.preset(n) for n in ("tiny", "small", "llada-8b"))
    assert (t.d_model, t.n_heads, t.n_layers, t.mlp_hidden_size, t.vocab_size) == (128, 4, 2, 256, 1024)
    assert (s.d_model, s.n_heads, s.n_layers, s.mlp_hidden_size, s.vocab_size) == (256, 4, 4, 688, 4096)
    assert (big.d_model, big.n_layers, big.n_kv_heads, big.mask_token_id, big.eos_token_id) == (
        4096, 32, 32, 126336, 126081)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("huge")


def test_model_config_json_round_trip_and_llada_keys(tmp_path):
    cfg = ModelConfig.preset("llada-8b")
    d = cfg.to_dict()
    assert d["model_type"] == "llada" and d["architectures"] == ["LLaDAModelLM"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert ModelConfig.from_json(tmp_path / "config.json") == cfg
    d2 = dict(d, n_kv_heads=None)  # null = n_heads
    assert ModelConfig.from_dict(d2).n_kv_heads == 32


@pytest.mark.parametrize("change, match", [
    (dict(model_type="qwen2"), "unsupported model_type"),
    (dict(weight_tying=True), "weight_tying"),
    (dict(include_bias=True), "include_bias"),
    (dict(n_heads=5), "n_heads"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(mask_token_id=10**7), "mask_token_id"),
])
def test_bad_model_configs(change, match):
    d = dict(ModelConfig.preset("tiny").to_dict(), **change)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict(d)
