"""The reference server for the wire protocol (FastAPI + uvicorn), running models on the local engine.

    python -m inference.server --host 127.0.0.1 --port 8000 --model hustvl/yolos-tiny

- ``app``: the FastAPI app, its routes, authentication and error handlers (``create_app``).
- ``pipeline``: decode → predict → encode, on the engine and the backends.
- ``gate``: admission per model (concurrency, queue, 503 ``busy``).
- ``http``: error answers, body and header bounds, the request log, event streams.
- ``cli``: the command line (``main``).
"""

from .app import create_app, default_models
from .cli import SHUTDOWN_GRACE, main
from .http import http_protocol

__all__ = ["SHUTDOWN_GRACE", "create_app", "default_models", "http_protocol", "main"]
