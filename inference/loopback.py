"""A reference server on this machine, started in the background: the remote backend of a fresh install.

It runs as a separate process (like a real endpoint), binds 127.0.0.1 on a free port, accepts a random
token that lives only in this process and the child's environment, and exits with its parent (at once when
the parent stops it, within a second when the parent is killed).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .errors import RemoteUnavailable
from .settings import Settings

__all__ = ["LoopbackServer"]

log = logging.getLogger(__name__)


class LoopbackServer:
    """``python -m inference.server`` on 127.0.0.1, serving ``models`` (served id → source).

    Models load on their first request (``--no-preload``), so the first request waits for its own model
    only, not for every served model in turn. ``launch`` starts the process without waiting; ``wait_ready``
    waits for ``/health`` (with progress), from any number of threads at once.

    Example:
        >>> server = LoopbackServer({"det": "demo-models/object-detection"}).start()
        >>> load_model("det", task="object-detection", backend="remote", settings=server.settings())
    """

    label = "loopback server on this machine"

    def __init__(self, models: dict[str, str], *, concurrency: int = 1, startup_timeout: float = 120.0,
                 preload: bool = False, env: dict[str, str] | None = None) -> None:
        self.models = dict(models)
        self.concurrency = concurrency
        self.startup_timeout = startup_timeout
        self.preload = preload
        self.env = dict(env or {})
        self._token = secrets.token_urlsafe(24)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._launched_at = 0.0
        self._registered = False  # stop() registered to run at exit
        #: Seconds from launch until the server first answered ``/health`` (None until then).
        self.startup_s: float | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopbackServer 127.0.0.1:{self.port} {state} models={len(self.models)}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/inference"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def ready(self) -> bool:
        """Whether the server answered ``/health`` (and still runs)."""
        return self._ready and self.running

    def settings(self, base: Settings | None = None) -> Settings:
        """``base`` with the remote backend pointed at this server."""
        return (base or Settings()).replace(remote_enabled=True, remote_endpoints=(self.url,),
                                            remote_token=self._token)

    def start(self) -> LoopbackServer:
        """Start the server and wait until it answers ``/health``."""
        return self.launch().wait_ready()

    def launch(self) -> LoopbackServer:
        """Start the server process, without waiting for it to answer (a second call does nothing)."""
        with self._lock:
            if self.running:
                return self
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            arguments = ["--host", "127.0.0.1", "--port", str(self.port), "--concurrency", str(self.concurrency),
                         "--exit-with-parent", "--log-level", "warning"]
            if not self.preload:
                arguments.append("--no-preload")
            for model_id, source in self.models.items():
                arguments += ["--model", f"{model_id}={source}"]
            # The server imports torch and transformers at once, in the background: each first request needs them.
            command = [sys.executable, "-m", "inference.server", *arguments]
            env = {**os.environ, **self.env, "INFERENCE_SERVER_TOKEN": self._token}
            for variable in ("REMOTE_INFERENCE_ENABLED", "REMOTE_INFERENCE_ENDPOINT", "REMOTE_INFERENCE_TOKEN"):
                env.pop(variable, None)  # the loopback server is an endpoint, not a gateway
            self._ready = False
            self._launched_at = time.monotonic()
            self._process = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parent.parent,
                                             stdin=subprocess.DEVNULL)
            if not self._registered:
                atexit.register(self.stop)
                self._registered = True
            log.info("starting the %s on port %d (pid %d)", self.label, self.port, self._process.pid)
        return self

    def wait_ready(self, progress: Callable[[float], None] | None = None) -> LoopbackServer:
        """Wait until the launched server answers ``/health``; ``progress(seconds_since_launch)`` meanwhile.

        Raises:
            RemoteUnavailable: the server exited, or did not answer within ``startup_timeout``.
        """
        if self._process is None:
            self.launch()
        deadline = self._launched_at + self.startup_timeout
        while not self._ready:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise RemoteUnavailable(f"the {self.label} exited at startup (code {code}); see the app's log")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    self.startup_s = time.monotonic() - self._launched_at
                    self._ready = True
                    log.info("the %s answers after %.1f s", self.label, self.startup_s)
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RemoteUnavailable(f"the {self.label} did not start within {self.startup_timeout:g} s")
            if progress is not None:
                progress(time.monotonic() - self._launched_at)
            time.sleep(0.2)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the server (also run at exit): SIGTERM, and SIGKILL if it is still there after ``timeout``."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._ready = False
