"""ResultStore: versioned cache of results and overrides that survives restarts and concurrent use."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.results import Classification, ImageResult
from engine.store import ResultStore, StoredResult, StoreError, model_fingerprint

NAMES = ("sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred")


def result(
    path: str, probs: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4), blur_type: str | None = None
) -> ImageResult:
    return ImageResult(path, Classification.from_probabilities(NAMES, probs), None, blur_type)


def test_get_returns_only_the_matching_version(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        ok = result("/p/a.jpg", blur_type="motion_blurred")
        bad = ImageResult("/p/b.jpg", None, "truncated or incomplete file", "motion_blurred")
        store.put(ok, 1000, 123_456_789_012_345_678)
        store.put(bad, 10, 5)
        assert store.get("/p/a.jpg", 1000, 123_456_789_012_345_678) == ok
        got = store.get("/p/a.jpg", 1000, 123_456_789_012_345_678)
        assert got is not None and got.probabilities == ok.probabilities
        assert list(got.probabilities) == list(NAMES), "class order is kept"
        assert got.detected is True and got.blur_type_probability == pytest.approx(0.4)
        assert store.get("/p/a.jpg", 1001, 123_456_789_012_345_678) is None  # size changed
        assert store.get("/p/a.jpg", 1000, 123_456_789_012_345_679) is None  # mtime changed
        assert store.get("/p/other.jpg", 1000, 1) is None
        assert store.get("/p/b.jpg", 10, 5) == bad
        newer = result("/p/a.jpg", (0.7, 0.1, 0.1, 0.1))
        store.put(newer, 1001, 2)  # re-classified after a change: replaces the row
        assert store.get("/p/a.jpg", 1000, 123_456_789_012_345_678) is None
        assert store.get("/p/a.jpg", 1001, 2) == newer
        assert len(store) == 2


def test_every_result_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "results.db"
    store = ResultStore(db)
    store.put_many([(result(f"/p/{i:04d}.jpg", (0.25, 0.25, 0.25, 0.25)), i, i * 7) for i in range(300)])
    store.put(ImageResult("/p/broken.jpg", None, "empty file (0 bytes)"), 0, 1)
    store.set_override("/p/0001.jpg", "motion_blurred")
    # A second process opening the file while the first still runs (or crashed without closing) sees everything.
    other = ResultStore(db)
    assert len(other.all()) == 301
    other.close()
    store.close()
    store.close()  # idempotent
    with ResultStore(db) as reopened:
        rows = reopened.all()
        assert [r.result.path for r in rows] == sorted(f"/p/{i:04d}.jpg" for i in range(300)) + [
            "/p/broken.jpg"
        ]
        assert reopened.get("/p/0123.jpg", 123, 861) == result("/p/0123.jpg", (0.25, 0.25, 0.25, 0.25))
        assert reopened.get("/p/broken.jpg", 0, 1) == ImageResult(
            "/p/broken.jpg", None, "empty file (0 bytes)"
        )
        assert reopened.overrides() == {"/p/0001.jpg": "motion_blurred"}
        row = next(r for r in rows if r.result.path == "/p/0001.jpg")
        assert isinstance(row, StoredResult) and (row.size, row.mtime_ns, row.override) == (
            1,
            7,
            "motion_blurred",
        )
        assert row.classified_at > 0 and row.label == "motion_blurred"
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_overrides_rename_and_delete(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.put(result("/p/a.jpg"), 1, 1)
        store.put(result("/p/b.jpg"), 2, 2)
        store.set_override("/p/a.jpg", "sharp")
        store.set_override("/p/unclassified.jpg", "defocused_blurred")  # a label may come before a result
        with pytest.raises(ValueError, match="unknown class"):
            store.set_override("/p/a.jpg", "blurry")
        store.put(result("/p/a.jpg"), 3, 3)  # re-classification keeps the user's label
        kept = store.get_stored("/p/a.jpg")
        assert kept is not None and (kept.result, kept.size, kept.override) == (
            result("/p/a.jpg"),
            3,
            "sharp",
        )
        store.rename("/p/a.jpg", "/q/a.jpg")
        assert store.get("/p/a.jpg", 3, 3) is None
        assert store.get("/q/a.jpg", 3, 3) is not None
        assert store.overrides() == {"/q/a.jpg": "sharp", "/p/unclassified.jpg": "defocused_blurred"}
        store.rename("/q/a.jpg", "/p/b.jpg")  # onto an existing entry: replaces it
        stored = store.get_stored("/p/b.jpg")
        assert stored is not None and stored.size == 3 and stored.override == "sharp"
        store.set_override("/p/b.jpg", None)
        assert store.get_stored("/p/b.jpg") is not None
        assert "/p/b.jpg" not in store.overrides()
        store.set_override("/p/b.jpg", "motion_blurred")
        store.delete("/p/b.jpg")
        assert store.get_stored("/p/b.jpg") is None and "/p/b.jpg" not in store.overrides()
        assert [r.result.path for r in store.all()] == []


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:

        def work(t: int) -> None:
            for i in range(100):
                path = f"/p/{t}/{i}.jpg"
                store.put(result(path), i, t)
                assert store.get(path, i, t) is not None
                if i % 10 == 0:
                    store.set_override(path, "sharp")
                    store.all()

        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(work, t) for t in range(4)]:
                future.result()  # re-raises a worker's failure here
        assert len(store) == 400
        assert len(store.overrides()) == 40


def test_a_new_model_invalidates_results_but_not_overrides(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultStore(db, model_id="model-1") as store:
        store.put(result("/p/a.jpg"), 1, 1)
        store.set_override("/p/a.jpg", "sharp")
    with ResultStore(db, model_id="model-1") as store:
        assert store.get("/p/a.jpg", 1, 1) is not None
    with ResultStore(db, model_id="model-2") as store:
        assert store.get("/p/a.jpg", 1, 1) is None
        assert store.overrides() == {"/p/a.jpg": "sharp"}
    model = tmp_path / "model"
    model.mkdir()
    (model / "blurflag.onnx").write_bytes(b"onnx bytes")
    (model / "class_names.json").write_text('["sharp"]')
    first = model_fingerprint(model)
    assert first == model_fingerprint(model)
    (model / "blurflag.onnx").write_bytes(b"other onnx bytes")
    assert model_fingerprint(model) != first


def test_a_damaged_database_is_set_aside_and_a_newer_one_refused(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    db.write_bytes(b"this is not an sqlite file" * 100)
    with ResultStore(db) as store:
        store.put(result("/p/a.jpg"), 1, 1)
        assert len(store) == 1
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not an sqlite file")

    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer BlurFlag"):
        ResultStore(newer)
    store = ResultStore(tmp_path / "closed.db")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("/p/a.jpg", 1, 1)
