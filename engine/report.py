"""The CSV report: one row per photo with every class probability, the verdict, the override and any error.

Verdict rules, relative to the chosen blur type: ``flagged`` when the photo's label is that type
(with no blur type chosen: when it is any blur type, i.e. not sharp), ``ok`` otherwise, ``error``
when the photo could not be read and has no override. The label is the user's override when there
is one, else the model's top class; the probability columns always show what the model said.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from engine.fileio import atomic_write
from engine.model import SHARP
from engine.results import ImageResult
from engine.store import StoredResult

FIXED_COLUMNS = ("path", "status", "verdict", "top_class", "confidence", "blur_type", "blur_type_probability")
TAIL_COLUMNS = ("override", "error")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def verdict(result: ImageResult, blur_type: str | None, override: str | None = None) -> str:
    """``flagged``, ``ok`` or ``error`` for one photo (see the module docstring)."""
    label = override or result.top_class
    if label is None:
        return "error"
    if blur_type is None:
        return "flagged" if label != SHARP else "ok"
    return "flagged" if label == blur_type else "ok"


def write_csv(
    rows: Iterable[StoredResult] | Iterable[ImageResult], path: str | Path, blur_type: str | None
) -> int:
    """Write the report (UTF-8 with a BOM, so spreadsheet programs read non-ASCII paths) and return the row count.

    Args:
        rows: results, with or without their stored override.
        path: the CSV file; replaced atomically, so a failed export leaves no half-written file.
        blur_type: the chosen blur type; None uses each result's own (and flags any blur when it has none).

    Raises:
        ValueError: `blur_type` is not one of the classes in the results.
        OSError: the file cannot be written.
    """
    items: list[tuple[ImageResult, str | None]] = []
    for row in rows:
        if isinstance(row, StoredResult):
            items.append((row.result, row.override))
        else:
            items.append((row, None))
    classes: list[str] = []
    for result, _ in items:
        for name in result.probabilities:
            if name not in classes:
                classes.append(name)
    if blur_type is not None and classes and blur_type not in classes:
        raise ValueError(f"unknown blur type {blur_type!r}; the results have: {', '.join(classes)}")

    header = [*FIXED_COLUMNS, *(f"p_{name}" for name in classes), *TAIL_COLUMNS]
    target = Path(path)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    for result, override in items:
        chosen = blur_type if blur_type is not None else result.blur_type
        probs = result.probabilities
        writer.writerow(
            [
                result.path,
                "ok" if result.ok else "error",
                verdict(result, chosen, override),
                result.top_class or "",
                _number(result.confidence),
                chosen or "",
                _number(probs.get(chosen)) if chosen and result.ok else "",
                *(_number(probs.get(name)) if result.ok else "" for name in classes),
                override or "",
                result.error or "",
            ]
        )
    # UTF-8 with a BOM so spreadsheets read non-ASCII folder names; an ordinary, readable document (0644)
    atomic_write(target, buf.getvalue().encode("utf-8-sig"), mode=0o644)
    return len(items)
