"""Interop tests against an independent server: vLLM's OpenAI server on CPU, in its own venv (``make test-interop``).

Skipped unless ``INFERENCE_VLLM_PYTHON`` names that venv's python (the Makefile sets it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

VLLM_PYTHON = os.environ.get("INFERENCE_VLLM_PYTHON", "")
#: vLLM's own bearer token (``--api-key``): our client must send it, and never show it.
VLLM_TOKEN = "vllm-tok-5b2e8d1c"
#: What vLLM calls the bundled SmolLM2 (``--served-model-name``); our id maps to it through ``models``.
SERVED_NAME = "smollm2"


def pytest_collection_modifyitems(config, items):
    if VLLM_PYTHON and Path(VLLM_PYTHON).is_file():
        return
    skip = pytest.mark.skip(reason="vLLM is not installed: run `make test-interop` (INFERENCE_VLLM_PYTHON)")
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    from inference.bundled import convert_bundled

    return convert_bundled()


@pytest.fixture(scope="session")
def vllm_url(bundled_dir, tmp_path_factory) -> str:
    """vLLM's OpenAI server on 127.0.0.1 with the bundled SmolLM2 (float32, as transformers runs it here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
           "DO_NOT_TRACK": "1"}
    command = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(bundled_dir),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", "512", "--api-key", VLLM_TOKEN]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vLLM exited at startup (code {process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not start within 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
