"""`fastdiff serve`: load one checkpoint into an AsyncEngine and serve build_app with uvicorn."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local checkpoint folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default loopback: %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("FASTDIFF_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1 route (default: "
                        "$FASTDIFF_API_KEY, which keeps the key out of the process list)")
    p.add_argument("--served-model-name", default=None,
                   help="model id clients send (default: the --model folder's name)")
    p.add_argument("--max-batch-size", type=int, default=8, help="rows per denoising run")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first queued request waits for compatible ones")
    p.add_argument("--max-queue", type=int, default=256,
                   help="queued requests before the server answers 429")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--graphs", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--log-level", default="info")


def model_id_for(args: argparse.Namespace) -> str:
    return args.served_model_name or Path(args.model).resolve().name


def run_server(args: argparse.Namespace) -> int:
    """Load, then serve until interrupted. ValueError / FileNotFoundError on bad settings."""
    try:
        import uvicorn

        from .app import build_app
    except ImportError as e:
        raise SystemExit(f"error: `fastdiff serve` needs the server extra ({e.name} is "
                         "missing): pip install 'fastdiff-llm[server]'") from None
    from ..serving import AsyncEngine
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port={args.port} is invalid: expected 0..65535")
    graphs = {"auto": "auto", "on": True, "off": False}[args.graphs]
    ae = AsyncEngine.from_pretrained(args.model, max_batch_size=args.max_batch_size,
                                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                                     device=args.device, dtype=args.dtype,
                                     backend=args.backend, graphs=graphs)
    model_id = model_id_for(args)
    app = build_app(ae, model_id=model_id, api_key=args.api_key,
                    max_body_bytes=args.max_body_bytes)
    e = ae.engine
    print(f"[fastdiff serve] {model_id} ({e.config.family}, {e.backend} backend on "
          f"{e.model.device}) at http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if args.api_key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
