"""CSV report: columns, verdicts relative to the chosen blur type, overrides, errors, encoding."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engine.report import write_csv
from engine.results import Classification, ImageResult
from engine.store import ResultStore, StoredResult

NAMES = ("sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred")


def result(path: str, probs: tuple[float, ...], blur_type: str | None = None) -> ImageResult:
    return ImageResult(path, Classification.from_probabilities(NAMES, probs), None, blur_type)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_columns_verdicts_overrides_and_errors(tmp_path: Path) -> None:
    rows = [
        StoredResult(result("/p/motion.jpg", (0.1, 0.1, 0.2, 0.6)), 1, 1, 1.0, None),
        StoredResult(result("/p/defocus.jpg", (0.1, 0.1, 0.7, 0.1)), 1, 1, 1.0, None),
        StoredResult(result("/p/sharp.jpg", (0.9, 0.05, 0.03, 0.02)), 1, 1, 1.0, "motion_blurred"),
        StoredResult(result("/p/wrong.jpg", (0.05, 0.05, 0.1, 0.8)), 1, 1, 1.0, "sharp"),
        StoredResult(ImageResult("/p/broken.jpg", None, "truncated or incomplete file"), 1, 1, 1.0, None),
    ]
    out = tmp_path / "report.csv"
    assert write_csv(iter(rows), out, "motion_blurred") == 5
    with open(out, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f))
    assert header == [
        "path", "status", "verdict", "top_class", "confidence", "blur_type", "blur_type_probability",
        "p_sharp", "p_defocused_object_portrait", "p_defocused_blurred", "p_motion_blurred", "override", "error",
    ]  # fmt: skip
    got = {Path(r["path"]).name: r for r in read(out)}
    assert got["motion.jpg"]["verdict"] == "flagged"
    assert got["motion.jpg"]["top_class"] == "motion_blurred"
    assert float(got["motion.jpg"]["confidence"]) == pytest.approx(0.6)
    assert float(got["motion.jpg"]["blur_type_probability"]) == pytest.approx(0.6)
    assert got["motion.jpg"]["blur_type"] == "motion_blurred"
    assert got["defocus.jpg"]["verdict"] == "ok", "blurred, but not the chosen type"
    assert float(got["defocus.jpg"]["blur_type_probability"]) == pytest.approx(0.1)
    assert float(got["defocus.jpg"]["p_defocused_blurred"]) == pytest.approx(0.7)
    assert (got["sharp.jpg"]["verdict"], got["sharp.jpg"]["override"]) == ("flagged", "motion_blurred")
    assert got["sharp.jpg"]["top_class"] == "sharp", "the model's own answer stays visible"
    assert got["wrong.jpg"]["verdict"] == "ok"
    broken = got["broken.jpg"]
    assert (broken["status"], broken["verdict"], broken["error"]) == (
        "error",
        "error",
        "truncated or incomplete file",
    )
    assert broken["p_sharp"] == broken["confidence"] == broken["blur_type_probability"] == ""
    for row in got.values():
        if row["status"] == "ok":
            assert sum(float(row[f"p_{n}"]) for n in NAMES) == pytest.approx(1.0, abs=1e-5)


def test_without_a_chosen_type(tmp_path: Path) -> None:
    rows = [
        result("/p/a.jpg", (0.1, 0.6, 0.2, 0.1), blur_type="defocused_object_portrait"),
        result("/p/b.jpg", (0.1, 0.1, 0.7, 0.1)),
        result("/p/c.jpg", (0.7, 0.1, 0.1, 0.1)),
    ]
    out = tmp_path / "r.csv"
    assert write_csv(rows, out, None) == 3
    got = read(out)
    assert [(r["blur_type"], r["verdict"]) for r in got] == [
        ("defocused_object_portrait", "flagged"),
        ("", "flagged"),  # any blur counts when no type was chosen
        ("", "ok"),
    ]
    assert got[1]["blur_type_probability"] == ""


def test_non_ascii_paths_bad_blur_type_and_failed_writes(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    name = '/照片/2023上合昆明马拉松/IMG, "quoted".jpg'
    write_csv([result(name, (0.25, 0.25, 0.25, 0.25))], out, "defocused_blurred")
    assert out.read_bytes().startswith(b"\xef\xbb\xbf"), "BOM, so spreadsheets detect UTF-8"
    assert read(out)[0]["path"] == name
    with pytest.raises(ValueError, match="unknown blur type"):
        write_csv([result("/p/a.jpg", (0.25, 0.25, 0.25, 0.25))], tmp_path / "x.csv", "blurry")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(OSError):
        write_csv([], tmp_path / "missing-folder" / "r.csv", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"], "no temporary files left"
    assert write_csv([], tmp_path / "empty.csv", "motion_blurred") == 0
    assert read(tmp_path / "empty.csv") == []


def test_report_from_the_store(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.put(result("/p/a.jpg", (0.1, 0.1, 0.1, 0.7)), 1, 1)
        store.put(ImageResult("/p/b.jpg", None, "empty file (0 bytes)"), 0, 1)
        store.set_override("/p/b.jpg", "motion_blurred")
        assert write_csv(store.all(), tmp_path / "r.csv", "motion_blurred") == 2
    got = read(tmp_path / "r.csv")
    assert [(r["path"], r["status"], r["verdict"], r["override"]) for r in got] == [
        ("/p/a.jpg", "ok", "flagged", ""),
        ("/p/b.jpg", "error", "flagged", "motion_blurred"),  # the user's label decides
    ]
