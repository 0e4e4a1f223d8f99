"""Batch classification: decode in a thread pool while the caller's thread runs batched inference.

PIL releases the GIL while decoding, so decoding scales across cores; results come back in input
order and at most a bounded number of decoded images is held in memory, whatever the folder size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import UnreadableImageError
from engine.preprocess import load_model_input
from engine.results import ImageResult

if TYPE_CHECKING:
    from engine.model import BlurClassifier


def _load(path: str, classifier: BlurClassifier) -> np.ndarray | str:
    try:
        return load_model_input(path, classifier.spec)
    except UnreadableImageError as exc:
        return str(exc)
    except Exception as exc:  # one file's unexpected failure must never stop the batch
        return f"unexpected error: {type(exc).__name__}: {exc}"


def default_workers() -> int:
    """Decode threads: one per core."""
    return max(1, os.cpu_count() or 1)


def classify_paths(
    classifier: BlurClassifier,
    paths: Iterable[str | os.PathLike[str]],
    blur_type: str | None = None,
    workers: int | None = None,
    batch_size: int = 8,
) -> Iterator[ImageResult]:
    """Yield one `ImageResult` per path, in order."""
    classifier.check_blur_type(blur_type)
    workers = workers or default_workers()
    window = max(batch_size * 2, workers * 2)
    pending: deque[tuple[str, Future[np.ndarray | str]]] = deque()
    it = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blurflag-decode") as pool:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    p = str(next(it))
                except StopIteration:
                    exhausted = True
                    break
                pending.append((p, pool.submit(_load, p, classifier)))
            if not pending:
                return
            take = min(batch_size, len(pending))
            items = [pending.popleft() for _ in range(take)]
            loaded = [(p, f.result()) for p, f in items]
            arrays = [x for _, x in loaded if isinstance(x, np.ndarray)]
            probs = classifier.predict(np.stack(arrays)) if arrays else np.empty((0, 0))
            k = 0
            for p, x in loaded:
                if isinstance(x, np.ndarray):
                    yield classifier.result_from_probs(p, probs[k], blur_type)
                    k += 1
                else:
                    yield ImageResult(p, None, x, blur_type)
