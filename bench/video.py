"""Video detection frames per second: local, remote one frame at a time, and remote with frames in flight.

The clip is the detection page's sample (assets/sample-clip.mp4: 120 frames of 640x360 at 15 frames/s), or
``--clip``. The reference server runs as a separate process on 127.0.0.1 with the demo detector. ``Model.video`` decodes, detects and tracks every frame:
- local:      the detector in this process;
- remote x1:  one frame at a time to the server (each waits for the round trip);
- remote x4:  four frames in flight over the client's kept-alive connections (the default on a remote backend).
Target: remote with frames in flight >= 1.5x remote one at a time. The runs take turns, three rounds.

    python bench/video.py [--clip assets/sample-clip.mp4]
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

from inference import Engine, Settings, load_model  # noqa: E402
from inference.demo_models import build_demo_models  # noqa: E402
from inference.video import VideoReader  # noqa: E402
from remote_overhead import TOKEN, free_port, start_server  # noqa: E402


def frames_per_second(model, clip: Path, in_flight: int) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in model.video(clip, threshold=0.5, in_flight=in_flight))
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=ROOT / "assets" / "sample-clip.mp4")
    args = parser.parse_args(argv)
    clip = args.clip
    with VideoReader(clip) as reader:
        info = reader.info
    with tempfile.TemporaryDirectory() as directory:
        detector = str(build_demo_models(directory, ("object-detection",))["object-detection"])
        port = free_port()
        server = start_server({"det": detector}, port, concurrency=2, queue=16)
        try:
            settings = Settings(remote_enabled=True, remote_endpoints=(f"http://127.0.0.1:{port}/inference",),
                                remote_token=TOKEN, remote_timeout=60)
            with Engine(settings) as engine:
                local = load_model(detector, task="object-detection", backend="local", engine=engine)
                remote = load_model("det", task="object-detection", backend="remote", engine=engine)
                runs = {"local": (local, 1), "remote x1": (remote, 1), "remote x4": (remote, 4)}
                for model, in_flight in runs.values():  # warm: the model, the connections
                    frames_per_second(model, clip, in_flight)
                rates: dict[str, list[float]] = {name: [] for name in runs}
                for _ in range(3):
                    for name, (model, in_flight) in runs.items():
                        rates[name].append(frames_per_second(model, clip, in_flight))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"video: {clip.name}, {info.frames} frames of {info.width}x{info.height} at {info.fps:.0f} frames/s, demo "
          f"detector, tracked; median of 3 rounds; {os.cpu_count()} cores")
    median = {name: sorted(values)[1] for name, values in rates.items()}
    for name, value in median.items():
        print(f"  {name:10s} {value:7.1f} frames/s")
    ratio = median["remote x4"] / median["remote x1"]
    print(f"remote with 4 in flight: {ratio:.2f}x one at a time (target >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
