"""Builds ``sample-clip.mp4``, the detection page's sample video, from the sample photos in this folder.

A camera pans across the four photos laid side by side (astronaut, cat, coffee, rocket), so objects enter on the
right, cross the frame and leave on the left: what tracking is for. 640x360, 15 frames/s, 8 s, H.264 (browsers play
it). The photos are public domain or CC0 (LICENSE.md), and so is this clip, made here.

    python assets/make_sample_clip.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from inference.video import VideoWriter  # noqa: E402

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 15, 8
PHOTOS = ("astronaut", "cat", "coffee", "rocket")


def strip() -> np.ndarray:
    """The photos side by side at the clip's height, with a gap of grey between them."""
    parts = []
    for name in PHOTOS:
        photo = Image.open(HERE / f"{name}.jpg").convert("RGB")
        width = round(photo.width * HEIGHT / photo.height)
        parts.append(np.asarray(photo.resize((width, HEIGHT), Image.Resampling.LANCZOS)))
        parts.append(np.full((HEIGHT, 120, 3), 96, dtype=np.uint8))
    lead = np.full((HEIGHT, WIDTH // 2, 3), 96, dtype=np.uint8)
    return np.concatenate([lead, *parts], axis=1)


def main() -> None:
    panorama = strip()
    frames = FPS * SECONDS
    travel = panorama.shape[1] - WIDTH
    with VideoWriter(HERE / "sample-clip.mp4", FPS, crf=30) as writer:
        for index in range(frames):
            x = round(travel * index / (frames - 1))
            writer.write(panorama[:, x:x + WIDTH])
    print(f"wrote {HERE / 'sample-clip.mp4'}: {frames} frames, {(HERE / 'sample-clip.mp4').stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
