"""Ray Serve tests: the reference server on Ray Serve replicas, run by Ray's own venv (``make test-ray``).

Skipped unless ``INFERENCE_RAY_PYTHON`` names that venv's python (the Makefile sets it). The tests themselves run in
the project's venv, which has no Ray: they drive ``python -m inference.server --ray`` as users do, on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN

RAY_PYTHON = os.environ.get("INFERENCE_RAY_PYTHON", "")
ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    if RAY_PYTHON and Path(RAY_PYTHON).is_file():
        return
    skip = pytest.mark.skip(reason="Ray Serve is not installed: run `make test-ray` (INFERENCE_RAY_PYTHON)")
    for item in items:
        if os.sep + "ray_serve" + os.sep in str(item.fspath):
            item.add_marker(skip)


def ray_python(code: str, *args: str, timeout: float = 120) -> str:
    """Run ``code`` with Ray's python, connected to the running cluster by its own means; its stdout."""
    done = subprocess.run([RAY_PYTHON, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "RAY_ADDRESS": "auto"})
    if done.returncode:
        raise RuntimeError(f"Ray's python failed:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def ray_url(demo_dir, tmp_path_factory):
    """``python -m inference.server --ray --replicas 2`` with the demo detector and text model, token-protected."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFERENCE_SERVER_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [RAY_PYTHON, "-m", "inference.server", "--ray", "--replicas", "2", "--replica-cpus", "0.5",
               "--model", f"det={demo_dir['object-detection']}", "--model", f"tg={demo_dir['text-generation']}",
               "--max-batch-size", "4", "--port", str(port), "--exit-with-parent", "--log-level", "warning"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while not _both_replicas_loaded(url):
            if process.poll() is not None:
                raise RuntimeError(f"the Ray server exited at startup ({process.returncode}):\n"
                                   f"{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray server did not start within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()  # our SIGTERM handler shuts Serve and the one-machine cluster down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _both_replicas_loaded(url: str) -> bool:
    """Whether two replicas answer /health with their models loaded (the proxy picks one a call)."""
    loaded = set()
    for _ in range(12):
        try:
            response = httpx.get(f"{url}/health", timeout=2)
        except httpx.TransportError:
            return False
        if response.status_code == 200 and response.json()["loaded"] == 2:
            loaded.add(response.headers.get("x-inference-replica"))
    return len(loaded) >= 2
