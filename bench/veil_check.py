"""How a model copes with haze and fog: held-out race photos and held-out visible blurs under a bright veil.

The veil is uniform in linear light, x -> t * x + A * (1 - t) (A = 0.78), at transmissions t = 1 (none), 0.5, 0.35 and
0.25, plus one that thins from t = 0.3 at the top of the frame to 0.65 at the bottom (race photos only). Race photos:
every photo of the held-out race groups (validation and test, trainer.shipped) at 1,024 px; blurs: a fixed random
sample of the visible-strength blurs of a dataset's validation split (its synthetic JPEGs). Every image goes through
the engine as it ships (`--no-lift`: without the veil lift, `--whole-frame`: without the quadrant check either).
MODEL_CARD.md, "Haze and fog", reports its figures.

    .venv/bin/python bench/veil_check.py models WORK/ship2/dataset --shared ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.veil_cost import veiled  # noqa: E402
from engine import EngineConfig, load_classifier  # noqa: E402
from trainer.card import VISIBLE_PX  # noqa: E402
from trainer.dataset import read_manifest  # noqa: E402
from trainer.shipped import TEST_GROUPS, VAL_GROUPS  # noqa: E402

TRANSMISSIONS = (1.0, 0.5, 0.35, 0.25)
BLUR_CLASSES = ("defocused_blurred", "defocused_object_portrait", "motion_blurred")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model folder")
    ap.add_argument("dataset", type=Path, help="a prepared dataset (its validation split's visible blurs)")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    ap.add_argument("--blurs", type=int, default=240, help="visible blurs to sample (default 240)")
    ap.add_argument("--no-lift", action="store_true", help="the engine without its veil lift")
    ap.add_argument("--whole-frame", action="store_true", help="the network alone: no veil or dark lift, no quadrant check")
    args = ap.parse_args(argv)
    config = None
    if args.whole_frame:
        config = EngineConfig.whole_frame()
    elif args.no_lift:
        config = EngineConfig(veil_gate=None)
    clf = load_classifier(args.model, config)

    def verdict(img: Image.Image) -> str:
        return clf.names[int(np.argmax(clf.predict_image(img)))]

    groups = TEST_GROUPS | VAL_GROUPS
    with open(args.shared / "index.csv", newline="", encoding="utf-8") as fh:
        races = [args.shared / r["file"] for r in csv.DictReader(fh)
                 if r["group"] in groups and r["set"] in ("race", "race_misc")]
    flagged = Counter()
    for path in races:
        with Image.open(path) as src:
            img = (ImageOps.exif_transpose(src) or src).convert("RGB")
        img.thumbnail((1024, 1024))
        for t in TRANSMISSIONS:
            flagged[t] += verdict(veiled(img, t)) != "sharp"
        flagged["thinning"] += verdict(veiled(img, 0.3, thinning=0.35)) != "sharp"

    rows = [m for m in read_manifest(args.dataset) if m.split == "val" and m.label in BLUR_CLASSES and m.synth_file
            and m.strength_px >= VISIBLE_PX.get(m.kind, float("inf"))]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in sorted(rng.choice(len(rows), min(args.blurs, len(rows)), replace=False))]
    right: dict[float, Counter[str]] = {t: Counter() for t in TRANSMISSIONS}
    for m in rows:
        img = Image.open(args.dataset / m.synth_file).convert("RGB")
        for t in TRANSMISSIONS:
            right[t][m.label] += verdict(veiled(img, t)) == m.label
    totals = Counter(m.label for m in rows)

    print(f"model {args.model}, decision rule: {clf.decision_rule}")
    print(f"{len(races)} held-out race photos, {len(rows)} visible validation blurs "
          f"({' / '.join(str(totals[c]) for c in BLUR_CLASSES)}: defocus / subject defocus / motion)")
    print("| veil transmission t | race photos flagged | visible blurs right (defocus / subject defocus / motion) |")
    print("|---|---|---|")
    for t in TRANSMISSIONS:
        per = " / ".join(str(right[t][c]) for c in BLUR_CLASSES)
        print(f"| {t:g} | {flagged[t]}/{len(races)} | {sum(right[t].values())}/{len(rows)} ({per}) |")
    print(f"| 0.3 at the top to 0.65 at the bottom | {flagged['thinning']}/{len(races)} | — |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
