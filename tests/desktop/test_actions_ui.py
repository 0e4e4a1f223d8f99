"""Acting on results from the window: XMP sidecars (and opt-in embedding), CSV report, move/copy + undo, exports."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from desktop import settings as S
from tests.desktop.conftest import write_jpeg

TIMEOUT = 30_000


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _checked(qtbot, window, files: list[Path]) -> None:
    window.check_paths([str(p) for p in files])
    qtbot.waitUntil(lambda: len(window.model.rows()) == len(files), timeout=TIMEOUT)


def _wait_task(qtbot, task) -> None:
    assert task is not None
    qtbot.waitUntil(lambda: not task.running, timeout=TIMEOUT)
    window = task.parent()
    qtbot.waitUntil(lambda: not window.tasks_running(), timeout=TIMEOUT)
    assert window.task_errors == []


def test_xmp_sidecars_are_written_and_read_back(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    from engine import xmp

    files = [write_jpeg(tmp_path / n, i) for i, n in enumerate(["motion_1.jpg", "sharp_2.jpg", "defocus_3.jpg"])]
    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    _checked(qtbot, window, files)
    before = files[0].read_bytes()
    _wait_task(qtbot, window.write_xmp(embed=False))
    side = xmp.read_sidecar(files[0])
    assert side["xmp:Rating"] == "1"
    assert side["xmp:Label"] == xmp.blur_label("motion_blurred")
    assert not xmp.sidecar_path(files[1]).exists()  # only flagged photos get a sidecar
    assert not xmp.sidecar_path(files[2]).exists()  # defocus is not the chosen blur type
    assert files[0].read_bytes() == before  # sidecars never touch the photo

    # The photographer overrules the flag: writing again takes BlurFlag's label off.
    window.select_path(_real(files[0]))
    window.mark_selected("sharp")
    _wait_task(qtbot, window.write_xmp(embed=False))
    assert xmp.read_sidecar(files[0]).get("xmp:Label", "") == ""


def test_embedding_is_opt_in_and_keeps_the_verdict(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    from engine import xmp

    photo = write_jpeg(tmp_path / "motion_9.jpg", 9)
    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    _checked(qtbot, window, [photo])
    assert window.settings.get(S.EMBED_XMP) is False
    _wait_task(qtbot, window.write_xmp())  # the default: sidecar only
    assert read_embedded(photo) == {}
    _wait_task(qtbot, window.write_xmp(embed=True))
    assert xmp.read_embedded_xmp(photo)["xmp:Label"] == xmp.blur_label("motion_blurred")
    # The rewritten JPEG keeps its stored verdict: checking it again needs no new inference.
    classified = window.worker.classified_count
    window.check_paths([str(photo)])
    qtbot.waitUntil(lambda: window.model.row_for(_real(photo)).size == photo.stat().st_size, timeout=TIMEOUT)
    assert window.worker.classified_count == classified


def read_embedded(photo: Path) -> dict[str, str]:
    from engine import xmp

    return xmp.read_embedded_xmp(photo)


def test_csv_report_lists_every_result(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    files = [write_jpeg(tmp_path / n, i) for i, n in enumerate(["motion_1.jpg", "sharp_2.jpg"])]
    bad = tmp_path / "bad.jpg"
    bad.write_text("x")
    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    _checked(qtbot, window, [*files, bad])
    out = tmp_path / "report.csv"
    _wait_task(qtbot, window.save_report(str(out)))
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {"motion_1.jpg", "sharp_2.jpg", "bad.jpg"}
    assert by_name["motion_1.jpg"]["verdict"] == "flagged"
    assert by_name["sharp_2.jpg"]["verdict"] == "ok"
    assert by_name["bad.jpg"]["verdict"] == "error" and by_name["bad.jpg"]["error"]


def test_move_flagged_then_undo_while_watching(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    names = ["motion_1.jpg", "motion_2.jpg", "sharp_3.jpg"]
    files = [write_jpeg(folder / n, i) for i, n in enumerate(names)]
    from engine import xmp

    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    window.add_folder(folder)
    window.start_watching()
    qtbot.waitUntil(lambda: len(window.model.rows()) == 3, timeout=TIMEOUT)
    xmp.write_sidecar(files[0], 1, "Blur: motion")  # a sidecar travels with its photo
    originals = {p.name: p.read_bytes() for p in files}

    _wait_task(qtbot, window.move_flagged(copy=False))
    moved = folder / "_blurflag" / "motion_blurred"
    assert sorted(p.name for p in moved.glob("*.jpg")) == ["motion_1.jpg", "motion_2.jpg"]
    assert (moved / "motion_1.xmp").exists() and not (folder / "motion_1.xmp").exists()
    assert not files[0].exists() and files[2].exists()
    assert {r.path for r in window.model.rows()} == {_real(moved / "motion_1.jpg"), _real(moved / "motion_2.jpg"),
                                                     _real(files[2])}
    assert window.act_undo.isEnabled()
    assert window.bridge._watcher.wait_idle(10.0)
    qtbot.waitUntil(window.worker.is_idle, timeout=TIMEOUT)

    _wait_task(qtbot, window.undo_last())
    assert all(p.exists() for p in files) and (folder / "motion_1.xmp").exists()
    assert {p.name: p.read_bytes() for p in files} == originals  # nothing lost or altered
    assert not list(moved.glob("*.jpg"))
    assert window.bridge._watcher.wait_idle(10.0)
    qtbot.waitUntil(window.worker.is_idle, timeout=TIMEOUT)
    assert {r.path for r in window.model.rows()} == {_real(p) for p in files}
    assert window.worker.classified_count == 3  # moving and undoing needed no new inference
    assert not window.act_undo.isEnabled()


def test_copy_never_overwrites_and_undo_survives_a_restart(qtbot, make_window, fake_classifier,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "card"
    photo = write_jpeg(folder / "motion_1.jpg", 1)
    taken = folder / "_blurflag" / "motion_blurred" / "motion_1.jpg"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's file")
    window = make_window(classifier=fake_classifier)
    window.set_blur_type("motion_blurred")
    window.add_folder(folder)
    window.start_watching()
    qtbot.waitUntil(lambda: len(window.model.rows()) == 1, timeout=TIMEOUT)
    _wait_task(qtbot, window.move_flagged(copy=True))
    copies = sorted(p.name for p in taken.parent.iterdir() if p.suffix == ".jpg")
    assert len(copies) == 2 and taken.read_bytes() == b"someone else's file"
    assert photo.exists()
    window.close()

    again = make_window(classifier=fake_classifier)  # resumes watching and finds the journal
    qtbot.waitUntil(lambda: again.act_undo.isEnabled(), timeout=TIMEOUT)
    _wait_task(qtbot, again.undo_last())
    assert [p.name for p in taken.parent.iterdir() if p.suffix == ".jpg"] == ["motion_1.jpg"]
    assert taken.read_bytes() == b"someone else's file" and photo.exists()


def test_overrides_export_as_training_examples(qtbot, make_window, fake_classifier, tmp_path: Path) -> None:
    files = [write_jpeg(tmp_path / "in" / n, i) for i, n in enumerate(["motion_1.jpg", "sharp_2.jpg"])]
    window = make_window(classifier=fake_classifier)
    _checked(qtbot, window, files)
    window.select_path(_real(files[0]))
    window.mark_selected("sharp")
    window.select_path(_real(files[1]))
    window.mark_type(1)
    out = tmp_path / "examples"
    _wait_task(qtbot, window.export_examples(str(out)))
    assert [p.name for p in (out / "sharp").iterdir()] == ["motion_1.jpg"]
    first_type = fake_classifier.blur_types[0]
    assert [p.name for p in (out / first_type).iterdir()] == ["sharp_2.jpg"]
    assert all(p.exists() for p in files)  # copied, never moved


def test_switching_models_rechecks_and_keeps_overrides(qtbot, make_window, tmp_path: Path) -> None:
    import shutil

    from engine.paths import default_model_dir

    user_model = tmp_path / "my-model"
    shutil.copytree(default_model_dir(), user_model)
    photo = write_jpeg(tmp_path / "a.jpg", 1)
    window = make_window()
    _checked(qtbot, window, [photo])
    window.select_path(_real(photo))
    window.mark_selected("sharp")
    # Same weights, but a different model file: results are stored per model and checked again.
    (user_model / "MODEL_CARD.md").write_text("mine")
    with qtbot.waitSignal(window.model_changed):
        window.trainer_tab.model_selected.emit(str(user_model))  # the trainer tab's "Use this model"
    qtbot.waitUntil(lambda: len(window.model.rows()) == 1, timeout=TIMEOUT)
    assert window.model.rows()[0].override == "sharp"
    assert window.settings.get(S.MODEL_DIR) == str(user_model)
    assert window.trainer_tab.current_label.text().endswith(str(user_model))
    window.trainer_tab.bundled_button.click()  # one click back to the bundled model
    assert window.settings.get(S.MODEL_DIR) == "" and window.model_dir is None
    qtbot.waitUntil(lambda: len(window.model.rows()) == 1, timeout=TIMEOUT)
    assert window.use_model(str(tmp_path / "missing")) is False
    assert any("Cannot use this model" in m for m in window.messages)
