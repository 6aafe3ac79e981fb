"""The CLI passes only the flags given to GenerationConfig (the family fills in the rest) and
rejects invalid settings with status 2 and a message naming the flag, instead of replacing
them."""
import os
import subprocess
import sys

import pytest
import torch

from fastdiff.cli import main as cli_main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BAD = [
    (["--steps", "0"], "--steps", "steps=0"),
    (["--block-length", "0"], "--block-length", "block_length=0"),
    (["--threshold", "2"], "--threshold", "threshold=2.0"),
    (["--factor", "0"], "--factor", "factor=0.0"),
    (["--temperature", "-1"], "--temperature", "temperature=-1.0"),
    (["--steps", "17"], "--steps", "gen_length=16"),  # more steps than tokens (LLaDA)
    (["--steps", "5", "--block-length", "8"], "--steps", "number of blocks"),
    (["--block-length", "12"], "--gen-length", "block_length=12"),
    (["--remasking", "random", "--alg", "entropy"], "--alg", "set one"),
    (["--seed", "-1"], "--seed", "seed=-1"),
]


@pytest.mark.parametrize("argv,flag,detail", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_invalid_settings_exit_2_naming_the_flag(tiny_ckpt, capsys, argv, flag, detail):
    rc = cli_main(["generate", "--model", str(tiny_ckpt), "--gen-length", "16", *argv])
    cap = capsys.readouterr()
    assert rc == 2
    assert f"fastdiff generate: error: argument {flag}: " in cap.err and detail in cap.err
    assert cap.out == ""  # rejected before anything ran


def test_steps_0_is_rejected_by_the_real_command(tiny_ckpt):
    """The issue's example: `fastdiff generate --steps 0` ran with steps = gen_length."""
    p = subprocess.run([sys.executable, "-m", "fastdiff.cli", "generate", "--model",
                        str(tiny_ckpt), "--steps", "0"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 2, p.stderr
    assert "error: argument --steps: steps=0 is invalid" in p.stderr and p.stdout == ""


def test_flags_not_given_take_the_family_defaults(tiny_ckpt, capsys):
    # no --steps / --block-length: LLaDA's defaults for gen_length 16 are one block of 16 and
    # steps = gen_length, so 16 forwards
    assert cli_main(["generate", "--model", str(tiny_ckpt), "--gen-length", "16"]) == 0
    assert "NFE 16," in capsys.readouterr().err
    assert cli_main(["generate", "--model", str(tiny_ckpt), "--gen-length", "16", "--steps", "8",
                     "--block-length", "8", "--no-stop-at-eos"]) == 0
    assert "NFE 8," in capsys.readouterr().err


def test_demo_keeps_threshold_and_dual_cache(capsys):
    assert cli_main(["demo", "--gen-length", "32"]) == 0
    assert "threshold 0.9, dual cache" in capsys.readouterr().err
    assert cli_main(["demo", "--steps", "0"]) == 2
    assert "fastdiff demo: error: argument --steps" in capsys.readouterr().err
