import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastdiff import Engine, ModelConfig
from fastdiff.models import load_checkpoint, random_weights, save_random_checkpoint
from fastdiff.models.llada import PREFIX


def test_round_trip_sharded_bf16_to_fp32(tiny_ckpt):
    files = sorted(p.name for p in tiny_ckpt.iterdir())
    assert "model.safetensors.index.json" in files
    assert [f for f in files if f.startswith("model-")] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    on_disk = {}
    for f in set(index["weight_map"].values()):
        on_disk.update(load_file(str(tiny_ckpt / f)))
    assert all(t.dtype == torch.bfloat16 for t in on_disk.values())
    ck = load_checkpoint(tiny_ckpt, dtype=torch.float32)
    assert ck.model.dtype == torch.float32
    expected = random_weights(ck.config, seed=0, dtype=torch.bfloat16, eos_rate=0.1)
    assert set(on_disk) == set(expected)
    for name, t in expected.items():
        assert torch.equal(on_disk[name], t), name
    assert torch.equal(ck.model.wte, expected[PREFIX + "wte.weight"].float())
    assert torch.equal(ck.model.layers[1].ff_out, expected[PREFIX + "blocks.1.ff_out.weight"].float())


def test_single_file_fp16_converted_to_bf16(gqa_ckpt):
    assert (gqa_ckpt / "model.safetensors").is_file()
    ck = load_checkpoint(gqa_ckpt, dtype=torch.bfloat16)
    assert ck.model.dtype == torch.bfloat16 and ck.config.n_kv_heads == 2
    assert ck.model.layers[0].k_proj.shape == (2 * 24, 96)


def test_tokenizer_specials_sit_at_config_ids(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt)
    tok = ck.tokenizer
    assert tok.token_to_id("<|mdm_mask|>") == ck.config.mask_token_id == 1020
    assert tok.token_to_id("<|endoftext|>") == ck.config.eos_token_id == 1017
    assert tok.eot_token_id is not None and tok.eot_token_id not in (1020, 1017)
    ids = tok.encode("def fibonacci(n):")
    assert ids[0] == tok.token_to_id("<|startoftext|>")  # the tokenizer's own BOS handling
    assert tok.decode(ids) == "def fibonacci(n):"
    assert max(tok._tok.get_vocab().values()) == ck.config.vocab_size - 1


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_and_files(tmp_path, tiny_ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    d = _copy(tiny_ckpt, tmp_path / "c")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_checkpoint(d)
    (d / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_checkpoint(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(d)


def test_missing_and_misshaped_tensors(tmp_path, gqa_ckpt):
    d = _copy(gqa_ckpt, tmp_path / "c")
    w = load_file(str(d / "model.safetensors"))
    name = PREFIX + "blocks.1.up_proj.weight"
    save_file({k: v for k, v in w.items() if k != name}, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks tensor.*blocks.1.up_proj"):
        load_checkpoint(d)
    w[name] = w[name][:, :-1].contiguous()
    save_file(w, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"blocks.1.up_proj.weight.*shape \(160, 95\).*\(160, 96\)"):
        load_checkpoint(d)


def test_unsupported_model_type(tmp_path, gqa_ckpt):
    d = _copy(gqa_ckpt, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'qwen2'"):
        load_checkpoint(d)


def test_folder_without_tokenizer(tmp_path):
    cfg = ModelConfig.preset("tiny")
    d = save_random_checkpoint(tmp_path / "c", cfg, seed=1, tokenizer=False)
    engine = Engine.from_pretrained(d)
    assert engine.tokenizer is None
    out = engine.generate([5, 6, 7], gen_length=8, steps=8, block_length=8)
    assert len(out[0].full_ids) == 8 and out[0].text is None
    with pytest.raises(ValueError, match="no tokenizer.json.*token ids"):
        engine.generate("hello", gen_length=8, steps=8, block_length=8)


def test_bad_dtype(tiny_ckpt):
    with pytest.raises(ValueError, match="dtype"):
        Engine.from_pretrained(tiny_ckpt, dtype="int8")
    with pytest.raises(ValueError, match="CUDA is not available"):
        if not torch.cuda.is_available():
            Engine.from_pretrained(tiny_ckpt, device="cuda")
        else:
            raise ValueError("CUDA is not available (skipped: a GPU is present)")
