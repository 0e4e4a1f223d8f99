"""Cost of the focus-peaking view (engine.focus) on a 1,024-px preview: medians of focus_map and focus_overlay.

The app draws the overlay when a photo is opened, on the preview it already shows, so both must stay well under
the time a user waits for a click (targets: focus_map < 150 ms, focus_overlay < 300 ms on one core). The picture is
a crisp random-block texture whose right half is the same texture out of focus, as the engine's tests use.

    .venv/bin/python bench/focus_cost.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.focus import focus_map, focus_overlay

TARGETS_MS = {"focus_map": 150.0, "focus_overlay": 300.0}


def half_soft(width: int = 1024, height: int = 683, cell: int = 4) -> Image.Image:
    rng = np.random.default_rng(0)
    cells = rng.integers(40, 215, (height // cell + 1, width // cell + 1, 3), dtype=np.uint8)
    sharp = Image.fromarray(np.ascontiguousarray(np.repeat(np.repeat(cells, cell, 0), cell, 1)[:height, :width]))
    out = sharp.copy()
    out.paste(sharp.filter(ImageFilter.GaussianBlur(4)).crop((width // 2, 0, width, height)), (width // 2, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9, help="timed calls per function (after one warm-up)")
    args = ap.parse_args(argv)
    image = half_soft()
    for name, fn in (("focus_map", focus_map), ("focus_overlay", focus_overlay)):
        fn(image)  # warm-up
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            fn(image)
            times.append((time.perf_counter() - start) * 1000)
        med = statistics.median(times)
        verdict = "PASS" if med < TARGETS_MS[name] else "MISS"
        print(f"{name:14s} median {med:6.1f} ms  (min {min(times):.1f}, max {max(times):.1f}; {len(times)} calls)  "
              f"{verdict} < {TARGETS_MS[name]:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
