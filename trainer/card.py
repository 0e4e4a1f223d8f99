"""Model-card metrics from `blurflag-train shipped`'s evaluation files, as Markdown.

Targets (models/MODEL_CARD.md): real sharp race photos from held-out races flagged <= 1%; synthetic blur
that is clearly visible (at least `VISIBLE_PX` at a 2048-px long side) recalled >= 97% per blur type with the
right type; bokeh and panning negatives flagged <= 2%; the three real triplets all right.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.dataset import MASK_KINDS, SHARP_BACKGROUND_MIN, SUBJECT_KINDS
from trainer.evaluate import Interval, wilson

#: "Clearly visible at delivery size", px at a 2048-px long side: disk radius for defocus, path length for motion.
VISIBLE_PX: dict[str, float] = {
    "defocus": 8.0, "subject_defocus": 8.0, "shake": 24.0, "linear_motion": 24.0, "subject_motion": 24.0,
}
BLUR_OF_KIND = {
    "defocus": "defocused_blurred", "subject_defocus": "defocused_object_portrait",
    "shake": "motion_blurred", "linear_motion": "motion_blurred", "subject_motion": "motion_blurred",
}


#: Bins of the runner's share of the frame (the synthesis records it for the mask kinds as `subject_share`).
SHARE_EDGES = (0.0, 0.03, 0.06, 0.12, 0.25, 1.0)
#: A background below this mean sharpness (`trainer.dataset.background_sharpness`: flat or already soft) leaves a
#: subject-blurred frame nothing sharp to show which part is out of focus: the gate `--subject-background` measured
#: (models/MODEL_CARD.md, "Subject defocus on a soft background").
SOFT_BACKGROUND = SHARP_BACKGROUND_MIN


def _count_bins(predictions: list[dict[str, Any]], names: Sequence[str],
                bin_of: Callable[[dict[str, Any]], int | None],
                hit: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, tuple[int, int]]]:
    """Hits / total per kind and bin (`bin_of`: an index into `names`, or None to leave a prediction out); empty bins
    are dropped."""
    out: dict[str, list[list[int]]] = {}
    for p in predictions:
        i = bin_of(p)
        if i is None:
            continue
        b = out.setdefault(p["kind"], [[0, 0] for _ in names])[i]
        b[0] += hit(p)
        b[1] += 1
    return {k: {n: (h, t) for n, (h, t) in zip(names, bins) if t} for k, bins in sorted(out.items())}


def _subject_bins(predictions: list[dict[str, Any]], names: Sequence[str],
                  bin_of: Callable[[dict[str, Any]], int | None]) -> dict[str, dict[str, tuple[int, int]]]:
    """Right / total of the subject blurs at visible strength, per kind and bin (`_count_bins`)."""
    def subject_bin(p: dict[str, Any]) -> int | None:
        return bin_of(p) if p["kind"] in SUBJECT_KINDS and _is_visible_blur(p) else None

    return _count_bins(predictions, names, subject_bin, lambda p: p["top_class"] == p["label"])


def subject_share_bins(predictions: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Right / total of the subject blurs at visible strength, per kind and bin of the runner's share of the frame.

    Predictions without a recorded share (datasets made before 2026-12-06 night) are left out."""
    names = [f"{lo:.0%}-{hi:.0%}" for lo, hi in zip(SHARE_EDGES[:-2], SHARE_EDGES[1:-1])] + [f">={SHARE_EDGES[-2]:.0%}"]

    def bin_of(p: dict[str, Any]) -> int | None:
        share = float(p.get("subject_share") or 0.0)
        return sum(share >= e for e in SHARE_EDGES[1:-1]) if share > 0 else None

    return _subject_bins(predictions, names, bin_of)


def subject_background_split(predictions: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Right / total of the subject blurs at visible strength, per kind, on a sharp and on a soft background.

    Predictions without a recorded background (training splits; datasets made before 2026-12-06 late) are left out."""
    names = (f"background >= {SOFT_BACKGROUND:g}", f"background < {SOFT_BACKGROUND:g}")

    def bin_of(p: dict[str, Any]) -> int | None:
        background = p.get("background_sharpness")
        return None if background is None else int(float(background) < SOFT_BACKGROUND)

    return _subject_bins(predictions, names, bin_of)


def subject_audit_split(predictions: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Right / total of the subject blurs at visible strength, per kind, by the audit of the photo's mask
    (trainer.evaluate.SUBJECT_AUDIT): the main subject on a sharp and on a soft background, someone else, no single
    subject, and photos the audit does not hold (e.g. person photos with their dataset's own mask).

    The first bin is where the label is right by the classes' definitions: the photo's runner out of focus, or
    moving, against a background that shows it."""
    names = (f"main subject, background >= {SOFT_BACKGROUND:g}", f"main subject, background < {SOFT_BACKGROUND:g}",
             "not the main subject", "no single subject", "not audited")

    def bin_of(p: dict[str, Any]) -> int:
        i = _verdict_bin(p)
        if i == 0:
            background = p.get("background_sharpness")
            return int(background is not None and float(background) < SOFT_BACKGROUND)
        return i + 1

    return _subject_bins(predictions, names, bin_of)


def _verdict_bin(p: dict[str, Any]) -> int:
    """0 main subject, 1 not the main subject, 2 no single subject, 3 not audited (`subject_audit`)."""
    return {"main": 0, "not_main": 1, "unclear": 2}.get(p.get("subject_audit") or "", 3)


def negative_audit_split(predictions: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Flagged / total of the hard negatives made through a person mask (bokeh, panning), by the audit of the mask
    (`subject_audit_split`'s verdicts, the background not split): a bokeh or a panning of someone other than the
    photo's subject blurs the subject, so its `sharp` label is wrong there. Predictions the audit does not hold count
    as "not audited"; empty bins are dropped."""
    names = ("main subject", "not the main subject", "no single subject", "not audited")
    def negative_bin(p: dict[str, Any]) -> int | None:
        return _verdict_bin(p) if p["kind"] in MASK_KINDS and p["kind"] not in SUBJECT_KINDS else None

    return _count_bins(predictions, names, negative_bin, lambda p: p["top_class"] != "sharp")


def _fmt(i: Interval) -> str:
    if i.total == 0:
        return "n/a"
    return f"{i.value:.1%} ({i.count}/{i.total}; 95% CI {i.low:.1%}–{i.high:.1%})"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _flagged(preds: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(p["top_class"] != "sharp" for p in preds), len(preds)


def headline(preds: list[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
    """The card's target checks on one split's predictions: (check, target, count, total) rows."""
    clean = [p for p in preds if p["kind"] == "clean"]
    real_race = [p for p in clean if p["group"].startswith(("race", "bibnumber"))]
    other_sharp = [p for p in clean if not p["group"].startswith(("race", "bibnumber"))]
    rows = [
        ("real sharp race photos (held-out races) flagged as any blur", "≤ 1%", *_flagged(real_race)),
        ("real bokeh photos (CUHK samples) flagged", "≤ 2%",
         *_flagged([p for p in other_sharp if p["group"].startswith("cuhk")])),
        ("other real sharp photos (Kwentar scenes, people) flagged", "—",
         *_flagged([p for p in other_sharp if not p["group"].startswith("cuhk")])),
    ]
    for kind in ("bokeh", "panning", "high_iso"):
        rows.append((f"synthetic {kind} negatives flagged", "≤ 2%" if kind != "high_iso" else "—",
                     *_flagged([p for p in preds if p["kind"] == kind])))
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for kind, thr in VISIBLE_PX.items():
        ps = [p for p in preds if p["kind"] == kind and p["strength_px"] >= thr]
        right = sum(p["top_class"] == p["label"] for p in ps)
        per_type[BLUR_OF_KIND[kind]][0] += right
        per_type[BLUR_OF_KIND[kind]][1] += len(ps)
        rows.append((f"synthetic {kind} ≥ {thr:g} px, right type", "≥ 97%", right, len(ps)))
    for t, (k, n) in sorted(per_type.items()):
        rows.append((f"**{t}** (all its kinds, visible strength)", "≥ 97%", k, n))
    return rows


def card_metrics(work: Path) -> str:
    """Markdown tables for the model card, from WORK/evaluation_{test,val,triplets}.json."""
    work = Path(work)
    test = _load(work / "evaluation_test.json")
    lines = ["### Held-out test split (races never trained on or used for model selection)", ""]
    lines.append("| check | target | result |")
    lines.append("|---|---|---|")
    for check, target, k, n in headline(test["predictions"]):
        lines.append(f"| {check} | {target} | {_fmt(wilson(k, n))} |")
    trip = _load(work / "evaluation_triplets.json")
    right = sum(p["top_class"] == p["label"] for p in trip["predictions"])
    lines.append(f"| the three real Kwentar triplets (9 photos) | 9/9 | {right}/{len(trip['predictions'])} |")
    lines += ["", "Triplet verdicts:", ""]
    for p in trip["predictions"]:
        probs = ", ".join(f"{k} {v:.2f}" for k, v in p["probabilities"].items())
        lines.append(f"- `{Path(p['path']).name}` (true {p['label']}): **{p['top_class']}** — {probs}")
    lines += ["", "### Recall by blur strength (test split, right class; px at a 2048-px long side)", ""]
    # (evaluations from before 2026-12-06 have no extent bins)
    for table, how in ((test["by_strength"], ""), (test.get("by_extent", {}),
                                                  " by extent (the path's end-to-end spread; its length above)")):
        for kind, bins in table.items():
            cells = ", ".join(f"{b}: {v['count']}/{v['total']}" for b, v in bins.items())
            lines.append(f"- {kind}{how}: {cells}")
    for split_by, how in ((subject_share_bins, "the runner's share of the frame"),
                          (subject_background_split, "how sharp the rest of the frame is (below "
                           f"{SOFT_BACKGROUND:g} nothing sharp is left to show which part is soft)"),
                          (subject_audit_split, "the audit of the photo's mask (trainer/subject_audit.csv)")):
        for kind, bins in split_by(test["predictions"]).items():
            cells = ", ".join(f"{b}: {k}/{n}" for b, (k, n) in bins.items())
            lines.append(f"- {kind} at visible strength by {how}: {cells}")
    for kind, bins in negative_audit_split(test["predictions"]).items():
        cells = ", ".join(f"{b}: {k}/{n}" for b, (k, n) in bins.items())
        lines.append(f"- {kind} negatives flagged, by the audit of the photo's mask: {cells}")
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


def _cell(k: int, n: int) -> str:
    return f"{k / n:.1%} ({k}/{n})" if n else "n/a"


#: False-alarm counts at which `compare` puts models side by side (see `blur_right_at_false_alarms`).
EQUAL_FALSE_ALARMS = (0, 1, 2, 4, 8)


def _is_visible_blur(p: dict[str, Any]) -> bool:
    """A blurred image that counts: real ones always, synthetic ones from the clearly-visible strength up."""
    return p["label"] != "sharp" and p["strength_px"] >= VISIBLE_PX.get(p["kind"], 0.0)


def blur_right_at_false_alarms(preds: list[dict[str, Any]], max_flagged: int) -> tuple[int, float] | None:
    """Visible blur found with the right type when `sharp`'s probability is weighted so that at most
    `max_flagged` sharp images are flagged: (blur right, that weight); None without probabilities.

    Models differ in how readily they say "blurred"; at the argmax one model may find more blur only by flagging
    more sharp photos. Weighting the sharp probability by w (w > 1: more cautious) moves each model along its own
    trade-off, so two models can be compared at the same number of false alarms. An image is called sharp exactly
    when w >= its ratio t = (largest blur probability) / (sharp probability): w = the (k+1)-th largest t among
    the sharp images is the smallest weight that flags at most k of them (ties count as sharp, as at t itself).
    """
    if not preds or any(not p.get("probabilities") for p in preds):
        return None

    def ratio(p: dict[str, Any]) -> tuple[float, str]:
        probs = p["probabilities"]
        blur = max((c for c in probs if c != "sharp"), key=lambda c: probs[c])
        return probs[blur] / max(probs.get("sharp", 0.0), 1e-12), blur

    sharp_t = sorted((ratio(p)[0] for p in preds if p["label"] == "sharp"), reverse=True)
    w = sharp_t[max_flagged] if max_flagged < len(sharp_t) else 0.0
    right = 0
    for p in preds:
        if _is_visible_blur(p):
            t, blur = ratio(p)
            right += blur == p["label"] and t > w
    return right, w


def compare_evaluations(named: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: the card's checks, recall by strength and paired differences for several models evaluated on
    the same split of the same jobs (e.g. one dataset rendered at two input sizes: its file names match)."""
    if len(named) < 2:
        raise ValueError("compare needs at least two evaluations")
    names = [n for n, _ in named]
    preds = [ev["predictions"] for _, ev in named]
    lines = ["| check | target | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    rows = [headline(p) for p in preds]
    for i, (check, target, _, _) in enumerate(rows[0]):
        lines.append(f"| {check} | {target} | " + " | ".join(_cell(r[i][2], r[i][3]) for r in rows) + " |")
    flagged = [_cell(*_flagged([p for p in ps if p["label"] == "sharp"])) for ps in preds]
    top1 = [_cell(sum(p["top_class"] == p["label"] for p in ps), len(ps)) for ps in preds]
    lines.append("| all sharp images flagged | — | " + " | ".join(flagged) + " |")
    lines.append("| top-1, all images | — | " + " | ".join(top1) + " |")
    lines += ["", "Right class by blur strength (px at a 2048-px long side):", "",
              "| kind | strength | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    kinds = sorted({k for _, ev in named for k in ev.get("by_strength", {})})
    for kind in kinds:
        bins = list(named[0][1].get("by_strength", {}).get(kind, {}))
        for b in bins:
            cells = []
            for _, ev in named:
                v = ev.get("by_strength", {}).get(kind, {}).get(b)
                cells.append(f"{v['count']}/{v['total']}" if v else "n/a")
            lines.append(f"| {kind} | {b} | " + " | ".join(cells) + " |")
    maybe = [[blur_right_at_false_alarms(ps, k) for k in EQUAL_FALSE_ALARMS] for ps in preds]
    equal = [[cell for cell in row if cell is not None] for row in maybe]
    if all(len(row) == len(EQUAL_FALSE_ALARMS) for row in equal):
        n_sharp = sum(p["label"] == "sharp" for p in preds[0])
        n_blur = sum(_is_visible_blur(p) for p in preds[0])
        lines += ["", f"Visible blur right (of {n_blur}) at equal false alarms: the sharp probability weighted so that "
                  f"at most k of the {n_sharp} sharp images are flagged (the weight in brackets; the engine uses 1):",
                  "", "| sharp flagged ≤ k | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for i, k in enumerate(EQUAL_FALSE_ALARMS):
            lines.append(f"| {k} | " + " | ".join(f"{row[i][0]} (w {row[i][1]:.3g})" for row in equal) + " |")
    # Paired by class folder and file name: one dataset rendered twice (e.g. at two input sizes) pairs up, and two
    # photos of the same name in different class folders stay two images.
    keyed = [{Path(p["path"]).parts[-2:]: p for p in ps} for ps in preds]
    if all(set(k) == set(keyed[0]) for k in keyed[1:]):
        lines += ["", f"Paired, {names[0]} against each other model on the same {len(keyed[0])} images "
                  "(right only in the first / right only in the other):", ""]
        for name, other in zip(names[1:], keyed[1:], strict=True):
            for title, pick in (("sharp", lambda p: p["label"] == "sharp"),
                                ("visible blur", _is_visible_blur)):
                a_only = b_only = 0
                for key, p in keyed[0].items():
                    if not pick(p):
                        continue
                    a, b = p["top_class"] == p["label"], other[key]["top_class"] == p["label"]
                    a_only += a and not b
                    b_only += b and not a
                lines.append(f"- {title}: {names[0]} only {a_only}, {name} only {b_only}")
    else:
        lines += ["", "(no paired counts: the evaluations are not on the same image names)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(card_metrics(Path(sys.argv[1])))
