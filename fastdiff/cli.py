"""Command line: `fastdiff generate | demo | bench | write-random`."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

DEMO_PROMPT = "def fibonacci(n):"
DEMO_THRESHOLD = 0.9  # `fastdiff demo` decodes in parallel (confidence threshold, dual cache)


def _bundled_model() -> Optional[Path]:
    try:
        from .assets import demo_model_path
        return demo_model_path()
    except (ImportError, FileNotFoundError):
        return None


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=DEMO_PROMPT, help="prompt text (default: %(default)r)")
    p.add_argument("--chat", action="store_true", help="apply the checkpoint's chat template")
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen-length)")
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--logits-eos-inf", action="store_true")
    p.add_argument("--confidence-eos-eot-inf", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"])
    p.add_argument("--threshold", type=float, default=None, help="parallel decoding (e.g. 0.9)")
    p.add_argument("--factor", type=float, default=None, help="factor rule (e.g. 1.0)")
    p.add_argument("--stop-at-eos", action="store_true", help="per-row early stop")
    p.add_argument("--graphs", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])


def _run_generate(model: Path, args: argparse.Namespace, label: str = "") -> int:
    from . import Engine, GenerationConfig
    t0 = time.perf_counter()
    graphs = {"auto": "auto", "on": True, "off": False}[args.graphs]
    engine = Engine.from_pretrained(model, device=args.device, dtype=args.dtype,
                                    backend=args.backend, graphs=graphs)
    load_s = time.perf_counter() - t0
    gen = GenerationConfig(gen_length=args.gen_length, steps=args.steps or args.gen_length,
                           block_length=args.block_length, temperature=args.temperature,
                           cfg_scale=args.cfg_scale, remasking=args.remasking,
                           logits_eos_inf=args.logits_eos_inf,
                           confidence_eos_eot_inf=args.confidence_eos_eot_inf, seed=args.seed,
                           cache=args.cache, threshold=args.threshold, factor=args.factor,
                           stop_at_eos=args.stop_at_eos)
    t0 = time.perf_counter()
    out = engine.generate(args.prompt, gen, chat=args.chat)[0]
    secs = time.perf_counter() - t0
    print(args.prompt + (out.text if out.text is not None else str(out.token_ids)))
    print(f"[fastdiff{label}] {len(out.full_ids)} tokens ({len(out.token_ids)} before EOS, "
          f"finish_reason={out.finish_reason}), NFE {out.nfe}, {secs:.2f} s, "
          f"{len(out.full_ids) / secs:.1f} tokens/s, "
          f"{len(out.full_ids) / max(out.nfe, 1):.2f} tokens/forward (load {load_s:.2f} s, "
          f"{engine.backend} backend on {engine.model.device}, {engine.model.dtype})",
          file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else _bundled_model()
    if model is None:
        raise SystemExit("error: no --model given and this build has no bundled demo model; "
                         "pass --model DIR (a local LLaDA checkpoint folder)")
    return _run_generate(model, args)


def cmd_demo(args: argparse.Namespace) -> int:
    """The bundled model, decoding in parallel by default: threshold 0.9 with the dual cache
    unless --threshold, --factor or --steps (the fixed schedule) is given."""
    if args.threshold is None and args.factor is None and args.steps is None:
        args.threshold = DEMO_THRESHOLD
    rule = (f"threshold {args.threshold}" if args.threshold is not None else
            f"factor {args.factor}" if args.factor is not None else f"{args.steps} steps")
    model = _bundled_model()
    label = f", {rule}, {args.cache} cache"
    if model is None:
        from . import ModelConfig
        from .models import save_random_checkpoint
        model = Path(tempfile.gettempdir()) / "fastdiff-demo-random-small"
        if not (model / "config.json").is_file():
            save_random_checkpoint(model, ModelConfig.preset("small"), seed=0)
        print(f"note: no bundled demo model in this build; using a RANDOM-WEIGHT 'small' "
              f"checkpoint written to {model} (the output is gibberish by design)", file=sys.stderr)
        label += ", random weights"
    return _run_generate(model, args, label)


def cmd_write_random(args: argparse.Namespace) -> int:
    from . import ModelConfig
    from .models import save_random_checkpoint
    path = save_random_checkpoint(args.path, ModelConfig.preset(args.preset), seed=args.seed,
                                  shards=args.shards)
    print(f"wrote a random-weight {args.preset!r} checkpoint to {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.count_kernels:
        from .bench.kernel_count_report import run_cli
        return run_cli(args)
    import torch

    from .bench.report import write_results
    from .bench.runner import default_plan, run_plan
    from .engine import resolve_device, resolve_dtype
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    plan = default_plan(args.preset, device, quick=args.quick)
    if args.systems:
        plan.systems = tuple(args.systems.split(","))
    if args.caches:
        plan.caches = tuple(args.caches.split(","))
    if args.repeats:
        plan.repeats = args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else (
        Path("benches/results") if Path("benches").is_dir() else Path("fastdiff-bench-results"))
    rows = run_plan(plan, device=device, dtype=dtype, seed=args.seed)
    files = write_results(rows, out, stem=args.stem)
    print(f"[bench] {len(rows)} rows -> " + ", ".join(str(p) for p in files.values()))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate from a local checkpoint")
    g.add_argument("--model", default=None, help="checkpoint folder (default: bundled demo)")
    _add_generation_flags(g)
    g.set_defaults(func=cmd_generate)
    d = sub.add_parser("demo", help="generate with the bundled demo model on this machine")
    _add_generation_flags(d)
    d.set_defaults(func=cmd_demo, cache="dual")
    w = sub.add_parser("write-random", help="write a random-weight checkpoint (tests, benches)")
    w.add_argument("path")
    w.add_argument("--preset", default="tiny", choices=["tiny", "small", "llada-8b"])
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--shards", type=int, default=2)
    w.set_defaults(func=cmd_write_random)
    b = sub.add_parser("bench", help="end-to-end benchmarks vs the reference loop and AR")
    b.add_argument("--preset", default="tiny", choices=["tiny", "small", "llada-8b"])
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="auto")
    b.add_argument("--out", default=None, help="output folder (default benches/results/)")
    b.add_argument("--stem", default="results", help="file name stem of the result files")
    b.add_argument("--quick", action="store_true", help="a reduced grid (GPU presets)")
    b.add_argument("--systems", default=None,
                   help="comma list of fastdiff,reference_loop,ar_static_cache,hf_llama")
    b.add_argument("--caches", default=None, help="comma list of none,prefix,dual")
    b.add_argument("--repeats", type=int, default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--count-kernels", action="store_true",
                   help="count kernel launches per denoising step (per layer / outside the "
                        "layers) on the CPU instead of timing; --dtype auto means bfloat16")
    b.add_argument("--backend", default="triton", choices=["torch", "triton"],
                   help="ops backend for --count-kernels (default: %(default)s)")
    b.add_argument("--count-steps", type=int, default=2,
                   help="fixed-schedule steps of the counted block (default: %(default)s)")
    b.add_argument("--full-width", action="store_true",
                   help="--count-kernels at the preset's full widths (default for llada-8b: a "
                        "shape-faithful narrow model; full widths take many minutes on a CPU)")
    b.add_argument("--json", default=None, help="--count-kernels: also write the report here")
    b.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
