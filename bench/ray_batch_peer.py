"""The peer of our batcher in ``bench/serving.py``: Ray Serve's own ``@serve.batch`` on the same models and code.

A minimal deployment (Ray Serve's plain ``__call__`` entry point, as its ``@serve.batch`` examples do) that reads
the studio protocol's multipart request and hands the validated request to ``LocalBackend.run_batch`` through
``@serve.batch`` (one batch method per task), with the batch size and wait of our server. Run by Ray's venv:

    python bench/ray_batch_peer.py --port 8123 --model det=DIR:object-detection --model tg=DIR:text-generation
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))

import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402


def _batch_settings() -> tuple[int, float]:
    return int(os.environ.get("PEER_MAX_BATCH_SIZE", "8")), float(os.environ.get("PEER_MAX_WAIT_MS", "5")) / 1000


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 1})
class BatchPeer:
    def __init__(self, models: dict[str, tuple[str, str]]) -> None:
        from inference.backends.local import LocalBackend
        from inference.engine import Engine
        from inference.tasks import get_task

        engine = Engine()
        self.backends = {model_id: LocalBackend(engine, source, get_task(task))
                         for model_id, (source, task) in models.items()}
        for backend in self.backends.values():
            backend.load()
        size, wait = _batch_settings()
        self.detect.set_max_batch_size(size)
        self.detect.set_batch_wait_timeout_s(wait)
        self.generate.set_max_batch_size(size)
        self.generate.set_batch_wait_timeout_s(wait)

    async def __call__(self, request: Request) -> JSONResponse:
        """Ray Serve's plain HTTP entry point: ``POST /inference`` (the protocol's request), ``GET /health``."""
        from inference.request import make_request

        if request.method == "GET":
            return JSONResponse({"status": "ok", "loaded": len(self.backends)})

        form = await request.form()
        spec = json.loads(form["spec"])
        backend = self.backends[spec["model_id"]]
        payload = spec.get("payload", {})
        image = await form["image"].read() if "image" in form else None
        validated = make_request(backend.spec, image if image is not None else payload.get("inputs"), None,
                                 payload.get("parameters") or {}, max_pixels=40_000_000)
        batch = self.detect if backend.spec.name == "object-detection" else self.generate
        raw = await batch((backend, validated))
        return JSONResponse(backend.spec.codec.to_wire(raw.output, raw.details))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def detect(self, items: list) -> list:
        return await self._run(items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def generate(self, items: list) -> list:
        return await self._run(items)

    @staticmethod
    async def _run(items: list) -> list:
        backend = items[0][0]  # one model per task in the benchmark
        outcomes = await asyncio.to_thread(backend.run_batch, [request for _, request in items])
        return list(outcomes)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="ID=SOURCE:TASK")
    args = parser.parse_args()
    models = {}
    for value in args.model:
        model_id, _, rest = value.partition("=")
        source, _, task = rest.rpartition(":")
        models[model_id] = (source, task)
    ray.init(include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(BatchPeer.bind(models), name="batch-peer", route_prefix="/", blocking=False)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
