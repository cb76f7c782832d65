"""Our OpenAI backend against the ``openai`` SDK and a bare ``httpx`` post: the same server, prompt and answer.

The reference server runs as a separate process on 127.0.0.1 with the demo text model (tiny: a call takes a few
ms, the worst case for a ratio). Four ways of asking ``/v1/chat/completions`` the same question take turns in
rotating order, N calls each, then the same for streams (time to first token and to the end):
- bare:       ``httpx.Client.post`` of the JSON body, then ``.json()`` (the floor);
- ours:       ``load_model(..., backend="bench")(prompt)``: validation, the request, a typed result with timings;
- sdk:        ``openai.OpenAI(...).chat.completions.create`` (typed, with its own retries off);
Targets: ours <= 1.02x bare at p50, and no slower than the SDK.

    python bench/endpoints.py [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import openai  # noqa: E402

from inference import Engine, Settings, load_model  # noqa: E402
from inference.compare import percentile  # noqa: E402
from inference.demo_models import build_demo_models  # noqa: E402
from remote_overhead import TOKEN, free_port, start_server  # noqa: E402

PROMPT = "Write a haiku about the sea"
MAX_TOKENS = 8


def measure(calls: dict[str, callable], n: int) -> dict[str, list[float]]:
    """Each call ``n`` times, taking turns in rotating order; wall ms of each."""
    names = list(calls)
    for name in names:  # warm every path (connections, imports) before measuring
        for _ in range(3):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(n):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            started = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def table(title: str, times: dict[str, list[float]], *, targets: dict[str, str]) -> list[str]:
    base50, base95 = percentile(times["bare"], 0.5), percentile(times["bare"], 0.95)
    lines = [title, f"{'call':8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p50 ratio':>10s} {'p95 ratio':>10s}  target"]
    for name, values in times.items():
        p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
        ratio = "" if name == "bare" else f"{p50 / base50:10.3f} {p95 / base95:10.3f}"
        lines.append(f"{name:8s} {p50:8.2f} {p95:8.2f} {ratio:>21s}  {targets.get(name, '')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    models = tempfile.mkdtemp(prefix="bench-models-")
    build_demo_models(models, ("text-generation",))
    port = free_port()
    server = start_server({"tg": str(Path(models) / "text-generation")}, port, concurrency=1, queue=8)
    base = f"http://127.0.0.1:{port}/v1"
    body = {"model": "tg", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    settings = Settings(endpoints={"bench": {"url": base, "protocol": "openai", "token": TOKEN}})
    lines = [f"OpenAI chat completions on a loopback server (demo text model, {MAX_TOKENS} tokens), "
             f"{args.calls} interleaved calls each"]
    try:
        with Engine(settings) as engine, httpx.Client() as bare_client, \
                openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0) as sdk:
            ours = load_model("tg", task="text-generation", backend="bench", engine=engine)
            expected = ours(PROMPT, max_new_tokens=MAX_TOKENS).text

            def bare():
                response = bare_client.post(f"{base}/chat/completions", json=body, headers=headers, timeout=60)
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"]

            def sdk_call():
                return sdk.chat.completions.create(**body).choices[0].message.content

            assert bare() == sdk_call() == expected, "the three ways must get the same answer"
            times = measure({"bare": bare, "ours": lambda: ours(PROMPT, max_new_tokens=MAX_TOKENS),
                             "sdk": sdk_call}, args.calls)
            lines += table("answers in one piece", times, targets={"ours": "<= 1.02 x bare, <= sdk"})

            def bare_stream():
                with bare_client.stream("POST", f"{base}/chat/completions", json={**body, "stream": True},
                                        headers=headers, timeout=60) as response:
                    for line in response.iter_lines():
                        if line == "data: [DONE]":
                            break

            def ours_stream():
                for _ in ours.stream(PROMPT, max_new_tokens=MAX_TOKENS):
                    pass

            def sdk_stream():
                for _ in sdk.chat.completions.create(**body, stream=True):
                    pass

            times = measure({"bare": bare_stream, "ours": ours_stream, "sdk": sdk_stream}, args.calls)
            lines += [""] + table("streams, to the last event", times, targets={"ours": "<= 1.02 x bare, <= sdk"})
            ttft = [ours.stream(PROMPT, max_new_tokens=MAX_TOKENS).result.timings.ttft_ms for _ in range(50)]
            lines.append(f"ours: time to first token p50 {percentile(ttft, 0.5):.2f} ms (50 streams)")
    finally:
        server.terminate()
        server.wait(timeout=10)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
