"""``python -m inference.server``: the reference server's command line.

    python -m inference.server --host 127.0.0.1 --port 8000 --model hustvl/yolos-tiny \\
        --model my-llm=/models/llm
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time

from ..errors import InferenceError
from ..settings import Settings
from .app import DEFAULT_MAX_WAIT_MS, MAX_BODY_BYTES, create_app, default_models
from .http import http_protocol

__all__ = ["SHUTDOWN_GRACE", "main"]

#: Seconds open connections (event streams) get to finish when the server is told to stop.
SHUTDOWN_GRACE = 3
#: The command line batches by default (``create_app`` does not: a library call asks for it).
DEFAULT_MAX_BATCH_SIZE = 8
#: A batch's first request never waits longer than this for others, whatever the flag says.
MAX_WAIT_LIMIT_MS = 1000


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _count(least: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"{number} is less than {least}")
        return number

    return parse


def _milliseconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of milliseconds") from None
    if not 0 <= number <= MAX_WAIT_LIMIT_MS:
        raise argparse.ArgumentTypeError(f"{value} ms: use 0 to {MAX_WAIT_LIMIT_MS} ms")
    return number


def _parse_models(values: list[str] | None) -> dict[str, str]:
    if not values:
        return default_models()
    models = {}
    for value in values:
        model_id, _, source = value.partition("=")
        if not model_id.strip():
            raise SystemExit(f"--model {value!r}: use ID or ID=PATH_OR_HUB_ID")
        models[model_id.strip()] = (source or model_id).strip()
    return models


def _exit_with_parent() -> None:
    """Stop as soon as the parent process dies (it may be killed without a chance to stop us): SIGTERM to ourselves,
    so that uvicorn (or Ray Serve, with its processes) shuts down as it would when told to; exit anyway after that."""
    import os
    import signal

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(SHUTDOWN_GRACE + 15)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description="The reference server for the studio's wire protocol.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", metavar="ID[=PATH_OR_HUB_ID]",
                        help="serve this model under ID (repeatable); default: the app's default models")
    parser.add_argument("--concurrency", type=_count(1), default=1,
                        help="requests (or batches) one model runs at once (default 1)")
    parser.add_argument("--queue", type=_count(0), default=8,
                        help="requests that may wait per model, beyond those running, before 503 (default 8)")
    parser.add_argument("--max-batch-size", type=_count(1), default=DEFAULT_MAX_BATCH_SIZE,
                        help="whole answers to one model that wait together run as one batch of up to this many; "
                             f"1 turns batching off; streams never wait for a batch (default {DEFAULT_MAX_BATCH_SIZE})")
    parser.add_argument("--max-wait-ms", type=_milliseconds, default=DEFAULT_MAX_WAIT_MS,
                        help="how long a batch's first request waits for others to join; 0 batches what queued "
                             "while the model was busy, adding no latency (default %(default)g)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20, help="request body limit in MB")
    parser.add_argument("--no-preload", action="store_true", help="load models on first request, not at startup")
    ray = parser.add_argument_group("Ray Serve", "serve with Ray Serve replicas (pip install -r requirements-ray.txt)")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve: each replica runs this server")
    ray.add_argument("--ray-address", metavar="ADDRESS",
                     help="join this Ray cluster (ray start --head prints it; 'auto' finds a local one); "
                          "default: start a one-machine cluster")
    ray.add_argument("--replicas", type=_count(1), help="replicas, without autoscaling (default 1)")
    ray.add_argument("--min-replicas", type=_count(0), help="autoscale from this many replicas")
    ray.add_argument("--max-replicas", type=_count(1), help="autoscale up to this many replicas")
    ray.add_argument("--target-ongoing-requests", type=float, metavar="N",
                     help="autoscale towards N requests in flight per replica")
    ray.add_argument("--replica-cpus", type=float, help="CPUs each replica reserves (default 1)")
    ray.add_argument("--replica-gpus", type=float, help="GPUs each replica reserves (default 0)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="exit when the process that started this one is gone (used by the app)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except InferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.server_tokens and not _is_loopback(args.host):
        print(f"error: refusing to serve on {args.host} without authentication: set INFERENCE_SERVER_TOKEN "
              "(one or more comma-separated tokens), or bind to 127.0.0.1", file=sys.stderr)
        return 2
    if args.exit_with_parent:
        _exit_with_parent()
    app_options = {"concurrency": args.concurrency, "queue_size": args.queue, "max_batch_size": args.max_batch_size,
                   "max_wait_ms": args.max_wait_ms, "max_body_bytes": int(args.max_body_mb * 2**20),
                   "preload": not args.no_preload}
    if args.ray:
        return _serve_on_ray(args, settings, app_options)
    ray_only = ("ray_address", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus",
                "replica_gpus")
    if given := [f"--{name.replace('_', '-')}" for name in ray_only if getattr(args, name) is not None]:
        parser.error(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --ray")
    app = create_app(_parse_models(args.model), settings=settings, **app_options)
    import uvicorn

    # access_log off: our own line per request says the same without risking anything sensitive. Open event
    # streams get SHUTDOWN_GRACE seconds when the server is told to stop, then they are cut.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=http_protocol(), timeout_graceful_shutdown=SHUTDOWN_GRACE)
    return 0


def _serve_on_ray(args: argparse.Namespace, settings: Settings, app_options: dict) -> int:
    try:
        from . import ray_serve
    except ImportError as exc:
        print(f"error: --ray needs Ray Serve ({exc}): pip install -r requirements-ray.txt", file=sys.stderr)
        return 2
    serve_options = ray_serve.ServeOptions(
        replicas=args.replicas or 1, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        replica_cpus=1.0 if args.replica_cpus is None else args.replica_cpus,
        replica_gpus=0.0 if args.replica_gpus is None else args.replica_gpus)
    if serve_options.autoscaling and args.replicas is not None:
        print("error: use --replicas or the autoscaling options (--min-replicas, --max-replicas, "
              "--target-ongoing-requests), not both", file=sys.stderr)
        return 2
    return ray_serve.run(_parse_models(args.model), host=args.host, port=args.port, address=args.ray_address,
                         settings=settings, serve_options=serve_options, **app_options)


if __name__ == "__main__":
    sys.exit(main())
