"""How much does a training-time RandomResizedCrop soften the images the model learns from? Model-free.

A prepared dataset holds every image at the model's input size, made by the engine's own resize.
ultralytics' classification training then applies RandomResizedCrop (area from 1 - `scale` to 1, aspect
3:4 to 4:3, bilinear) and scales the crop back up to the input size. This prints the fine-detail statistic
of bench/resolution.py (Laplacian energy at the input resolution relative to the next octave; lower =
softer) for the validation images of a dataset, per kind and blur strength (px at a 2048-px long side), as
the engine sends them and as training sees them under each crop setting (colour jitter and flips off: they
do not change sharpness).

    .venv/bin/python bench/augment_softening.py WORK/ship/dataset --crop-scales 0.1,0
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from resolution import fine_detail  # noqa: E402

from trainer.dataset import read_dataset_spec  # noqa: E402

GROUPS = [  # (label, kind, lowest px, highest px)
    ("sharp, clean photo", "clean", 0.0, 0.0),
    ("defocus 4-8 px", "defocus", 4.0, 8.0),
    ("defocus 8-12 px (visible)", "defocus", 8.0, 12.0),
    ("defocus 12-24 px", "defocus", 12.0, 24.0),
    ("shake 24-48 px (visible)", "shake", 24.0, 48.0),
    ("linear motion 24-48 px (visible)", "linear_motion", 24.0, 48.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a `blurflag-train shipped` (or prepare) dataset folder")
    ap.add_argument("--crop-scales", default="0.1,0", help="RandomResizedCrop settings to compare")
    ap.add_argument("--per-group", type=int, default=80, help="images per group (the first N)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from ultralytics.data.augment import classify_augmentations

    torch.manual_seed(args.seed)
    with open(args.dataset / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val" and not r["error"]]
    files: dict[str, list[Path]] = {}
    for label, kind, lo, hi in GROUPS:
        hit = [r for r in rows
               if r["kind"] == kind and (kind == "clean" or lo <= float(r["strength_px"]) < hi)]
        files[label] = [args.dataset / r["file"] for r in hit[: args.per_group]]
    size = read_dataset_spec(args.dataset).size
    scales = [float(s) for s in args.crop_scales.split(",")]
    columns = ["as the engine sends it"] + [f"training, crop scale {s:g}" for s in scales]
    # ultralytics' own training transform (as ClassificationDataset builds it), flips and colour jitter off
    transforms = [None] + [
        classify_augmentations(size, scale=(1.0 - s, 1.0), hflip=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
        for s in scales
    ]
    print("median fine-detail statistic (lower = softer); validation images of", args.dataset)
    print(f"{'':34s}" + "".join(f"{c:>28s}" for c in columns))
    for label, paths in files.items():
        if not paths:
            continue
        cells = []
        for tf in transforms:
            stats = []
            for p in paths:
                img = Image.open(p).convert("RGB")
                if tf is not None:  # CHW float tensor in [0, 1] back to 8-bit RGB
                    arr = tf(img).permute(1, 2, 0).numpy() * 255.0
                    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
                stats.append(fine_detail(img))
            cells.append(f"{np.median(stats):>22.3f} (n={len(stats):3d})")
        print(f"{label:34s}" + "".join(cells))


if __name__ == "__main__":
    main()
