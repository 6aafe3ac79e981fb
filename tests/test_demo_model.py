"""The bundled demo model (fastdiff/assets/demo, trained by tools/train_demo.py) loads through the
normal loader, has consistent special ids, and reproduces its model card's held-out accuracy."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fastdiff.assets import demo_model_path
from fastdiff.models import load_checkpoint

ACC_TOL = 0.005  # absolute; the card's number is computed in fp32 by the training-side model
TPF_TOL, PARSE_TOL = 0.05, 1  # the card's engine figures (MODEL_CARD.md states these)
SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|mdm_mask|>")


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(demo_model_path(), device="cpu", dtype=torch.float32)


def test_tokenizer_ids_match_config(demo):
    cfg, tok = demo.config, demo.tokenizer
    raw = json.loads((demo_model_path() / "config.json").read_text())
    assert raw["model_type"] == "llada"
    assert tok is not None
    assert tok.token_to_id("<|mdm_mask|>") == cfg.mask_token_id == raw["mask_token_id"]
    assert tok.token_to_id("<|endoftext|>") == cfg.eos_token_id == raw["eos_token_id"]
    assert cfg.pad_token_id == cfg.eos_token_id
    assert tok.eot_token_id == tok.token_to_id("<|eot_id|>") is not None
    ids = [tok.token_to_id(s) for s in SPECIALS]
    V = cfg.vocab_size
    assert ids == list(range(V - len(SPECIALS), V)), f"specials at {ids}, expected the top ids"
    assert tok._tok.get_vocab_size() == V
    enc = tok.encode("def fibonacci(n):")
    assert enc[0] == tok.token_to_id("<|startoftext|>") and cfg.mask_token_id not in enc
    assert tok.decode(enc) == "def fibonacci(n):"


def test_chat_template_is_llama3_style(demo):
    text = demo.tokenizer.apply_chat_template([{"role": "user", "content": "  hi \n"}])
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_checkpoint_format_and_size():
    path = demo_model_path() / "model.safetensors"
    assert path.stat().st_size <= 20 * 2**20
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert "model.transformer.ff_out.weight" in f.keys()  # untied LM head
    assert dtypes <= {"BF16", "F16"}, dtypes


def test_heldout_accuracy_matches_card(demo):
    path = demo_model_path() / "heldout_sample.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        ids, mask = f.get_tensor("input_ids"), f.get_tensor("mask").bool()
    card_acc, uni_acc = float(meta["accuracy"]), float(meta["unigram_accuracy"])
    assert (mask.sum(1) == mask.shape[1] // 2).all(), "the sample masks exactly half of each row"
    x = torch.where(mask, demo.config.mask_token_id, ids)
    right = 0
    for i in range(0, len(x), 16):
        xb, mb = x[i:i + 16], mask[i:i + 16]
        B, S = xb.shape
        pos = torch.arange(S).expand(B, S)
        start = torch.zeros(B, dtype=torch.int32)
        with torch.no_grad():
            hidden = demo.model.forward(xb, pos, start, start + S)
            pred = demo.model.logits(hidden[mb]).argmax(-1)
        right += int((pred == ids[i:i + 16][mb]).sum())
    acc = right / int(mask.sum())
    assert abs(acc - card_acc) <= ACC_TOL, f"accuracy {acc:.4f} vs card {card_acc:.4f}"
    card = (demo_model_path() / "MODEL_CARD.md").read_text()
    assert f"**{card_acc:.4f}**" in card and f"{uni_acc:.4f}" in card
    assert acc >= 2.5 * uni_acc, f"accuracy {acc:.4f} < 2.5x unigram {uni_acc:.4f}"


def test_demo_model_path_reports_missing_files(tmp_path, monkeypatch):
    import fastdiff.assets as assets
    monkeypatch.setattr(assets, "_DEMO", tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        assets.demo_model_path()


def test_cli_demo_decodes_in_parallel_and_reports_tokens_per_forward(capsys):
    from fastdiff.cli import main as cli_main
    assert cli_main(["demo", "--gen-length", "16", "--block-length", "8"]) == 0
    err = capsys.readouterr().err
    assert "threshold 0.9, dual cache" in err, err
    nfe = int(err.split("NFE ")[1].split(",")[0])
    assert 2 <= nfe <= 16 and f"{16 / nfe:.2f} tokens/forward" in err, err
    assert cli_main(["demo", "--gen-length", "16", "--block-length", "8", "--steps", "8"]) == 0
    err = capsys.readouterr().err
    assert "8 steps, dual cache" in err and "NFE 8," in err and "2.00 tokens/forward" in err, err


def test_parallel_decoding_matches_card():
    """Issue 18's acceptance on the 20 fixed prompts (gen 64, block 32, greedy, CPU fp32): the
    card's 1/step and t0.9 dual figures are reproduced, and threshold 0.9 with the dual cache
    commits >= 2 tokens per forward with at least as many parsing completions as 1/step."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from eval_demo import decode_figures, figure_key
    with safe_open(str(demo_model_path() / "heldout_sample.safetensors"), framework="pt") as f:
        meta = f.metadata()
    figs = decode_figures(demo_model_path(), 64, 32, only=("1/step", "t0.9 dual"))
    for name in ("1/step", "t0.9 dual"):
        key = figure_key(name)
        tpf, parse = figs[name]["tokens_per_forward"], figs[name]["parse"]
        assert abs(tpf - float(meta[f"{key}_tokens_per_forward"])) <= TPF_TOL, (name, tpf, meta)
        assert abs(parse - int(meta[f"{key}_parse"])) <= PARSE_TOL, (name, parse, meta)
    t9, one = figs["t0.9 dual"], figs["1/step"]
    assert t9["tokens_per_forward"] >= 2.0, t9["tokens_per_forward"]
    assert t9["parse"] >= max(one["parse"], 8), (t9["parse"], one["parse"])
