"""The public API: prompt forms, Completion fields, chat template, errors, CLI."""
import subprocess
import sys

import pytest
import torch

import fastdiff
from fastdiff import Completion, Engine, GenerationConfig
from fastdiff.cli import main as cli_main

KW = dict(gen_length=16, block_length=8, steps=8)


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt)


def test_top_level_names():
    assert fastdiff.Engine is Engine and fastdiff.GenerationConfig is GenerationConfig
    assert fastdiff.Completion is Completion


def test_auto_options_on_cpu(engine):
    assert engine.backend == "torch" and engine.model.dtype == torch.float32
    assert engine.model.device.type == "cpu"


def test_prompt_forms(engine):
    tok = engine.tokenizer
    text = "def fibonacci(n):"
    ids = tok.encode(text)
    one = engine.generate(text, **KW)
    assert len(one) == 1 and isinstance(one[0], Completion)
    assert engine.generate(ids, **KW)[0].full_ids == one[0].full_ids
    two = engine.generate([text, "hello"], **KW)
    assert two[0].full_ids == one[0].full_ids
    assert engine.generate([ids, tok.encode("hello")], **KW)[1].full_ids == two[1].full_ids
    cfg = GenerationConfig(**KW)
    assert engine.generate(text, cfg)[0].full_ids == one[0].full_ids


def test_chat_template_rendering(engine):
    tok = engine.tokenizer
    msgs = [{"role": "system", "content": " be brief "}, {"role": "user", "content": "hi\n"}]
    rendered = tok.apply_chat_template(msgs)
    assert rendered == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief"
                        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(rendered, add_special_tokens=False)
    assert ids.count(tok.token_to_id("<|startoftext|>")) == 1  # BOS not added twice
    via_chat = engine.generate("hi", chat=True, **KW)[0]
    direct = engine.generate(tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]),
                                        add_special_tokens=False), **KW)[0]
    assert via_chat.full_ids == direct.full_ids
    assert engine.generate(msgs, **KW)[0].full_ids == engine.generate(
        tok.encode(rendered, add_special_tokens=False), **KW)[0].full_ids


def test_completion_fields(engine):
    eos = engine.config.eos_token_id
    outs = engine.generate([[5, 77, 300, 12, 9], [11, 12, 13, 14, 15, 16, 17, 18, 200]],
                           gen_length=64, block_length=16, steps=32)
    saw_eos = False
    for c in outs:
        assert len(c.full_ids) == 64 and c.nfe == 32
        stops = [j for j, t in enumerate(c.full_ids) if t in (eos, engine.eot_id)]
        if stops:
            saw_eos = True
            assert c.finish_reason == "eos" and c.token_ids == c.full_ids[: stops[0]]
        else:
            assert c.finish_reason == "length" and c.token_ids == c.full_ids
        assert c.text == engine.tokenizer.decode(c.token_ids)
    assert saw_eos


def test_input_errors(engine):
    mask = engine.config.mask_token_id
    with pytest.raises(ValueError, match=f"MASK token id {mask}"):
        engine.generate([[1, 2, mask]], **KW)
    with pytest.raises(ValueError, match="max_sequence_length=1024"):
        engine.generate([[1] * 1010], **KW)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 5000]], **KW)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([], **KW)
    with pytest.raises(ValueError, match="steps"):
        engine.generate("hi", gen_length=16, block_length=8, steps=7)
    with pytest.raises(ValueError, match="unknown generation setting"):
        engine.generate("hi", nucleus=3)
    with pytest.raises(ValueError, match="top_k=3 is invalid: the llada family does not"):
        engine.generate("hi", top_k=3)
    with pytest.raises(ValueError, match="alg='origin' is invalid: the llada family allows"):
        engine.generate("hi", alg="origin")
    with pytest.raises(ValueError, match="a prompt must be"):
        engine.generate([[1.5, 2]], **KW)
    with pytest.raises(ValueError, match="backend"):
        Engine.from_pretrained("unused", backend="jax")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="graphs=True needs a CUDA device"):
            Engine.from_pretrained("unused", graphs=True)
    with pytest.raises(ValueError, match="graphs"):
        Engine.from_pretrained("unused", graphs="sometimes")


def test_max_batch_size(tiny_ckpt):
    small = Engine.from_pretrained(tiny_ckpt, max_batch_size=2)
    with pytest.raises(ValueError, match="max_batch_size=2"):
        small.generate(["a", "b", "c"], **KW)


def test_cli_generate(tiny_ckpt, capsys):
    rc = cli_main(["generate", "--model", str(tiny_ckpt), "--prompt", "def f(x):",
                   "--gen-length", "16", "--steps", "8", "--block-length", "8"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.startswith("def f(x):")
    assert "NFE 8" in out.err and "tokens/s" in out.err
    rc = cli_main(["generate", "--model", str(tiny_ckpt), "--gen-length", "10", "--block-length", "4"])
    assert rc == 2 and "gen_length" in capsys.readouterr().err


def test_cli_entry_point_runs_as_module(tiny_ckpt):
    r = subprocess.run([sys.executable, "-m", "fastdiff.cli", "generate", "--model", str(tiny_ckpt),
                        "--prompt", "x", "--gen-length", "8", "--block-length", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NFE 8" in r.stderr
