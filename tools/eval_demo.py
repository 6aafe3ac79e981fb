"""Measure a demo-model folder the way issue 18's acceptance does: the 20 fixed prompts through
fastdiff.Engine (CPU, fp32, one batch, greedy, gen 64, block 32), tokens per forward
(gen_length / NFE, averaged over the prompts' NFE) and ast.parse rate at 1 token per step and
under threshold decoding (none / dual cache), plus held-out masked-token accuracy at mask ratio
0.5 on the folder's heldout_sample.safetensors.

    python tools/eval_demo.py [FOLDER]          # default: the bundled fastdiff/assets/demo
    python tools/eval_demo.py /work/demo_train/run/export --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import train_demo  # noqa: E402  (parses, masked_accuracy, load_trained: the card's definitions)

# (name, GenerationConfig overrides); "1/step" is LLaDA's schedule with steps = gen_length
SETTINGS = [("1/step", dict(cache="none")),
            ("t0.9 none", dict(threshold=0.9, cache="none")),
            ("t0.9 dual", dict(threshold=0.9, cache="dual")),
            ("t0.7 none", dict(threshold=0.7, cache="none")),
            ("t0.7 dual", dict(threshold=0.7, cache="dual"))]


def figure_key(name: str) -> str:
    """A setting's key in the held-out sample's metadata ("t0.9 dual" -> "t09_dual")."""
    return name.replace(" ", "_").replace("/", "_per_").replace(".", "")


def decode_figures(folder: Path, gen_length: int, block_length: int,
                   only: tuple[str, ...] | None = None) -> dict:
    """{setting: {tokens_per_forward, parse, n, seconds, completions}} on prompts.txt (all
    SETTINGS, or those named in only)."""
    from fastdiff import Engine, GenerationConfig
    prompts = train_demo.read_prompts(folder)
    eng = Engine.from_pretrained(folder, device="cpu", dtype="float32",
                                 max_batch_size=len(prompts))
    out = {}
    for name, kw in SETTINGS:
        if only is not None and name not in only:
            continue
        gen = GenerationConfig(gen_length=gen_length, block_length=block_length,
                               steps=gen_length, temperature=0.0, **kw)
        t0 = time.perf_counter()
        comps = eng.generate(prompts, gen)
        secs = time.perf_counter() - t0
        nfe = [c.nfe for c in comps]
        ok = [train_demo.parses(p, c.text, c.finish_reason == "eos")
              for p, c in zip(prompts, comps)]
        out[name] = {"tokens_per_forward": gen_length * len(nfe) / sum(nfe), "parse": sum(ok),
                     "n": len(prompts), "seconds": secs,
                     "completions": [[p, c.text, g] for p, c, g in zip(prompts, comps, ok)]}
    return out


def heldout_accuracy(folder: Path) -> float:
    net, cfg, _ = train_demo.load_trained(folder)
    s = load_file(str(folder / "heldout_sample.safetensors"))
    return train_demo.masked_accuracy(net, s["input_ids"], s["mask"].bool(), cfg["mask_token_id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default=str(train_demo.OUT))
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures (and completions) here")
    ap.add_argument("--show", default=None, help="print the completions of this setting")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder = Path(a.folder)
    acc = heldout_accuracy(folder)
    figs = decode_figures(folder, a.gen_length, a.block_length)
    print(f"{folder}: held-out masked-token accuracy (mask ratio 0.5, fp32) {acc:.4f}")
    for name, f in figs.items():
        print(f"  {name:10s} tokens/forward {f['tokens_per_forward']:5.2f}  parse "
              f"{f['parse']:2d}/{f['n']}  ({f['seconds']:.1f} s)")
    t9, one = figs["t0.9 dual"], figs["1/step"]
    ok = (t9["tokens_per_forward"] >= 2.0 and t9["parse"] >= max(one["parse"], 8)
          and acc >= 0.35)
    print(f"issue 18 acceptance: {'MET' if ok else 'not met'} (t0.9 dual >= 2.0 tokens/forward: "
          f"{t9['tokens_per_forward']:.2f}; parse >= max(1/step, 8): {t9['parse']} vs "
          f"{max(one['parse'], 8)}; accuracy >= 0.35: {acc:.4f})")
    if a.show:
        for p, text, g in figs[a.show]["completions"]:
            print(f"--- {'parses' if g else 'no parse'}\n{p}{text}")
    if a.json:
        Path(a.json).write_text(json.dumps({"folder": str(folder), "accuracy": acc, **figs},
                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
