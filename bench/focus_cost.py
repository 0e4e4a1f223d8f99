"""Cost of the focus-peaking view (engine.focus) on a 1,024-px preview: medians of focus_map and focus_overlay.

The app draws the overlay when a photo is opened, on the preview it already shows, so both must stay well under
the time a user waits for a click (targets: focus_map < 150 ms, focus_overlay < 300 ms on one core). The picture is
the engine tests' half-soft texture (tests/toydata.py: crisp random blocks, the right half out of focus).

    .venv/bin/python bench/focus_cost.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.focus import focus_map, focus_overlay
from tests.toydata import half_soft

TARGETS_MS = {"focus_map": 150.0, "focus_overlay": 300.0}


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
