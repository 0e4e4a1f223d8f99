"""Evaluate an exported model folder through the engine (what ships, not the .pt) on a labelled dataset."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.model import SHARP, EngineConfig, load_classifier
from engine.preprocess import is_image_path
from trainer.dataset import MANIFEST, MASK_KINDS, PLAN_FOLDERS, read_manifest


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    kind: str = "original"
    strength_px: float = 0.0
    group: str = ""
    extent_px: float = 0.0  # shake: the path's end-to-end spread, px at a 2048-px long side (0: not recorded)
    subject_share: float = 0.0  # mask kinds: the runner's share of the frame (0: not recorded)
    # subject kinds, held-out splits: how sharp the rest of the frame was (dataset.background_sharpness; None: not
    # recorded, datasets before 2026-12-06 late)
    background_sharpness: float | None = None
    # kinds made through a person mask (MASK_KINDS; a bokeh or a panning of someone else blurs the subject): the
    # audit's verdict on the photo's mask (SUBJECT_AUDIT: main, not_main, unclear; None: not audited)
    subject_audit: str | None = None


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    count: int
    total: int


@dataclass
class EvalReport:
    names: list[str]
    count: int
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, Interval]
    sharp_false_positive_rate: Interval
    confusion: list[list[int]]  # rows: true class, columns: predicted class, in `names` order
    errors: list[str] = field(default_factory=list)
    by_kind: dict[str, Interval] = field(default_factory=dict)  # fraction with the right class, per synthesis kind
    by_strength: dict[str, dict[str, Interval]] = field(default_factory=dict)  # kind -> strength bin -> right
    by_extent: dict[str, dict[str, Interval]] = field(default_factory=dict)  # the same by extent (EXTENT_KINDS)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.96) -> Interval:
    """Proportion with its 95% Wilson score interval."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), k, n)
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    r = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, (c - r) / d), min(1.0, (c + r) / d), k, n)


#: Kinds whose strength (the path's length) can overstate the blur's size: an oscillating shake path doubles back,
#: so a 26-px path may spread only 14 px. Their synthesis records the spread (`extent_px`), and evaluation reports
#: recall by it as well.
EXTENT_KINDS = ("shake",)


def _params(text: str) -> dict[str, Any]:
    """A manifest row's synthesis parameters (empty when absent or unreadable)."""
    try:
        params = json.loads(text) if text else {}
    except ValueError:
        return {}
    return params if isinstance(params, dict) else {}


def _number(params: dict[str, Any], key: str) -> float | None:
    """One number of them (None when absent or not a number)."""
    try:
        return None if params.get(key) is None else float(params[key])
    except (TypeError, ValueError):
        return None


#: The audit by eye of the person masks of the held-out photos and of the training split's race photos (next to this
#: file): is the masked person the photo's main, in-focus subject? A subject blur of someone else leaves a photo a photographer calls sharp (or, in a crowd, no
#: clear answer), so evaluation reports the subject kinds by this verdict as well (models/MODEL_CARD.md, "Which
#: subject-blur labels are right"). The verdicts judge the masks of trainer/masks.py's default (`--subject pose`); a
#: dataset made with other masks (`--subject nearest`) gets the same verdicts, which may not fit its masks.
SUBJECT_AUDIT = Path(__file__).with_name("subject_audit.csv")
AUDIT_VERDICTS = ("main", "not_main", "unclear")


def load_subject_audit(path: Path = SUBJECT_AUDIT) -> dict[str, str]:
    """photo (its path under the shared data folder) -> verdict; {} where the file is absent (e.g. an installed wheel).

    Raises ValueError on a verdict other than AUDIT_VERDICTS."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    audit = {}
    for row in csv.DictReader(line for line in lines if not line.startswith("#")):
        if row["verdict"] not in AUDIT_VERDICTS:
            raise ValueError(f"{path}: {row['photo']}: verdict {row['verdict']!r} is not one of {AUDIT_VERDICTS}")
        audit[row["photo"]] = row["verdict"]
    return audit


def audit_verdict(source: str, audit: dict[str, str]) -> str | None:
    """The audit's verdict on a source photo (matched by its path's end, wherever the shared folder is), or None."""
    path = Path(source).as_posix()
    for photo, verdict in audit.items():
        if path == photo or path.endswith("/" + photo):
            return verdict
    return None


def collect_samples(dataset_dir: Path, split: str = "val") -> list[Sample]:
    """Samples of one split: from `prepare`'s manifest (the synthetic JPEG or original file), or class folders."""
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / MANIFEST).exists():
        audit = load_subject_audit()
        verdicts: dict[str, str | None] = {}   # (one lookup per source photo)
        out = []
        for r in read_manifest(dataset_dir):
            if r.split != split or r.error:
                continue
            if r.synth_file:
                path = dataset_dir / r.synth_file
            elif r.kind == "original" and Path(r.source).exists():
                path = Path(r.source)
            else:
                path = dataset_dir / r.file
            params = _params(r.params)   # (parsed once per row)
            extent = _number(params, "extent_px") if r.kind in EXTENT_KINDS else None
            if r.kind in MASK_KINDS and r.source not in verdicts:
                verdicts[r.source] = audit_verdict(r.source, audit)
            out.append(Sample(path, r.label, r.kind, r.strength_px, r.group, extent or 0.0,
                              _number(params, "subject_share") or 0.0, _number(params, "background_sharpness"),
                              verdicts.get(r.source) if r.kind in MASK_KINDS else None))
        return out
    root = dataset_dir / split if (dataset_dir / split).is_dir() else dataset_dir
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = PLAN_FOLDERS.get(folder.name.strip().lower())
        if label is None:
            continue
        samples += [Sample(f, label) for f in sorted(folder.rglob("*")) if f.is_file() and is_image_path(f)]
    return samples


def _strength_bin(kind: str, s: float) -> str:
    edges = (0, 4, 8, 12, 16, 24, 32, 48, 64, 1e9)
    for lo, hi in zip(edges, edges[1:]):
        if lo <= s < hi:
            return f"{lo:g}-{hi:g}px" if hi < 1e9 else f">={lo:g}px"
    return "?"


def evaluate_samples(model_dir: Path | None, samples: Sequence[Sample], whole_frame: bool = False) -> EvalReport:
    """Run the engine over labelled samples and compute the report.

    Args:
        whole_frame: without the engine's quadrant check (engine.tiles) and veil and dark lifts (engine.preprocess):
            the network's whole-frame verdict alone.
    """
    classifier = load_classifier(model_dir, EngineConfig.whole_frame() if whole_frame else None)
    names = list(classifier.names)
    index = {n: i for i, n in enumerate(names)}
    confusion = [[0] * len(names) for _ in names]
    errors: list[str] = []
    predictions: list[dict[str, Any]] = []
    kind_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    strength_hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    extent_hits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    results = classifier.classify_paths([s.path for s in samples])
    for s, r in zip(samples, results, strict=True):
        if not r.ok or r.top_class is None:
            errors.append(f"{s.path}: {r.error}")
            continue
        confusion[index[s.label]][index[r.top_class]] += 1
        right = int(r.top_class == s.label)
        kind_hits[s.kind][0] += right
        kind_hits[s.kind][1] += 1
        for hits, size in ((strength_hits, s.strength_px), (extent_hits, s.extent_px)):
            if size > 0:
                b = hits[s.kind][_strength_bin(s.kind, size)]
                b[0] += right
                b[1] += 1
        predictions.append({"path": str(s.path), "label": s.label, "kind": s.kind, "strength_px": s.strength_px, "group": s.group,
                            "extent_px": s.extent_px, "subject_share": s.subject_share,
                            "background_sharpness": s.background_sharpness, "subject_audit": s.subject_audit,
                            "top_class": r.top_class,
                            "probabilities": r.probabilities})
    total = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(names)))
    recall = {n: wilson(confusion[i][i], sum(confusion[i])) for i, n in enumerate(names)}
    precision = {}
    for j, n in enumerate(names):
        col = sum(confusion[i][j] for i in range(len(names)))
        precision[n] = confusion[j][j] / col if col else float("nan")
    si = index[SHARP]
    sharp_total = sum(confusion[si])
    fp = wilson(sharp_total - confusion[si][si], sharp_total)
    return EvalReport(
        names=names, count=total, accuracy=correct / total if total else float("nan"), precision=precision,
        recall=recall, sharp_false_positive_rate=fp, confusion=confusion, errors=errors,
        by_kind={k: wilson(h, n) for k, (h, n) in sorted(kind_hits.items())},
        by_strength=_by_bin(strength_hits),
        by_extent=_by_bin(extent_hits),
        predictions=predictions,
    )


def _by_bin(hits: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, Interval]]:
    return {k: {b: wilson(h, n) for b, (h, n) in sorted(v.items(), key=lambda kv: float(kv[0].split("-")[0].strip(">=px")))}
            for k, v in sorted(hits.items())}


def evaluate(model_dir: Path | None, dataset_dir: Path, split: str = "val", whole_frame: bool = False) -> EvalReport:
    """`blurflag-train evaluate`: the engine's verdicts on one split of a prepared (or class-folder) dataset."""
    samples = collect_samples(dataset_dir, split)
    if not samples:
        raise ValueError(f"no labelled images for split {split!r} in {dataset_dir}")
    return evaluate_samples(model_dir, samples, whole_frame)


def _pct(i: Interval) -> str:
    if i.total == 0:
        return "n/a"
    return f"{i.value:6.1%} [{i.low:.1%}, {i.high:.1%}] ({i.count}/{i.total})"


def format_report(rep: EvalReport) -> str:
    """Human-readable report: per-class precision/recall, confusion matrix, sharp false-positive rate."""
    w = max(len(n) for n in rep.names) + 2
    lines = [f"images: {rep.count}   accuracy: {rep.accuracy:.1%}   unreadable: {len(rep.errors)}", ""]
    lines.append(f"{'class':<{w}}{'precision':>10}   recall [95% CI] (right/total)")
    for n in rep.names:
        p = rep.precision[n]
        lines.append(f"{n:<{w}}{(f'{p:.1%}' if p == p else 'n/a'):>10}   {_pct(rep.recall[n])}")
    lines.append("")
    lines.append(f"sharp false-positive rate (sharp flagged as any blur): {_pct(rep.sharp_false_positive_rate)}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    short = [n[:10] for n in rep.names]
    lines.append(" " * w + "".join(f"{s:>12}" for s in short))
    for n, row in zip(rep.names, rep.confusion):
        lines.append(f"{n:<{w}}" + "".join(f"{v:>12}" for v in row))
    if len(rep.by_kind) > 1:
        lines.append("")
        lines.append("right class by kind")
        for k, i in rep.by_kind.items():
            lines.append(f"  {k:<18}{_pct(i)}")
    for title, table in (("right class by blur strength (px at a 2048-px long side)", rep.by_strength),
                         ("right class by blur extent (the path's end-to-end spread, px at a 2048-px long side)",
                          rep.by_extent)):
        if table:
            lines += ["", title]
            for k, bins in table.items():
                lines.append(f"  {k}: " + ", ".join(f"{b} {i.value:.0%} ({i.count}/{i.total})" for b, i in bins.items()))
    if any(p.get("subject_audit") for p in rep.predictions):
        from trainer.card import negative_audit_split, subject_audit_split  # (card builds on this module)

        lines += ["", ("by the audit of the photo's mask (trainer/subject_audit.csv): subject blurs at visible strength "
                       "right, hard negatives flagged")]
        for split in (subject_audit_split(rep.predictions), negative_audit_split(rep.predictions)):
            for k, bins in split.items():
                lines.append(f"  {k}: " + ", ".join(f"{b} {h}/{n}" for b, (h, n) in bins.items()))
    return "\n".join(lines)


def write_report(rep: EvalReport, path: Path) -> None:
    Path(path).write_text(json.dumps(rep.to_json(), indent=1, default=float), encoding="utf-8")
