"""A reference server on this machine, started in the background: the remote backend of a fresh install.

It runs as a separate process (like a real endpoint), binds 127.0.0.1 on a free port, accepts a random
token that lives only in this process and the child's environment, and exits with its parent.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .errors import RemoteUnavailable
from .settings import Settings

__all__ = ["LoopbackServer"]

log = logging.getLogger(__name__)


class LoopbackServer:
    """``python -m inference.server`` on 127.0.0.1, serving ``models`` (served id → source).

    Example:
        >>> server = LoopbackServer({"det": "demo-models/object-detection"}).start()
        >>> load_model("det", task="object-detection", backend="remote", settings=server.settings())
    """

    label = "loopback server on this machine"

    def __init__(self, models: dict[str, str], *, concurrency: int = 1, startup_timeout: float = 120.0) -> None:
        self.models = dict(models)
        self.concurrency = concurrency
        self.startup_timeout = startup_timeout
        self._token = secrets.token_urlsafe(24)
        self._process: subprocess.Popen | None = None
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

    def settings(self, base: Settings | None = None) -> Settings:
        """``base`` with the remote backend pointed at this server."""
        from dataclasses import replace

        return replace(base or Settings(), remote_enabled=True, remote_endpoints=(self.url,),
                       remote_token=self._token)

    def start(self) -> LoopbackServer:
        """Start the server and wait until it answers ``/health``."""
        if self.running:
            return self
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [sys.executable, "-m", "inference.server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--concurrency", str(self.concurrency), "--exit-with-parent", "--log-level", "warning"]
        for model_id, source in self.models.items():
            command += ["--model", f"{model_id}={source}"]
        env = {**os.environ, "INFERENCE_SERVER_TOKEN": self._token}
        for variable in ("REMOTE_INFERENCE_ENABLED", "REMOTE_INFERENCE_ENDPOINT", "REMOTE_INFERENCE_TOKEN"):
            env.pop(variable, None)  # the loopback server is an endpoint, not a gateway
        self._process = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parent.parent,
                                         stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RemoteUnavailable(f"the {self.label} exited at startup (code {self._process.returncode}); "
                                        "see the app's log")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    log.info("started the %s on port %d", self.label, self.port)
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RemoteUnavailable(f"the {self.label} did not start within {self.startup_timeout:g} s")

    def stop(self) -> None:
        """Stop the server (also run at exit)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
