"""CPU time per forward of the torch backend (the issue-12 acceptance figure).

small preset, random weights, fp32, torch backend, 1 thread; dual cache, fixed schedule
(4 tokens per step), prompt 128, gen 256, block 32. Prints the median wall time per forward
(wall time of one generate / its NFE) over --repeats runs after one warm-up, with the spread,
and appends a JSON line to --out when given. Random weights: the figure is a speed, not quality.

    python benches/bench_cpu_forward.py --repeats 7 --label after
    python benches/bench_cpu_forward.py --ab 60dbeea --rounds 3 --out results.jsonl

--ab REF: a before/after comparison on one machine in one run: REF is checked out into a
temporary git worktree and the two trees' runs alternate (REF, then the working tree), `rounds`
times, each in its own process (the editable install's finder is bypassed for REF).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# run this file against another source tree: drop the editable finder, put the tree first
_OTHER_TREE = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' "
               "not in repr(f).lower()]; sys.path.insert(0, sys.argv[1]); import fastdiff; "
               "assert fastdiff.__file__.startswith(sys.argv[1]), fastdiff.__file__; "
               "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def ab(ref: str, rounds: int, args: list[str]) -> None:
    """Alternate runs of REF (a temporary worktree) and of this tree; rows go to stdout/--out."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True,
                          capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "ref")
        subprocess.run(["git", "worktree", "add", "--detach", "-f", tree, ref], cwd=root,
                       check=True, capture_output=True)
        try:
            me = os.path.abspath(__file__)
            for _ in range(rounds):
                subprocess.run([sys.executable, "-c", _OTHER_TREE, tree, me, *args, "--label",
                                f"before ({ref})"], check=True)
                subprocess.run([sys.executable, me, *args, "--label", "after"], check=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=root,
                           capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="dual")
    p.add_argument("--label", default="")
    p.add_argument("--out", default=None)
    p.add_argument("--ab", default=None, metavar="REF", help="alternate runs of REF and this tree")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if a.ab:
        rest = ["--repeats", str(a.repeats), "--threads", str(a.threads), "--cache", a.cache]
        ab(a.ab, a.rounds, rest + (["--out", os.path.abspath(a.out)] if a.out else []))
        return
    from fastdiff import Engine, GenerationConfig, ModelConfig
    from fastdiff.bench import env
    torch.set_num_threads(a.threads)
    eng = Engine.from_config(ModelConfig.preset("small"), device="cpu", dtype="float32",
                             backend="torch", graphs=False, max_batch_size=1)
    prompt = [int(t) for t in torch.randint(0, 4000, (128,), generator=torch.Generator().manual_seed(0))]
    gen = GenerationConfig(gen_length=256, steps=64, block_length=32, cache=a.cache, seed=0)
    eng.generate(prompt, gen)  # warm-up
    per_fwd = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        out = eng.generate(prompt, gen)
        per_fwd.append((time.perf_counter() - t) / out[0].nfe * 1e3)
    med = statistics.median(per_fwd)
    row = {"bench": "cpu_forward", "label": a.label, "preset": "small", "cache": a.cache,
           "schedule": "4 tok/step", "threads": a.threads, "nfe": out[0].nfe,
           "ms_per_forward_median": round(med, 4), "ms_min": round(min(per_fwd), 4),
           "ms_max": round(max(per_fwd), 4), "repeats": a.repeats, "commit": env.git_commit()
           if hasattr(env, "git_commit") else None, "torch": torch.__version__,
           "weights": "random"}
    print(json.dumps(row))
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
