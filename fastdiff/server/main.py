"""`fastdiff serve`: load one checkpoint into an AsyncEngine and serve build_app with uvicorn;
with --replicas N / --ray, the same app on Ray Serve in front of N engine replicas
(fastdiff.server.ray_app)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional


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
    ray = p.add_argument_group("scale out on Ray Serve (needs the ray extra)")
    ray.add_argument("--replicas", type=int, default=None,
                     help="engine replicas behind one endpoint (one GPU each on CUDA); implies "
                          "--ray")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="serve on Ray Serve: a local Ray instance (bare --ray, or $RAY_ADDRESS "
                          "when set) or the cluster at ADDRESS ('auto': the one `ray start` "
                          "began on this node)")
    ray.add_argument("--torch-threads", type=int, default=None,
                     help="intra-op threads per engine replica (default: 1 on CPU)")


def model_id_for(args: argparse.Namespace) -> str:
    return args.served_model_name or Path(args.model).resolve().name


def run_ray_server(args: argparse.Namespace) -> int:
    address = None if args.ray in (None, "local") else args.ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    if address is None and not os.environ.get("RAY_ADDRESS"):  # a local instance: one node,
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's ports on
        # 127.0.0.1 (read when ray is imported)
    try:
        from .ray_app import RayServeOptions
    except ImportError as e:
        raise SystemExit(f"error: `fastdiff serve --replicas/--ray` needs the ray extra "
                         f"({e.name} is missing): pip install 'fastdiff-llm[ray]'") from None
    opts = RayServeOptions(
        model=str(Path(args.model).resolve()), served_model_name=model_id_for(args),
        replicas=args.replicas or 1, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_queued_requests=args.max_queue,
        device=args.device, dtype=args.dtype, backend=args.backend, graphs=args.graphs,
        torch_threads=args.torch_threads, api_key=args.api_key or None,
        max_body_bytes=args.max_body_bytes)
    serve_on_ray(opts, host=args.host, port=args.port, address=address,
                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_on_ray(opts, *, host: str, port: int, address: Optional[str] = None,
                 log=print) -> None:
    """Start a local Ray instance (address None and no RAY_ADDRESS) or join a cluster (address
    "auto" / "HOST:PORT"), deploy ray_app.application(opts) and serve it on host:port until
    SIGINT / SIGTERM; then delete the application (and stop a local instance)."""
    import ray
    from ray import serve

    from .ray_app import APP_NAME, application
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(address=address, namespace="serve", include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        opts = opts.resolved()
        serve.run(application(opts), name=APP_NAME, route_prefix="/")
        n = opts.replicas if opts.max_replicas is None else \
            f"{opts.min_replicas}..{opts.max_replicas}"
        each = "1 GPU" if opts.device == "cuda" else f"{opts.torch_threads} CPU"
        log(f"[fastdiff serve] {opts.model_id} on Ray Serve: {n} engine replica(s), {each} "
            f"each, at http://{host}:{port}/v1{' (API key required)' if opts.api_key else ''}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        finally:
            ray.shutdown()


def run_server(args: argparse.Namespace) -> int:
    """Load, then serve until interrupted. ValueError / FileNotFoundError on bad settings."""
    if args.replicas is not None or args.ray is not None:
        return run_ray_server(args)
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
