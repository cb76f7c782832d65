"""Remote benchmarks: client overhead, upload size, server throughput. All traffic stays on 127.0.0.1.

1. Our client (``RemoteClient.infer``) against a bare ``httpx.Client.post`` of the same multipart request
   to the same loopback server, interleaved, N calls each: p50 and p95 ratios (target <= 1.05). Beside
   them, the whole public call (``load_model(..., backend="remote")(input)``: input checks and a typed
   result on top of the client) and a naive client that opens a new connection per call.
2. Upload size of a 12-megapixel photo before and after the client's downscaling (target < 500 KB).
3. The reference server under 1, 4 and 16 concurrent clients on a demo model: requests/s, p50/p95,
   and what the queue does past its limit (503 with Retry-After, never 500).

    python bench/remote_overhead.py [--calls 500]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from inference import Engine, Settings, load_model  # noqa: E402
from inference.compare import percentile  # noqa: E402
from inference.demo_models import build_demo_models  # noqa: E402
from inference.wire import Payload, Spec  # noqa: E402

TOKEN = "bench-token-not-secret"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like picture: smooth gradients and shapes plus sensor-like noise (JPEG sizes like a camera's)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 150 + 60], -1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * width
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        base[mask] = rng.uniform(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(models: dict[str, str], port: int, concurrency: int, queue: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "inference.server", "--port", str(port), "--concurrency", str(concurrency),
            "--queue", str(queue), "--log-level", "warning"]
    for model_id, path in models.items():
        args += ["--model", f"{model_id}={path}"]
    env = {**os.environ, "INFERENCE_SERVER_TOKEN": TOKEN}
    process = subprocess.Popen(args, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["loaded"] == len(models):
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def client_overhead(url: str, calls: int) -> list[str]:
    """Three ways to make the same call, interleaved in rotating order so none always goes first."""
    settings = Settings(remote_enabled=True, remote_endpoints=(url,), remote_token=TOKEN, remote_timeout=60)
    picture = jpeg(photo(640, 480))
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    cases = {  # task: (model id, the call's input and parameters, the wire spec)
        "object-detection": ("det", (picture,), {"threshold": 0.5}, None),
        "text-generation": ("tg", ("Write a haiku",), {"max_new_tokens": 8}, "Write a haiku"),
    }
    lines = [
        f"client overhead: {calls} interleaved calls each, keep-alive, loopback server, 640x480 JPEG",
        "  bare:       httpx.Client.post of the multipart request, then .json()",
        "  client:     our RemoteClient.infer of the same request (deadline, retry and failover logic, error mapping, JSON)",
        "  load_model: the whole public call, load_model(..., backend=\"remote\")(input): input checks, the request,",
        "              and a typed result (supervision.Detections in the input's pixels, timings)",
        "  naive:      httpx.post, a new connection per call",
        f"{'task':18s} {'call':11s} {'p50 ms':>7s} {'p95 ms':>7s} {'p50 ratio':>9s} {'p95 ratio':>9s}  target",
    ]
    with Engine(settings) as engine, httpx.Client() as bare_client:
        client = engine.remote_client()
        for task, (model_id, args, parameters, prompt) in cases.items():
            model = load_model(model_id, task=task, backend="remote", engine=engine)
            spec = Spec(model_id=model_id, task=task, payload=Payload(inputs=prompt, parameters=parameters))
            image = (picture, "image/jpeg") if task == "object-detection" else None
            files = {"spec": (None, json.dumps(spec.model_dump(mode="json")), "application/json")}
            if image is not None:
                files["image"] = ("image.jpg", picture, "image/jpeg")

            def bare():
                response = bare_client.post(url, files=files, headers=headers, timeout=60)
                response.raise_for_status()
                return response.json()

            def naive():
                response = httpx.post(url, files=files, headers=headers, timeout=60)  # new connection every time
                response.raise_for_status()
                return response.json()

            runners = {
                "bare": bare,
                "client": lambda: client.infer(spec, image).data,
                "load_model": lambda: model(*args, **parameters),
            }
            for _ in range(5):
                for call in (*runners.values(), naive):
                    call()
            times: dict[str, list[float]] = {name: [] for name in (*runners, "naive")}
            order = list(runners.items())
            for index in range(calls):
                shift = index % len(order)
                for name, call in order[shift:] + order[:shift]:  # each runner takes each position in turn
                    started = time.perf_counter()
                    call()
                    times[name].append((time.perf_counter() - started) * 1000)
            # The naive client runs on its own: its connection churn would slow its neighbours' calls too.
            for _ in range(max(20, calls // 5)):
                started = time.perf_counter()
                naive()
                times["naive"].append((time.perf_counter() - started) * 1000)
            p50 = {name: statistics.median(values) for name, values in times.items()}
            p95 = {name: percentile(values, 0.95) for name, values in times.items()}
            for row, name in enumerate(times):
                ratios = "" if name == "bare" else f"{p50[name] / p50['bare']:9.3f} {p95[name] / p95['bare']:9.3f}"
                if name == "client":
                    met = max(p50[name] / p50["bare"], p95[name] / p95["bare"]) <= 1.05
                    ratios += f"  <= 1.05: {'ok' if met else 'MISSED'}"
                lines.append(f"{task if row == 0 else '':18s} {name:11s} {p50[name]:7.2f} {p95[name]:7.2f} {ratios}")
    return lines


def upload_size(url: str) -> list[str]:
    settings = Settings(remote_enabled=True, remote_endpoints=(url,), remote_token=TOKEN, remote_timeout=120)
    big = jpeg(photo(4000, 3000))
    with Engine(settings) as engine:
        result = load_model("det", task="object-detection", backend="remote", engine=engine)(big)
    return [
        "upload size of a 12-megapixel (4000x3000) JPEG photo",
        f"  file: {len(big) / 1000:,.0f} KB   sent: {result.bytes_sent / 1000:,.0f} KB (long edge 1024 px, JPEG q90)  "
        f"target < 500 KB: {'ok' if result.bytes_sent < 500_000 else 'OVER'}",
    ]


def server_load(url: str, requests_per_level: int) -> list[str]:
    picture = jpeg(photo(640, 480))
    files = {"spec": (None, json.dumps({"model_id": "det", "task": "object-detection", "payload": {}}),
                      "application/json"), "image": ("image.jpg", picture, "image/jpeg")}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    lines = ["server under load: object-detection demo model, server --concurrency 1 --queue 8;",
             f"clients send {requests_per_level} requests per level and wait Retry-After when refused",
             f"{'clients':>7s} {'req/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s}  statuses"]
    for clients in (1, 4, 16):
        latencies: list[float] = []
        statuses: Counter = Counter()
        retry_after_ok = True
        remaining = [requests_per_level]
        lock = threading.Lock()

        def worker():
            nonlocal retry_after_ok
            with httpx.Client() as client:
                while True:
                    with lock:
                        if remaining[0] <= 0:
                            return
                        remaining[0] -= 1
                    started = time.perf_counter()
                    response = client.post(url, files=files, headers=headers, timeout=60)
                    elapsed = (time.perf_counter() - started) * 1000
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code == 200:
                            latencies.append(elapsed)
                        elif response.status_code == 503 and response.headers.get("Retry-After") is None:
                            retry_after_ok = False
                    if response.status_code == 503:
                        # A well-behaved client (ours) waits as told; the refused request is not counted as done.
                        with lock:
                            remaining[0] += 1
                        time.sleep(float(response.headers.get("Retry-After", 1)))

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        summary = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        note = "" if not statuses.get(503) else (" (every 503 had Retry-After)" if retry_after_ok else " (503 WITHOUT Retry-After)")
        lines.append(f"{clients:7d} {statuses[200] / wall:7.1f} {statistics.median(latencies):8.1f} "
                     f"{percentile(latencies, 0.95):8.1f}  {summary}{note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per client in the overhead test (>= 100)")
    parser.add_argument("--load-requests", type=int, default=200, help="requests per concurrency level")
    args = parser.parse_args(argv)
    models_dir = Path(tempfile.mkdtemp(prefix="bench-models-"))
    built = build_demo_models(models_dir, ("text-generation", "object-detection"))
    port = free_port()
    server = start_server({"tg": str(built["text-generation"]), "det": str(built["object-detection"])}, port,
                          concurrency=1, queue=8)
    url = f"http://127.0.0.1:{port}/inference"
    try:
        lines = client_overhead(url, args.calls) + [""] + upload_size(url) + [""] + server_load(url, args.load_requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
