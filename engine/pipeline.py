"""Batch classification: a thread-per-core decode pool feeding batched inference on the caller's thread.

Decoding dominates: a 24 MP JPEG costs tens of milliseconds of entropy decoding even at libjpeg's 1/8
scale, the model a few. PIL releases the GIL while it decodes and resizes and onnxruntime while it runs,
so decode threads and inference overlap on all cores (bench/README.md has the figures). Results come
back in input order; at most ``window`` paths are in flight (decoding, or done and not yet yielded), whatever the
number of paths.

The quadrant check (engine.tiles) needs the frame again for the few images whose whole frame calls for it: rather
than hold every decoded frame until its batch is inferred (up to 18 MB each), those files are decoded a second
time, at the tiles' own scale, by the decode threads, while the caller's thread goes on with the next batches;
results still come back in input order. If that second read fails (the file was moved meanwhile), the whole
frame's answer stands.
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

_Loaded = np.ndarray | str  # a model input, or the error message for that file


def _load(path: str, classifier: BlurClassifier) -> _Loaded:
    try:
        return load_model_input(path, classifier.spec)
    except UnreadableImageError as exc:
        return str(exc)
    except Exception as exc:  # one file's unexpected failure must never stop the batch
        return f"unexpected error: {type(exc).__name__}: {exc}"


def default_workers() -> int:
    """Decode threads: one per core (inference runs on the caller's thread beside them)."""
    return max(1, os.cpu_count() or 1)


def window_size(workers: int, batch_size: int) -> int:
    """How many paths are decoded ahead: a batch being decoded while the previous one is inferred."""
    return max(batch_size * 2, workers * 2)


def classify_paths(
    classifier: BlurClassifier,
    paths: Iterable[str | os.PathLike[str]],
    blur_type: str | None = None,
    workers: int | None = None,
    batch_size: int = 8,
) -> Iterator[ImageResult]:
    """Yield one `ImageResult` per path, in order; a file that cannot be used gets a result with `error` set.

    Raises:
        InvalidBlurTypeError: at once, before any file is read, for an unknown `blur_type`.
        ValueError: for `batch_size` < 1 or negative `workers`.
    """
    classifier.check_blur_type(blur_type)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be positive (or 0/None for one per core), got {workers}")
    return _run(classifier, iter(paths), blur_type, workers or default_workers(), batch_size)


def _run(
    classifier: BlurClassifier, paths: Iterator[str | os.PathLike[str]], blur_type: str | None, workers: int,
    batch_size: int,
) -> Iterator[ImageResult]:
    window = window_size(workers, batch_size)
    pending: deque[tuple[str, Future[_Loaded]]] = deque()
    # Results in input order, not yet yielded: probabilities, an error message, or the quadrant check in flight.
    ready: deque[tuple[str, np.ndarray | str | Future[np.ndarray]]] = deque()
    size = classifier.spec.size
    batch = np.empty((batch_size, 3, size, size), dtype=np.float32)  # reused: no allocation per batch
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blurflag-decode")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) + len(ready) < window:
                try:
                    p = str(next(paths))
                except StopIteration:
                    exhausted = True
                    break
                pending.append((p, pool.submit(_load, p, classifier)))
            if not pending and not ready:
                return
            if pending:
                items = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                errors: dict[int, str] = {}
                n = 0
                for i, (_, future) in enumerate(items):
                    x = future.result()
                    if isinstance(x, str):
                        errors[i] = x
                    else:
                        batch[n] = x
                        n += 1
                rows = iter(_predict(classifier, batch[:n]) if n else [])
                for i, (p, _) in enumerate(items):
                    r = errors[i] if i in errors else next(rows)
                    if not isinstance(r, str) and classifier.wants_tiles(r):
                        ready.append((p, pool.submit(classifier.check_tiles, p, r)))
                    else:
                        ready.append((p, r))
            # Yield what is done; wait for a quadrant check in flight only once nothing else can go on meanwhile.
            while ready and (not isinstance(ready[0][1], Future) or ready[0][1].done() or not pending):
                p, entry = ready.popleft()
                done = entry.result() if isinstance(entry, Future) else entry
                if isinstance(done, str):
                    yield ImageResult(p, None, done, blur_type)
                else:
                    yield classifier.result_from_probs(p, done, blur_type)
    finally:
        # A consumer that stops early (break, Ctrl-C, closing the app) waits only for the decodes in flight.
        pool.shutdown(wait=True, cancel_futures=True)


def _predict(classifier: BlurClassifier, batch: np.ndarray) -> list[np.ndarray | str]:
    """Probability rows for a batch; if the batch call fails, each image alone (an error message where it fails)."""
    try:
        return list(classifier.predict(batch))
    except Exception:
        out: list[np.ndarray | str] = []
        for i in range(batch.shape[0]):
            try:
                out.append(classifier.predict(batch[i : i + 1])[0])
            except Exception as exc:
                out.append(f"inference failed: {type(exc).__name__}: {exc}")
        return out
