"""The reference server on Ray Serve: the same FastAPI app (protocol, auth, limits, batching, metrics) in every
replica, each with its own engine and batcher, behind Ray Serve's proxy.

    python -m inference.server --ray --replicas 2 --model det=hustvl/yolos-tiny
    python -m inference.server --ray --min-replicas 1 --max-replicas 4 --target-ongoing-requests 8
    serve run inference.server.ray_serve:app_builder models=det=hustvl/yolos-tiny replicas=2

Ray is imported here only: the plain server (``python -m inference.server`` without ``--ray``) never imports this
module, and ``requirements-ray.txt`` installs it. Each answer says which replica made it (``X-Inference-Replica``).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from ray import serve

from ..settings import Settings
from .app import create_app
from .http import error_response

__all__ = ["REPLICA_HEADER", "InferenceDeployment", "ProxyErrors", "ServeOptions", "app_builder", "build",
           "proxy_middlewares", "run"]

log = logging.getLogger("inference.server")

#: The response header naming the Ray Serve replica that answered.
REPLICA_HEADER = "X-Inference-Replica"
#: The application's name in Ray Serve (``serve status``, the dashboard).
APP_NAME = "inference-studio"
#: How Ray Serve's proxy learns its middlewares (``proxy_middlewares``).
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "inference.server.ray_serve:proxy_middlewares"
#: Where ``import inference`` comes from, for replicas started on this machine.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class ReplicaHeader:
    """Pure ASGI middleware: every HTTP answer names the replica that made it."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.replica = app, replica.encode("ascii", errors="replace")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named_send(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REPLICA_HEADER.lower().encode(), self.replica)]
            await send(message)

        await self.app(scope, receive, named_send)


class ProxyErrors:
    """Pure ASGI middleware for Ray Serve's proxy: its own failures become the protocol's JSON errors.

    The proxy answers a plain-text 503 when its queue is full (backpressure) and a plain-text 404 before the
    application is deployed, and gives up without an answer (uvicorn then says a plain 500) when the replica
    running a request dies; our replicas answer JSON. Here these are ``busy`` and ``model_loading`` (503) and
    ``upstream_error`` (502), all with ``Retry-After``, all sent again by the studio's client: inference changes
    nothing on a server.
    """

    #: The proxy's own plain-text answers, and what they mean here. Our app answers every path (JSON 404s
    #: included), so the proxy's 404 means the application is not deployed yet: the server is starting.
    REWRITES = {
        404: ("model_loading", "the server is starting (its replicas are not up yet): retry shortly"),
        503: ("busy", "every replica is busy and the queue in front of them is full: retry shortly"),
    }

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        replaced: tuple[str, str] | None = None

        async def checked_send(message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] in self.REWRITES and not content_type.startswith(b"application/json"):
                    replaced = self.REWRITES[message["status"]]
                    return
                started = True
            elif replaced:
                if not message.get("more_body", False):
                    await error_response(*replaced)(scope, receive, send)
                return
            await send(message)

        await self.app(scope, receive, checked_send)
        if not started and not replaced:  # the proxy gave up on the request without an answer (uvicorn's plain 500)
            response = error_response("upstream_error", "the replica running this request stopped before it "
                                                        "answered: send it again", headers={"Retry-After": "1"})
            await response(scope, receive, send)


def proxy_middlewares() -> list:
    """Ray Serve's proxy middlewares (``ProxyErrors``). ``serve run`` and KubeRay take them from
    ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=inference.server.ray_serve:proxy_middlewares``."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrors)]


@serve.ingress()
class InferenceDeployment:
    """One replica: ``create_app`` with this replica's own engine and batchers, built when the replica starts."""

    def __init__(self, models: dict[str, str], settings: Settings, app_options: dict[str, Any]) -> None:
        self.models, self.settings, self.app_options = models, settings, app_options

    def __serve_build_asgi_app__(self):
        app = create_app(self.models, settings=self.settings, **self.app_options)
        app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app


class ServeOptions:
    """How many replicas, and what each may take: fixed ``replicas``, or autoscaling between ``min_replicas`` and
    ``max_replicas`` towards ``target_ongoing_requests`` per replica."""

    def __init__(self, *, replicas: int = 1, min_replicas: int | None = None, max_replicas: int | None = None,
                 target_ongoing_requests: float | None = None, replica_cpus: float = 1.0, replica_gpus: float = 0.0,
                 max_queued_requests: int = 64) -> None:
        self.replicas, self.min_replicas, self.max_replicas = replicas, min_replicas, max_replicas
        self.target_ongoing_requests = target_ongoing_requests
        self.replica_cpus, self.replica_gpus, self.max_queued_requests = replica_cpus, replica_gpus, max_queued_requests

    @property
    def autoscaling(self) -> dict[str, Any] | None:
        if self.min_replicas is None and self.max_replicas is None and self.target_ongoing_requests is None:
            return None
        least = self.min_replicas if self.min_replicas is not None else 1
        config: dict[str, Any] = {"min_replicas": least, "max_replicas": self.max_replicas or max(least, 1)}
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        return config


def build(models: dict[str, str], *, settings: Settings | None = None, serve_options: ServeOptions | None = None,
          **app_options: Any):
    """The Ray Serve application: ``InferenceDeployment`` with ``models`` and ``create_app``'s ``app_options``.

    Each replica admits what its gates hold (``concurrency × max_batch_size + queue_size`` per model); Ray's router
    sends a replica no more than that at once and keeps at most ``max_queued_requests`` more waiting, answering the
    rest 503, so that no number of clients grows memory without bound.
    """
    options = serve_options or ServeOptions()
    settings = settings or Settings()
    places = (app_options.get("concurrency", 1) * app_options.get("max_batch_size", 1)
              + app_options.get("queue_size", 8))
    scaling: dict[str, Any] = ({"autoscaling_config": options.autoscaling} if options.autoscaling
                               else {"num_replicas": options.replicas})
    deployment = serve.deployment(
        InferenceDeployment, name="InferenceServer", max_ongoing_requests=places * max(1, len(models)),
        max_queued_requests=options.max_queued_requests,
        ray_actor_options={"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus}, **scaling,
    )
    return deployment.bind(models, settings, app_options)


def app_builder(args: dict[str, str]):
    """For ``serve run inference.server.ray_serve:app_builder models=ID=SOURCE,... replicas=2 max_batch_size=8``
    (or a Serve config file's ``import_path``): the same application from ``key=value`` arguments."""
    models = dict(item.partition("=")[::2] for item in args.get("models", "").split(",") if item)
    models = {model_id: source or model_id for model_id, source in models.items()}
    known = {"models", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus",
             "replica_gpus", "concurrency", "queue_size", "max_batch_size", "max_wait_ms"}
    if unknown := sorted(set(args) - known):
        raise ValueError(f"unknown arguments {', '.join(unknown)}: use {', '.join(sorted(known))}")
    numbers = {key: float(value) for key, value in args.items() if key != "models"}
    serve_options = ServeOptions(
        replicas=int(numbers.get("replicas", 1)),
        min_replicas=int(numbers["min_replicas"]) if "min_replicas" in numbers else None,
        max_replicas=int(numbers["max_replicas"]) if "max_replicas" in numbers else None,
        target_ongoing_requests=numbers.get("target_ongoing_requests"),
        replica_cpus=numbers.get("replica_cpus", 1.0), replica_gpus=numbers.get("replica_gpus", 0.0),
    )
    app_options = {key: int(numbers[key]) for key in ("concurrency", "queue_size", "max_batch_size") if key in numbers}
    if "max_wait_ms" in numbers:
        app_options["max_wait_ms"] = numbers["max_wait_ms"]
    from .app import default_models

    return build(models or default_models(), serve_options=serve_options, **app_options)


def run(models: dict[str, str], *, host: str, port: int, address: str | None, settings: Settings,
        serve_options: ServeOptions, **app_options: Any) -> int:
    """Start (or join, with ``address``) a Ray cluster, serve ``models`` on ``host:port`` and block until stopped.

    Without ``address`` this process starts a one-machine cluster (Ray 2.60 announces the machine's address for
    its internal services even when asked for 127.0.0.1; its token auth guards them); the HTTP proxy listens on
    ``host``. On SIGTERM or Ctrl-C it stops that cluster; a joined cluster keeps running, without this
    application.
    Replicas on this machine import ``inference`` from this checkout; on a cluster every node needs it installed
    (or a ``working_dir`` runtime environment).
    """
    import ray

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Ray's processes on this machine inherit this environment: they find ``inference`` and the proxy takes its
    # middlewares from here (Ray Serve reads the callback's path from its environment).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (_PROJECT_ROOT, os.environ.get("PYTHONPATH"))))
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_CALLBACK)
    runtime_env = {"env_vars": {name: os.environ[name] for name in ("PYTHONPATH", PROXY_CALLBACK_VARIABLE)}}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            ray.init(runtime_env=runtime_env, include_dashboard=False, logging_level=logging.WARNING)
        signal.signal(signal.SIGTERM, stop)  # again: ray.init installs a handler of its own (a stack dump)
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(models, settings=settings, serve_options=serve_options, **app_options), name=APP_NAME,
                  route_prefix="/", blocking=False)
        log.info("serving on http://%s:%d with Ray Serve", host, port)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if ray.is_initialized():
            if address:
                serve.delete(APP_NAME)  # the cluster and its other applications stay
            else:
                serve.shutdown()
            ray.shutdown()
    return 0
