"""Inference time per image of model folders side by side (e.g. the bundled model and an ensemble of several).

Only the ONNX run is timed (the engine's `predict` on already preprocessed batches, its own session options); the
decode and resize that dominate a photo's cost (bench/README.md) do not depend on the model. Passes alternate
between the models so that load from other processes touches them alike; the median pass is reported. Models of
different input sizes (e.g. a MobileNetV2 fine-tuned with `blurflag-train imagenet --imgsz 320`) each get the same
photos preprocessed for their own input.

    .venv/bin/python bench/inference_cost.py models WORK/ensemble --images ../shared/data/race --passes 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model import load_classifier  # noqa: E402
from engine.preprocess import load_model_input  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="model folders (blurflag.onnx + class_names.json)")
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/race",
                    help="a folder of photos to feed (default ../shared/data/race)")
    ap.add_argument("--count", type=int, default=64, help="images per pass (default 64)")
    ap.add_argument("--batch", type=int, default=8, help="images per run call (default 8, like the engine)")
    ap.add_argument("--passes", type=int, default=7)
    args = ap.parse_args(argv)

    classifiers = [load_classifier(m) for m in args.models]
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.count]
    if not paths:
        ap.error(f"no photos under {args.images}")
    inputs = {}  # one preprocessed set per input pipeline
    for c in classifiers:
        if c.spec not in inputs:
            inputs[c.spec] = np.stack([load_model_input(p, c.spec) for p in paths])
    batches = [[inputs[c.spec][i : i + args.batch] for i in range(0, len(paths), args.batch)] for c in classifiers]
    for c, bs in zip(classifiers, batches):  # warm-up
        c.predict(bs[0])
    times: list[list[float]] = [[] for _ in classifiers]
    for _ in range(args.passes):
        for i, c in enumerate(classifiers):
            t0 = time.perf_counter()
            for b in batches[i]:
                c.predict(b)
            times[i].append((time.perf_counter() - t0) / len(paths) * 1000)
    base = statistics.median(times[0])
    print(f"{len(paths)} images, batches of {args.batch}, {args.passes} alternating passes; "
          "median ms per image (min-max):")
    for m, c, t in zip(args.models, classifiers, times):
        med = statistics.median(t)
        print(f"  {str(m):40s} {c.spec.size:4d} px {med:7.2f} ms  ({min(t):.2f}-{max(t):.2f})  "
              f"x{med / base:.2f} of the first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
