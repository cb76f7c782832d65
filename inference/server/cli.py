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
from .app import MAX_BODY_BYTES, create_app, default_models
from .http import http_protocol

__all__ = ["SHUTDOWN_GRACE", "main"]

#: Seconds open connections (event streams) get to finish when the server is told to stop.
SHUTDOWN_GRACE = 3


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """Exit as soon as the parent process dies (it may be killed without a chance to stop us)."""
    import os

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description="The reference server for the studio's wire protocol.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", metavar="ID[=PATH_OR_HUB_ID]",
                        help="serve this model under ID (repeatable); default: the app's default models")
    parser.add_argument("--concurrency", type=int, default=1, help="requests one model runs at once (default 1)")
    parser.add_argument("--queue", type=int, default=8, help="requests that may wait per model before 503 (default 8)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20, help="request body limit in MB")
    parser.add_argument("--no-preload", action="store_true", help="load models on first request, not at startup")
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
    app = create_app(_parse_models(args.model), settings=settings, concurrency=args.concurrency,
                     queue_size=args.queue, max_body_bytes=int(args.max_body_mb * 2**20),
                     preload=not args.no_preload)
    import uvicorn

    # access_log off: our own line per request says the same without risking anything sensitive. Open event
    # streams get SHUTDOWN_GRACE seconds when the server is told to stop, then they are cut.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=http_protocol(), timeout_graceful_shutdown=SHUTDOWN_GRACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
