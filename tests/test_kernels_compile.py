"""Compile every Triton kernel for sm_90 (triton.compile with a CUDA GPUTarget) on the CPU, in a
subprocess WITHOUT TRITON_INTERPRET, and check shared memory <= 232448 bytes (H100 per block) and
no register spills (triton's bundled ptxas -v), each unaligned (any shape) and aligned (the
model shapes).

The default run compiles every kernel and mode in bf16 at the extreme block sizes; the slow test
walks every configuration the launchers can pick (tests/_compile_sm90.py lists them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_compile_sm90.py")


def _run(argv: list, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SCRIPT.parent),
                                         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _compile(*args: str, timeout: int) -> str:
    proc = _run([str(SCRIPT), *args], timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sm_90 compile failed:\n{out[-4000:]}"
    assert "OK " in proc.stdout, out[-2000:]
    return proc.stdout


def test_compile_sm90_quick():
    out = _compile("--quick", timeout=600)
    n = int(out.strip().splitlines()[-1].split()[1])
    assert n >= 40, out[-2000:]
    for kernel in ("select_commit", "lm_head_partial", "lm_head_combine", "attention ",
                   "attention_combine"):
        assert kernel in out, f"{kernel} was not compiled"
    assert out.count("] = 1 [") >= 2 * 8, "the integer = 1 specializations were not compiled"


def test_spill_check_fails_a_spilling_config():
    """The LM head's former tile (64 rows x [128, 128] of W at 4 warps, sampling) spills about
    2.7 KB on sm_90: compile_one must reject it, so the spill check can fail."""
    code = ("import _compile_sm90 as c\n"
            "fn, sig, ce, _, _, _ = next(v for v in c.lm_head_variants()\n"
            "                            if v[1]['h_ptr'] == '*bf16' and v[2]['SAMPLE'])\n"
            "ce = dict(ce, BLOCK_N=64, BLOCK_V=128, BLOCK_K=128)\n"
            "c.compile_one(fn, sig, ce, 4, 3, 'former lm_head tile')\n")
    proc = _run(["-c", code], timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "FAIL former lm_head tile [any]: register spills" in out, \
        out[-2000:]


@pytest.mark.slow
def test_compile_sm90_every_launch_config():
    out = _compile(timeout=1800)
    assert int(out.strip().splitlines()[-1].split()[1]) > 100
