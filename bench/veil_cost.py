"""What the engine's veil lift (engine.preprocess.lift_veil) costs per photo: preprocessing with and without it.

`--dark`: the dark lift (engine.preprocess.lift_dark) instead, with underexposed copies (15% of the light) in place of
the veiled ones: a well-exposed photo pays for the white-point histogram of its model-sized view, a dark one also for
the gain on the decoded image and a second resize.

Each photo is decoded once (as the engine decodes it), then `preprocess` runs with `veil_gate` off and on, alternating
pass by pass, once on the photo as it is and once on a copy under a thick uniform veil (t = 0.3, airlight 0.78 in
linear light): a clear photo pays only for the black-point histogram of its model-sized view, a veiled one also for
the lift of the decoded image and a second resize. Medians per photo over the passes, and how many clear photos the
gate takes for veiled (the lift is meant to be rare).

    .venv/bin/python bench/veil_cost.py --images ../shared/data/race --passes 5
    .venv/bin/python bench/veil_cost.py --dark --passes 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.preprocess import (  # noqa: E402
    DARK_GATE,
    SRGB8_TO_LINEAR,
    TRAIN_REDUCING_GAP,
    VEIL_GATE,
    InputSpec,
    dark_white_point,
    is_image_path,
    linear_to_srgb8,
    open_image,
    preprocess,
    to_model_image,
    veil_black_point,
)

AIRLIGHT = 0.78


def veiled(img: Image.Image, t: float, thinning: float = 0.0) -> Image.Image:
    """`img` under a bright veil of transmission t in linear light (thinning > 0: t + thinning at the bottom row)."""
    if t >= 1.0:
        return img
    lin = SRGB8_TO_LINEAR[np.asarray(img)]
    trans = np.minimum(1.0, t + thinning * np.linspace(0.0, 1.0, lin.shape[0])[:, None, None]) if thinning else t
    return Image.fromarray(linear_to_srgb8(lin * trans + AIRLIGHT * (1.0 - trans)))


def underexposed(img: Image.Image, k: float = 0.15) -> Image.Image:
    """`img` with k times its light in linear light (0.15: about 2.7 stops under)."""
    return Image.fromarray(linear_to_srgb8(SRGB8_TO_LINEAR[np.asarray(img)] * k))


def _time(images: list[Image.Image], spec: InputSpec) -> float:
    t0 = time.perf_counter()
    for img in images:
        preprocess(img, spec)
    return (time.perf_counter() - t0) / len(images)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/race",
                    help="a folder of photos (default ../shared/data/race)")
    ap.add_argument("--limit", type=int, default=60, help="photos to use (default 60)")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--dark", action="store_true", help="the dark lift and underexposed copies instead of the veil's")
    args = ap.parse_args(argv)
    paths = sorted(p for p in args.images.rglob("*") if p.is_file() and is_image_path(p))[: args.limit]
    if not paths:
        print(f"no photos under {args.images}", file=sys.stderr)
        return 1
    off = InputSpec(size=224, resize="stretch", reducing_gap=TRAIN_REDUCING_GAP)
    clear = [open_image(p, off) for p in paths]
    if args.dark:
        on = replace(off, dark_gate=DARK_GATE)
        sets = (("clear", clear), ("dark", [underexposed(img) for img in clear]))
        gated = sum(dark_white_point(to_model_image(img, on)) < DARK_GATE for img in clear)
    else:
        on = replace(off, veil_gate=VEIL_GATE)
        sets = (("clear", clear), ("veiled", [veiled(img, 0.3) for img in clear]))
        gated = sum(int(veil_black_point(to_model_image(img, on)).min()) >= VEIL_GATE for img in clear)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.passes):
        for set_name, images in sets:
            for spec_name, spec in (("off", off), ("on", on)):
                times.setdefault((set_name, spec_name), []).append(_time(images, spec))
    sizes = statistics.median(max(img.size) for img in clear)
    print(f"{len(paths)} photos from {args.images} (median long side as decoded {sizes:.0f} px), {args.passes} passes")
    print(f"clear photos the gate takes for {sets[1][0]}: {gated}/{len(clear)}")
    for set_name, _ in sets:
        a, b = (statistics.median(times[(set_name, s)]) * 1e3 for s in ("off", "on"))
        print(f"{set_name:7s} preprocess per photo: without the lift {a:.2f} ms, with it {b:.2f} ms (x{b / a:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
