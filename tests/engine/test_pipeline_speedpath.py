"""The batch pipeline's speed path keeps its contract: order, per-file errors, bounded look-ahead, clean stop."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import InvalidBlurTypeError, load_classifier, pipeline
from engine.model import BlurClassifier, EngineConfig
from engine.preprocess import InputSpec
from tests.toydata import scene


@pytest.fixture(scope="module")
def classifier() -> BlurClassifier:
    return load_classifier()


@pytest.fixture()
def mixed(tmp_path: Path) -> list[Path]:
    """Thirteen files: JPEGs of two sizes, a PNG with alpha, an EXIF-rotated JPEG and three bad files."""
    paths: list[Path] = []
    for i in range(13):
        if i == 2:
            p = tmp_path / "empty.jpg"
            p.write_bytes(b"")
        elif i == 6:
            p = tmp_path / "text.jpg"
            p.write_text("not an image")
        elif i == 9:
            p = tmp_path / "missing.jpg"
        elif i == 4:
            p = tmp_path / "alpha.png"
            scene(i, (160, 120)).convert("RGBA").save(p)
        elif i == 11:
            p = tmp_path / "rotated.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6
            scene(i, (300, 200)).save(p, quality=90, exif=exif.tobytes())
        else:
            p = tmp_path / f"img{i:02d}.jpg"
            scene(i, (640, 427) if i % 3 else (200, 300)).save(p, quality=92)
        paths.append(p)
    return paths


BAD = {2, 6, 9}


@pytest.mark.parametrize(("workers", "batch_size"), [(1, 1), (2, 3), (3, 8), (5, 64)])
def test_order_errors_and_values_match_single_checks(
    classifier: BlurClassifier, mixed: list[Path], workers: int, batch_size: int
) -> None:
    results = list(pipeline.classify_paths(classifier, mixed, "motion_blurred", workers, batch_size))
    assert [r.path for r in results] == [str(p) for p in mixed]
    assert [r.ok for r in results] == [i not in BAD for i in range(len(mixed))]
    for p, r in zip(mixed, results, strict=True):
        single = classifier.classify(p, "motion_blurred")
        assert r.error == single.error
        if r.ok:
            assert r.probabilities == pytest.approx(single.probabilities, abs=1e-5)
            assert r.blur_type == "motion_blurred" and r.detected == single.detected
    assert "not found" in (results[9].error or "")
    assert "empty" in (results[2].error or "")


def test_str_and_pathlike_inputs_give_str_paths(classifier: BlurClassifier, mixed: list[Path]) -> None:
    good = [p for i, p in enumerate(mixed) if i not in BAD][:4]
    inputs: list[str | Path] = [str(good[0]), good[1], str(good[2]), good[3]]
    results = list(pipeline.classify_paths(classifier, inputs))
    assert [r.path for r in results] == [str(p) for p in good]
    assert all(isinstance(r.path, str) and r.ok for r in results)


def test_empty_input_yields_nothing(classifier: BlurClassifier) -> None:
    assert list(pipeline.classify_paths(classifier, [])) == []
    assert list(pipeline.classify_paths(classifier, iter(()))) == []


def test_bad_arguments_raise_before_any_file_is_read(
    classifier: BlurClassifier, mixed: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pipeline, "load_model_input", lambda p, s: calls.append(str(p)))
    with pytest.raises(InvalidBlurTypeError, match="motion_blurred"):
        pipeline.classify_paths(classifier, mixed, "gaussian")  # no next(): the call itself raises
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.classify_paths(classifier, mixed, batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        pipeline.classify_paths(classifier, mixed, workers=-1)
    assert calls == []


def test_look_ahead_is_bounded_for_an_endless_stream(classifier: BlurClassifier, tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    scene(1).save(photo)
    pulled = 0

    def endless() -> Iterator[Path]:
        nonlocal pulled
        while True:
            pulled += 1
            yield photo

    workers, batch = 2, 4
    results = pipeline.classify_paths(classifier, endless(), workers=workers, batch_size=batch)
    taken = list(itertools.islice(results, 30))
    assert len(taken) == 30 and all(r.ok for r in taken)
    assert pulled <= 30 + pipeline.window_size(workers, batch)
    results.close()  # type: ignore[attr-defined]


def test_stopping_early_cancels_queued_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole frame only: had the model asked for a quadrant check of this toy scene, that check would queue behind
    # the blocked decodes and hold the first result back, which is not what this test is about.
    classifier = load_classifier(config=EngineConfig(tile_check=None))
    photo = tmp_path / "p.jpg"
    scene(2).save(photo)
    real = pipeline.load_model_input
    started = 0
    release = threading.Event()

    def load(path: str, spec: InputSpec) -> np.ndarray:
        nonlocal started
        started += 1  # one worker: no race
        if started > 8:
            release.wait(10)  # the worker is busy with the 9th file when the consumer stops
        return real(path, spec)

    monkeypatch.setattr(pipeline, "load_model_input", load)
    workers, batch = 1, 8
    results = pipeline.classify_paths(classifier, [photo] * 500, workers=workers, batch_size=batch)
    assert next(results).ok
    closer = threading.Thread(target=results.close)  # type: ignore[attr-defined]
    closer.start()
    closer.join(0.3)  # close() cancels what is queued, then waits for the decode in flight
    release.set()
    closer.join(10)
    assert not closer.is_alive()
    # Without cancelling, the whole look-ahead window would still be decoded after close().
    assert 9 <= started < pipeline.window_size(workers, batch)


def test_unexpected_loader_failure_is_that_files_error(
    classifier: BlurClassifier, mixed: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline.load_model_input
    victim = str(mixed[5])

    def flaky(path: str, spec: InputSpec) -> np.ndarray:
        if path == victim:
            raise RuntimeError("decoder exploded")
        return real(path, spec)

    monkeypatch.setattr(pipeline, "load_model_input", flaky)
    results = list(pipeline.classify_paths(classifier, mixed, workers=2, batch_size=4))
    assert results[5].error == "unexpected error: RuntimeError: decoder exploded"
    assert [r.ok for r in results] == [i not in BAD | {5} for i in range(len(mixed))]


def test_inference_failure_costs_only_the_offending_image(
    classifier: BlurClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for i in range(6):
        p = tmp_path / f"f{i}.png"
        (Image.new("RGB", (90, 60)) if i == 3 else scene(i, (90, 60))).save(p)  # f3 is all black
        paths.append(p)
    expected = [classifier.classify(p).probabilities for p in paths]
    real_predict = classifier.predict

    def picky(batch: np.ndarray) -> np.ndarray:
        if (batch.reshape(batch.shape[0], -1).max(axis=1) == 0).any():
            raise RuntimeError("bad tensor")
        return real_predict(batch)

    monkeypatch.setattr(classifier, "predict", picky)
    results = list(pipeline.classify_paths(classifier, paths, workers=2, batch_size=6))
    assert [r.ok for r in results] == [i != 3 for i in range(6)]
    assert results[3].error == "inference failed: RuntimeError: bad tensor"
    for i in (0, 1, 2, 4, 5):
        assert results[i].probabilities == pytest.approx(expected[i], abs=1e-5)


def test_concurrent_pipelines_on_one_classifier_agree(classifier: BlurClassifier, mixed: list[Path]) -> None:
    expected = [r.probabilities for r in pipeline.classify_paths(classifier, mixed, workers=1, batch_size=1)]
    got: dict[int, list[dict[str, float]]] = {}

    def work(k: int) -> None:
        got[k] = [r.probabilities for r in pipeline.classify_paths(classifier, mixed, workers=2, batch_size=3 + k)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == [0, 1, 2]
    for rows in got.values():
        for a, b in zip(rows, expected, strict=True):
            assert a == pytest.approx(b, abs=1e-5)


def test_classifier_method_is_the_same_pipeline(classifier: BlurClassifier, mixed: list[Path]) -> None:
    a = [r.to_dict() for r in classifier.classify_paths(mixed, "defocused_blurred", workers=2, batch_size=5)]
    b = [r.to_dict() for r in pipeline.classify_paths(classifier, mixed, "defocused_blurred", 1, 2)]
    assert a == b


def test_session_threads_block_instead_of_spinning(classifier: BlurClassifier) -> None:
    # Spinning onnxruntime threads would take CPU from the decode threads between batches.
    options = classifier._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
