"""`blurflag-train synthesize`: synthetic blur examples from a folder of sharp photos, with records and sheets."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine.preprocess import is_image_path
from trainer.dataset import WORK_LONG_SIDE, _load_working


def synthesize_folder(
    source: Path,
    out: Path,
    kinds: Sequence[str],
    count: int,
    seed: int = 0,
    contact_sheets: bool = False,
    log: Callable[[str], None] | None = None,
    mask_dir: Path | None = None,
    sheet_thumb: int = 160,
) -> int:
    """Write `count` images per kind into `out/<class>/`, a `records.csv` of kind and strength, and sheets."""
    from trainer import synthesis
    from trainer.masks import person_mask

    for k in kinds:
        if k not in synthesis.KIND_LABELS:
            raise ValueError(f"unknown kind {k!r}; choose from {', '.join(sorted(synthesis.KIND_LABELS))}")
    photos = sorted(p for p in Path(source).rglob("*") if p.is_file() and is_image_path(p))
    if not photos:
        raise ValueError(f"no images in {source}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    rows: list[dict[str, object]] = []
    sheets: dict[str, list[tuple[np.ndarray | str, str]]] = defaultdict(list)
    written = 0
    for kind in kinds:
        made = tries = 0
        while made < count and tries < count * 5:
            tries += 1
            src = photos[int(rng.integers(len(photos)))]
            try:
                base = _load_working(src, WORK_LONG_SIDE)
            except OSError as exc:
                (log or print)(f"skipped {src}: {exc}")
                continue
            mask = person_mask(base, src, mask_dir) if kind in synthesis.MASK_KINDS else None
            if kind in synthesis.MASK_KINDS and mask is None:
                continue  # no person found in this photo
            img, rec = synthesis.synthesize(base, kind, rng, mask=mask)
            jpeg, finish = synthesis.finish(img, rng)
            dest = out / rec.label / f"{src.stem}__{kind}_{rec.strength_px:.0f}px_{made:04d}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                raise FileExistsError(f"{dest} exists; use an empty output folder")
            dest.write_bytes(jpeg)
            rows.append({"file": str(dest.relative_to(out)), "source": str(src), "kind": kind, "label": rec.label,
                         "strength_px": round(rec.strength_px, 2), "params": json.dumps({**rec.params, **finish})})
            sheets[rec.label].append((str(dest), f"{kind} {rec.strength_px:.0f}px"))
            made += 1
            written += 1
        if made < count and log:
            log(f"{kind}: made {made} of {count} (too few photos with a person mask)")
    with open(out / "records.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "source", "kind", "label", "strength_px", "params"])
        w.writeheader()
        w.writerows(rows)
    if contact_sheets:
        for label, items in sheets.items():
            synthesis.contact_sheet(items[:48], str(out / f"contact_sheet_{label}.jpg"), thumb=sheet_thumb,
                                    columns=max(2, 1280 // sheet_thumb))
    return written
