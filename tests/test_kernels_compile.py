"""Compile every Triton kernel for sm_90 (triton.compile with a CUDA GPUTarget) on the CPU, in a
subprocess WITHOUT TRITON_INTERPRET, and check shared memory <= 232448 bytes (H100 per block).

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


def _compile(*args: str, timeout: int) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
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


@pytest.mark.slow
def test_compile_sm90_every_launch_config():
    out = _compile(timeout=1800)
    assert int(out.strip().splitlines()[-1].split()[1]) > 100
