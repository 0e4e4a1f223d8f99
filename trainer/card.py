"""Model-card metrics from `blurflag-train shipped`'s evaluation files, as Markdown.

Targets (models/MODEL_CARD.md): real sharp race photos from held-out races flagged <= 1%; synthetic blur
that is clearly visible (at least `VISIBLE_PX` at a 2048-px long side) recalled >= 97% per blur type with the
right type; bokeh and panning negatives flagged <= 2%; the three real triplets all right.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from trainer.evaluate import Interval, wilson

#: "Clearly visible at delivery size", px at a 2048-px long side: disk radius for defocus, path length for motion.
VISIBLE_PX: dict[str, float] = {
    "defocus": 8.0, "subject_defocus": 8.0, "shake": 24.0, "linear_motion": 24.0, "subject_motion": 24.0,
}
BLUR_OF_KIND = {
    "defocus": "defocused_blurred", "subject_defocus": "defocused_object_portrait",
    "shake": "motion_blurred", "linear_motion": "motion_blurred", "subject_motion": "motion_blurred",
}


def _fmt(i: Interval) -> str:
    if i.total == 0:
        return "n/a"
    return f"{i.value:.1%} ({i.count}/{i.total}; 95% CI {i.low:.1%}–{i.high:.1%})"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def card_metrics(work: Path) -> str:
    """Markdown tables for the model card, from WORK/evaluation_{test,val,triplets}.json."""
    work = Path(work)
    test = _load(work / "evaluation_test.json")
    preds = test["predictions"]
    lines = ["### Held-out test split (races never trained on or used for model selection)", ""]
    real_race = [p for p in preds if p["kind"] == "clean" and p["group"].startswith(("race", "bibnumber"))]
    flagged = sum(p["top_class"] != "sharp" for p in real_race)
    lines.append("| check | target | result |")
    lines.append("|---|---|---|")
    lines.append(f"| real sharp race photos (held-out races) flagged as any blur | ≤ 1% | {_fmt(wilson(flagged, len(real_race)))} |")
    other_sharp = [p for p in preds if p["kind"] == "clean" and not p["group"].startswith(("race", "bibnumber"))]
    real_bokeh = [p for p in other_sharp if p["group"].startswith("cuhk")]
    lines.append(f"| real bokeh photos (CUHK samples) flagged | ≤ 2% | {_fmt(wilson(sum(p['top_class'] != 'sharp' for p in real_bokeh), len(real_bokeh)))} |")
    rest = [p for p in other_sharp if not p["group"].startswith("cuhk")]
    lines.append(f"| other real sharp photos (Kwentar scenes, people) flagged | — | {_fmt(wilson(sum(p['top_class'] != 'sharp' for p in rest), len(rest)))} |")
    for kind in ("bokeh", "panning", "high_iso"):
        ps = [p for p in preds if p["kind"] == kind]
        target = "≤ 2%" if kind != "high_iso" else "—"
        lines.append(f"| synthetic {kind} negatives flagged | {target} | {_fmt(wilson(sum(p['top_class'] != 'sharp' for p in ps), len(ps)))} |")
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for kind, thr in VISIBLE_PX.items():
        ps = [p for p in preds if p["kind"] == kind and p["strength_px"] >= thr]
        right = sum(p["top_class"] == p["label"] for p in ps)
        per_type[BLUR_OF_KIND[kind]][0] += right
        per_type[BLUR_OF_KIND[kind]][1] += len(ps)
        lines.append(f"| synthetic {kind} ≥ {thr:g} px, right type | ≥ 97% | {_fmt(wilson(right, len(ps)))} |")
    for t, (k, n) in sorted(per_type.items()):
        lines.append(f"| **{t}** (all its kinds, visible strength) | ≥ 97% | {_fmt(wilson(k, n))} |")
    trip = _load(work / "evaluation_triplets.json")
    right = sum(p["top_class"] == p["label"] for p in trip["predictions"])
    lines.append(f"| the three real Kwentar triplets (9 photos) | 9/9 | {right}/{len(trip['predictions'])} |")
    lines += ["", "Triplet verdicts:", ""]
    for p in trip["predictions"]:
        probs = ", ".join(f"{k} {v:.2f}" for k, v in p["probabilities"].items())
        lines.append(f"- `{Path(p['path']).name}` (true {p['label']}): **{p['top_class']}** — {probs}")
    lines += ["", "### Recall by blur strength (test split, right class; px at a 2048-px long side)", ""]
    for kind, bins in test["by_strength"].items():
        cells = ", ".join(f"{b}: {v['count']}/{v['total']}" for b, v in bins.items())
        lines.append(f"- {kind}: {cells}")
    for split, ev in (("test", test), ("val", _load(work / "evaluation_val.json"))):
        lines += ["", f"### Per-class recall and confusion ({split} split, {ev['count']} images)", ""]
        names = ev["names"]
        lines.append("| true \\ predicted | " + " | ".join(names) + " | recall |")
        lines.append("|---|" + "---|" * (len(names) + 1))
        for n, row in zip(names, ev["confusion"], strict=True):
            r = ev["recall"][n]
            lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + f" | {_fmt(Interval(**r))} |")
        fp = ev["sharp_false_positive_rate"]
        lines.append("")
        lines.append(f"Sharp false-positive rate ({split}): {_fmt(Interval(**fp))}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(card_metrics(Path(sys.argv[1])))
