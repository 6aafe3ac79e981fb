"""Command line: `fastdiff generate | demo | serve | bench | bench-serve | write-random`."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .config import ALGS, CONFIDENCES, REMASKING_SCORES, SDAR_REMASKING
from .live import PLACEHOLDER

DEMO_PROMPT = "def fibonacci(n):"
PRESETS = ["tiny", "small", "llada-8b", "dream-tiny", "dream-7b", "sdar-tiny", "sdar-4b",
           "sdar-8b"]  # ModelConfig.preset names
DEMO_THRESHOLD = 0.9  # `fastdiff demo` decodes in parallel (confidence threshold, dual cache)
DEMO_BLOCK = 32
# GenerationConfig field -> the flag that sets it
GEN_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "gen_length", "steps", "block_length", "temperature", "cfg_scale", "remasking", "alg",
    "alg_temp", "top_p", "top_k", "logits_eos_inf", "confidence_eos_eot_inf", "seed", "cache",
    "threshold", "factor", "stop_at_eos", "denoising_steps", "confidence")}


def _bundled_model() -> Optional[Path]:
    try:
        from .assets import demo_model_path
        return demo_model_path()
    except (ImportError, FileNotFoundError):
        return None


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    """Generation settings default to None = not given: only the flags given reach
    GenerationConfig, and the model family fills in the rest (engine.resolve_config)."""
    p.add_argument("--prompt", default=DEMO_PROMPT, help="prompt text (default: %(default)r)")
    p.add_argument("--chat", action="store_true", help="apply the checkpoint's chat template")
    p.add_argument("--gen-length", type=int, default=64, help="default: %(default)s")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen-length)")
    p.add_argument("--block-length", type=int, default=None,
                   help="default: the model family's (LLaDA 128 when it divides gen-length, "
                        "else gen-length; Dream gen-length)")
    p.add_argument("--temperature", type=float, default=None, help="default 0 (greedy)")
    p.add_argument("--cfg-scale", type=float, default=None, help="LLaDA: guidance (default 0)")
    p.add_argument("--remasking", default=None,
                   choices=list(REMASKING_SCORES) + list(SDAR_REMASKING),
                   help="LLaDA's score (default low_confidence); SDAR's rule (default "
                        "low_confidence_static)")
    p.add_argument("--alg", default=None, choices=list(ALGS),
                   help="Dream's score (default entropy); LLaDA takes all but origin")
    p.add_argument("--alg-temp", type=float, default=None, help="Dream (default 0)")
    p.add_argument("--top-p", type=float, default=None, help="Dream, SDAR")
    p.add_argument("--top-k", type=int, default=None, help="Dream, SDAR")
    p.add_argument("--denoising-steps", type=int, default=None,
                   help="SDAR: steps per block (default block-length)")
    p.add_argument("--confidence", default=None, choices=list(CONFIDENCES),
                   help="SDAR: eval (default: the evaluation sampler's) or filtered")
    p.add_argument("--logits-eos-inf", action="store_true", default=None)
    p.add_argument("--confidence-eos-eot-inf", action="store_true", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache", default=None, choices=["none", "prefix", "dual"],
                   help="KV cache (default none)")
    p.add_argument("--threshold", type=float, default=None, help="parallel decoding (e.g. 0.9)")
    p.add_argument("--factor", type=float, default=None, help="factor rule (e.g. 1.0)")
    p.add_argument("--stop-at-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="per-row early stop (default off)")
    p.add_argument("--show-steps", action="store_true",
                   help="draw the denoising live: masked positions as " + PLACEHOLDER +
                        ", filled in as they are committed")
    p.add_argument("--graphs", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])


def _usage_error(args: argparse.Namespace, message: str) -> int:
    """argparse's own error format and status (2), returned instead of raised."""
    parser = args.parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def _generation_config(model: Path, args: argparse.Namespace):
    """The GenerationConfig of the flags given (no others), resolved for the checkpoint's
    family and validated by the same code as the Python API; a ValueError naming the flag."""
    from . import GenerationConfig
    from .models.loader import read_config
    given = {name: getattr(args, name) for name in GEN_FLAGS if getattr(args, name) is not None}
    try:
        gen = GenerationConfig(**given)
        if not (model / "config.json").is_file():
            return gen
        cfg = read_config(model)
        return gen.resolve(cfg.family, block_size=cfg.block_size)
    except ValueError as e:
        name = str(e).split("=", 1)[0]
        raise ValueError(f"argument {GEN_FLAGS[name]}: {e}" if name in GEN_FLAGS else str(e))


def _generate_live(engine, gen, args: argparse.Namespace):
    """One generation drawn step by step (--show-steps) -> (Completion, seconds without the
    drawing)."""
    from .live import LiveView
    ids = engine.encode(args.prompt, chat=args.chat)
    prompt = args.prompt if not args.chat else ""
    view = LiveView(engine, prompt)
    t0 = time.perf_counter()
    try:
        out = engine.generate_ids([ids], gen, on_step=view, stream_interval="step")[0]
    finally:
        view.finish()
    return out, time.perf_counter() - t0 - view.render_s


def _run_generate(model: Path, args: argparse.Namespace, label: str = "") -> int:
    from . import Engine
    try:
        gen = _generation_config(model, args)
    except ValueError as e:
        return _usage_error(args, str(e))
    t0 = time.perf_counter()
    graphs = {"auto": "auto", "on": True, "off": False}[args.graphs]
    engine = Engine.from_pretrained(model, device=args.device, dtype=args.dtype,
                                    backend=args.backend, graphs=graphs)
    load_s = time.perf_counter() - t0
    if args.show_steps:
        out, secs = _generate_live(engine, gen, args)
        label += ", eager loop with --show-steps, drawing time excluded"
    else:
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
    """The bundled model, decoding in parallel by default: threshold 0.9 (unless --threshold,
    --factor or --steps, the fixed schedule, is given), dual cache, blocks of 32."""
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


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .bench.serve_bench import run_cli
    return run_cli(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server.main import run_server
    return run_server(args)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate from a local checkpoint")
    g.add_argument("--model", default=None, help="checkpoint folder (default: bundled demo)")
    _add_generation_flags(g)
    g.set_defaults(func=cmd_generate, parser=g)
    d = sub.add_parser("demo", help="generate with the bundled demo model on this machine")
    _add_generation_flags(d)
    d.set_defaults(func=cmd_demo, parser=d, cache="dual", block_length=DEMO_BLOCK)
    w = sub.add_parser("write-random", help="write a random-weight checkpoint (tests, benches)")
    w.add_argument("path")
    w.add_argument("--preset", default="tiny", choices=PRESETS)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--shards", type=int, default=2)
    w.set_defaults(func=cmd_write_random)
    b = sub.add_parser("bench", help="end-to-end benchmarks vs the reference loop and AR")
    b.add_argument("--preset", default="tiny", choices=PRESETS)
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
    bs = sub.add_parser("bench-serve", help="serving benchmark: open-loop Poisson load against "
                        "the server (HTTP) or the AsyncEngine (--in-process)")
    from .bench.serve_bench import add_arguments as add_bench_serve_flags
    add_bench_serve_flags(bs)
    bs.set_defaults(func=cmd_bench_serve)
    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the server extra)")
    from .server.main import add_serve_flags
    add_serve_flags(sv)
    sv.set_defaults(func=cmd_serve)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
