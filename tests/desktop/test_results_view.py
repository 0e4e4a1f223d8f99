"""The results model and filter, without a window: one row per path, flags, renames, sorting keys."""

from __future__ import annotations

from PySide6.QtCore import Qt

from desktop.inference_worker import Outcome
from desktop.results_view import Column, FlaggedFilter, ResultsModel, Row, make_thumbnail, nice_name
from engine.results import Classification, ImageResult

NAMES = ("sharp", "defocused_object_portrait", "defocused_blurred", "motion_blurred")


def _outcome(path: str, top: str | None, t: float = 1.0) -> Outcome:
    if top is None:
        return Outcome(ImageResult(path, None, "not an image, or an unsupported format"), 0, 0, t, False)
    probs = [0.7 if n == top else 0.1 for n in NAMES]
    return Outcome(ImageResult(path, Classification.from_probabilities(NAMES, probs)), 10, 20, t, False)


def test_rows_are_unique_per_path_and_follow_changes(qtbot) -> None:
    model = ResultsModel()
    model.add_outcomes([_outcome("/a.jpg", "sharp"), _outcome("/b.jpg", "motion_blurred"),
                        _outcome("/a.jpg", "motion_blurred")])
    assert model.rowCount() == 2
    assert model.row_for("/a.jpg").result.top_class == "motion_blurred"
    model.add_outcomes([_outcome("/b.jpg", None)])
    assert model.rowCount() == 2 and model.row_for("/b.jpg").failed
    assert model.rename("/a.jpg", "/c.jpg") and model.row_for("/c.jpg") is not None
    assert model.row_for("/a.jpg") is None
    assert model.remove("/b.jpg") and model.rowCount() == 1
    assert not model.remove("/b.jpg")


def test_flags_overrides_and_filter(qtbot) -> None:
    model = ResultsModel()
    proxy = FlaggedFilter()
    proxy.setSourceModel(model)
    model.add_outcomes([_outcome("/m.jpg", "motion_blurred"), _outcome("/d.jpg", "defocused_blurred"),
                        _outcome("/s.jpg", "sharp"), _outcome("/e.jpg", None)])
    model.set_blur_type("motion_blurred")
    assert model.counts() == (4, 1, 1)
    proxy.set_flagged_only(True)
    assert proxy.rowCount() == 1
    model.set_override(["/s.jpg"], "motion_blurred")
    assert proxy.rowCount() == 2  # the filter follows overrides at once
    model.set_blur_type(None)
    assert proxy.rowCount() == 3  # any blur type
    model.set_override(["/s.jpg"], None)
    assert proxy.rowCount() == 2
    row = model.row_for("/m.jpg")
    assert model.verdict(row) == nice_name("motion_blurred")
    model.set_blur_type("motion_blurred")
    assert model.verdict(row).startswith("Flagged")
    assert model.verdict(model.row_for("/e.jpg")).startswith("Error: not an image")
    idx = model.index(model.source_row("/m.jpg"), Column.TYPE_PROB)
    assert idx.data() == "70%"
    assert model.index(model.source_row("/m.jpg"), Column.VERDICT).data(Qt.ItemDataRole.BackgroundRole) is not None


def test_row_label_prefers_the_override() -> None:
    o = _outcome("/x.jpg", "sharp")
    row = Row(o.result, 1, 2, 3.0, "defocused_blurred")
    assert row.path == "/x.jpg"
    assert row.label == "defocused_blurred" and row.flagged("defocused_blurred") and not row.flagged("motion_blurred")


def test_thumbnail_of_a_bad_file_is_null(tmp_path) -> None:
    bad = tmp_path / "x.jpg"
    bad.write_text("no")
    assert make_thumbnail(str(bad)).isNull()
