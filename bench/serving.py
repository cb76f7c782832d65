"""Serving throughput: the reference server unbatched, batched, on Ray Serve (1 and 2 replicas), and Ray Serve's own
``@serve.batch`` on the same models, under 1, 4, 16 and 64 concurrent clients.

Every server runs as its own process on 127.0.0.1 with the demo detector and the demo text model; the load comes
from another process (``--load``), closed-loop: each client sends its next request when its answer arrives, a
bounded number in all per level. Detection sends one 320x240 PNG; text generation asks for 16 greedy tokens.
Printed per server, task and level: successful requests/s, p50/p95/p99 latency and the status counts; then the
ratios the targets are about:
- batched >= 2x unbatched throughput at 16 clients for detection, with p95 no worse;
- our batcher (on Ray Serve, 1 replica) within 10 % of ``@serve.batch`` (on Ray Serve, 1 replica);
- no 500 at any level.
The Ray rows need Ray Serve's venv (``make ray``; ``RAY_PYTHON`` or ``~/.cache/inference-studio/ray-venv``).

    python bench/serving.py [--levels 1,4,16,64] [--requests 16] [--servers batched,ray-1] [--max-wait-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402

from inference.compare import percentile  # noqa: E402
from remote_overhead import TOKEN, free_port  # noqa: E402

RAY_PYTHON = os.environ.get("RAY_PYTHON", str(Path.home() / ".cache/inference-studio/ray-venv/bin/python"))
TASKS = {"object-detection": "det", "text-generation": "tg"}
MAX_BATCH_SIZE, MAX_WAIT_MS, QUEUE = 8, 0, 64
PROMPT = "Tell me a story about the sea"


# --------------------------------------------------------------------------- the load generator (its own process)


def _requests(task: str) -> tuple[dict, bytes | None]:
    if task == "object-detection":
        from PIL import Image

        buffer = io.BytesIO()
        Image.effect_mandelbrot((320, 240), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB").save(buffer, format="PNG")
        return {"model_id": "det", "task": task, "payload": {"parameters": {"threshold": 0.5}}}, buffer.getvalue()
    return {"model_id": "tg", "task": task,
            "payload": {"inputs": PROMPT, "parameters": {"max_new_tokens": 16}}}, None


async def _load(url: str, task: str, clients: int, total: int) -> dict:
    spec, image = _requests(task)
    files = {"spec": (None, json.dumps(spec), "application/json")}
    if image is not None:
        files["image"] = ("x.png", image, "image/png")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one_client() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"{url}/inference", files=files, headers=headers)
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        latencies.append((time.perf_counter() - started) * 1000)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        for _ in range(min(clients, 8)):  # warm: connections, the model's first calls
            await client.post(f"{url}/inference", files=files, headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {"rps": len(latencies) / wall, "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "p99": percentile(latencies, 0.99), "statuses": dict(statuses)}


# --------------------------------------------------------------------------- the servers


def _wait_ready(url: str, process: subprocess.Popen, models: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("loaded") == models:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not start")


def _start(kind: str, models: dict[str, str], port: int) -> subprocess.Popen:
    env = {**os.environ, "INFERENCE_SERVER_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    model_args = [argument for model_id, path in models.items() for argument in ("--model", f"{model_id}={path}")]
    common = ["--port", str(port), "--queue", str(QUEUE), "--log-level", "warning", "--exit-with-parent"]
    if kind == "unbatched":
        command = [sys.executable, "-m", "inference.server", *common, "--max-batch-size", "1", *model_args]
    elif kind == "batched":
        command = [sys.executable, "-m", "inference.server", *common, "--max-batch-size", str(MAX_BATCH_SIZE),
                   "--max-wait-ms", str(MAX_WAIT_MS), *model_args]
    elif kind.startswith("ray-"):
        replicas = kind.split("-")[1]
        command = [RAY_PYTHON, "-m", "inference.server", "--ray", "--replicas", replicas, *common,
                   "--max-batch-size", str(MAX_BATCH_SIZE), "--max-wait-ms", str(MAX_WAIT_MS), *model_args]
    else:  # serve.batch
        env.update(PEER_MAX_BATCH_SIZE=str(MAX_BATCH_SIZE), PEER_MAX_WAIT_MS=str(MAX_WAIT_MS))
        tasks = {model_id: task for task, model_id in TASKS.items()}
        command = [RAY_PYTHON, str(ROOT / "bench" / "ray_batch_peer.py"), "--port", str(port),
                   *[argument for model_id, path in models.items()
                     for argument in ("--model", f"{model_id}={path}:{tasks[model_id]}")]]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_server(kind: str, models: dict[str, str], levels: list[int], per_client: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(kind, models, port)
    results = {}
    try:
        _wait_ready(url, process, len(models))
        for task in TASKS:
            for clients in levels:
                total = max(48, per_client * clients)
                done = subprocess.run([sys.executable, __file__, "--load", url, task, str(clients), str(total)],
                                      capture_output=True, text=True, timeout=900)
                if done.returncode:
                    raise RuntimeError(done.stderr[-2000:])
                results[task, clients] = json.loads(done.stdout.strip().splitlines()[-1])
                row = results[task, clients]
                print(f"  {kind:12s} {task:17s} {clients:3d} clients  {row['rps']:7.1f} req/s  "
                      f"p50 {row['p50']:7.1f}  p95 {row['p95']:7.1f}  p99 {row['p99']:7.1f} ms  {row['statuses']}",
                      flush=True)
    finally:
        _stop(process)
    return results


def main(argv: list[str] | None = None) -> int:
    global MAX_WAIT_MS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=16, help="requests per client per level (at least 48)")
    parser.add_argument("--servers", default="unbatched,batched,ray-1,ray-2,serve-batch")
    parser.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS, help="the batchers' wait (ours and Ray's)")
    parser.add_argument("--load", nargs=4, metavar=("URL", "TASK", "CLIENTS", "TOTAL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        url, task, clients, total = args.load
        print(json.dumps(asyncio.run(_load(url, task, int(clients), int(total)))))
        return 0

    from inference.demo_models import build_demo_models

    MAX_WAIT_MS = args.max_wait_ms
    levels = [int(level) for level in args.levels.split(",")]
    kinds = args.servers.split(",")
    if not Path(RAY_PYTHON).is_file():
        print(f"(no Ray Serve venv at {RAY_PYTHON}: `make ray` for the Ray rows)")
        kinds = [kind for kind in kinds if not (kind.startswith("ray-") or kind == "serve-batch")]
    with tempfile.TemporaryDirectory() as directory:
        built = build_demo_models(directory, tuple(TASKS))
        models = {model_id: str(built[task]) for task, model_id in TASKS.items()}
        print(f"serving: {os.cpu_count()} cores; batches of up to {MAX_BATCH_SIZE}, {MAX_WAIT_MS:g} ms wait; "
              f"queue {QUEUE}; closed-loop clients, {args.requests} requests each (at least 48 a level)")
        results = {kind: run_server(kind, models, levels, args.requests) for kind in kinds}

    print("\nratios (requests/s; p95 in brackets)")
    for task in TASKS:
        for clients in levels:
            base = results.get("unbatched", {}).get((task, clients))
            cells = []
            for kind in kinds:
                row = results[kind].get((task, clients))
                if row and base:
                    cells.append(f"{kind} {row['rps'] / base['rps']:.2f}x [{row['p95'] / base['p95']:.2f}x]")
            print(f"  {task:17s} {clients:3d} clients vs unbatched: " + ", ".join(cells))
    failures = sum(count for kind in kinds for row in results[kind].values()
                   for status, count in row["statuses"].items() if status not in ("200", "503"))
    print("\ntargets")
    det16 = {kind: results[kind].get(("object-detection", 16)) for kind in kinds}
    if det16.get("batched") and det16.get("unbatched"):
        ratio = det16["batched"]["rps"] / det16["unbatched"]["rps"]
        p95 = det16["batched"]["p95"] / det16["unbatched"]["p95"]
        print(f"  detection, 16 clients: batched {ratio:.2f}x unbatched (target >= 2), p95 {p95:.2f}x (target <= 1)")
    for task in TASKS:
        ours, peer = results.get("ray-1", {}).get((task, 16)), results.get("serve-batch", {}).get((task, 16))
        if ours and peer and peer["rps"]:
            print(f"  {task}, 16 clients: our batcher on Ray {ours['rps'] / peer['rps']:.2f}x @serve.batch "
                  "(target >= 0.9)")
    print(f"  requests answered other than 200 or 503 (500s, errors): {failures} (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
