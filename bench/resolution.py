"""Which input pipeline keeps the most blur evidence? A model-free measurement, per blur strength.

For held-out sharp photos from ../shared/data, each photo is made once sharp (finishing only) and once
blurred at a given strength (px at a 2048-px long side), then passed through each candidate input pipeline
(centre crop or whole-frame stretch, at several sizes). A fine-detail statistic (energy of the Laplacian at
the input resolution relative to the next octave) is computed, and the AUC of separating sharp from blurred
images by that statistic (unpaired: different photos) is printed per pipeline and strength. Higher AUC at
small strengths means the pipeline preserves the evidence the model needs.

    .venv/bin/python bench/resolution.py --photos 60
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.preprocess import InputSpec, to_model_image  # noqa: E402
from trainer import synthesis  # noqa: E402
from trainer.dataset import WORK_LONG_SIDE, _load_working  # noqa: E402
from trainer.shipped import split_sources  # noqa: E402

PIPELINES = {
    "center_crop 224": InputSpec(224, "center_crop"),
    "stretch 224": InputSpec(224, "stretch"),
    "stretch 256": InputSpec(256, "stretch"),
    "stretch 320": InputSpec(320, "stretch"),
    "stretch 384": InputSpec(384, "stretch"),
}


def fine_detail(img: Image.Image) -> float:
    g = np.asarray(img.convert("L"), dtype=np.float64)

    def lap_energy(a: np.ndarray) -> float:
        lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
        return float(np.mean(lap * lap)) + 1e-9

    half = g[: g.shape[0] // 2 * 2, : g.shape[1] // 2 * 2]
    half = half.reshape(half.shape[0] // 2, 2, half.shape[1] // 2, 2).mean(axis=(1, 3))
    return float(np.log(lap_energy(g) / lap_energy(half)))


def auc(neg: list[float], pos: list[float]) -> float:
    """P(stat of a sharp image > stat of a blurred image)."""
    a, b = np.asarray(neg)[:, None], np.asarray(pos)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--strengths", default="3,5,8,12,16,24")
    args = ap.parse_args()
    sources = split_sources(args.shared)["test"] + split_sources(args.shared)["val"]
    sources = sources[:: max(1, len(sources) // args.photos)][: args.photos]
    strengths = [float(s) for s in args.strengths.split(",")]
    kinds = {"defocus": 1.0, "linear_motion": 3.0}  # motion length ~3x a defocus radius for similar visibility
    rng = np.random.default_rng(0)
    stats: dict[tuple[str, str, float], list[float]] = {}
    t0 = time.perf_counter()
    for src in sources:
        base = _load_working(src.path, WORK_LONG_SIDE)
        variants: list[tuple[str, float, np.ndarray]] = [("sharp", 0.0, base)]
        for kind, mult in kinds.items():
            for s in strengths:
                variants.append((kind, s, synthesis.synthesize(base, kind, rng, strength_px=s * mult)[0]))
        for kind, s, arr in variants:
            jpeg, _ = synthesis.finish(arr, rng)
            for name, spec in PIPELINES.items():
                img = Image.open(io.BytesIO(jpeg)).convert("RGB")
                stats.setdefault((name, kind, s), []).append(fine_detail(to_model_image(img, spec)))
    print(f"{len(sources)} held-out photos, {time.perf_counter() - t0:.0f} s; AUC sharp-vs-blurred by fine-detail statistic")
    for kind, mult in kinds.items():
        print(f"\n{kind} (strength = {'radius' if kind == 'defocus' else 'length'} px at 2048 long side)")
        print(f"{'pipeline':<18}" + "".join(f"{s * mult:>8g}" for s in strengths))
        for name in PIPELINES:
            row = [auc(stats[(name, 'sharp', 0.0)], stats[(name, kind, s)]) for s in strengths]
            print(f"{name:<18}" + "".join(f"{v:>8.3f}" for v in row))


if __name__ == "__main__":
    main()
