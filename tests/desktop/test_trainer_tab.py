"""The trainer tab: a real trainer subprocess run on a tiny dataset, event parsing, cancel, unavailability."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from desktop import settings as S
from desktop.trainer_tab import EXIT_CANCELLED, TrainerTab, TrainRequest, command_line, format_metrics
from tests.toydata import write_class_folders

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def test_command_line_follows_the_protocol() -> None:
    req = TrainRequest("/src", "/work", "/out", epochs=3, imgsz=64, batch=8, weights="w.pt", synth_per_class=5,
                       extra_examples=("/extra",))
    cmd = command_line(req)
    assert cmd[:5] == [sys.executable, "-m", "trainer.cli", "run", "/src"]
    assert cmd[-1] == "--events"
    joined = " ".join(cmd)
    for part in ("--work /work", "--model-out /out", "--epochs 3", "--imgsz 64", "--batch 8", "--weights w.pt",
                 "--synth-per-class 5", "--extra-examples /extra"):
        assert part in joined
    assert "--network" not in joined  # the default network (a trainer installed before the option runs it too)
    assert "--network mobilenetv2" in " ".join(command_line(TrainRequest("/s", "/w", "/o", network="mobilenetv2")))


def test_the_network_choice_fits_the_form_and_is_remembered(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    """MobileNetV2 trains at its start's size (224 px from ImageNet) and for a few epochs; the form follows the
    choice and the run gets it."""
    import trainer
    from desktop.trainer_tab import NETWORKS

    assert tuple(NETWORKS) == trainer.NETWORKS
    tab = TrainerTab(settings, overrides=dict, availability=lambda: (True, "ok"))
    qtbot.addWidget(tab)
    assert tab.network_combo.currentData() == "yolov8n-cls" and tab.imgsz_spin.isEnabled()
    tab.imgsz_spin.setValue(96)
    assert tab.epochs_spin.value() == 20
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("mobilenetv2"))
    assert not tab.imgsz_spin.isEnabled() and tab.imgsz_spin.value() == 224
    assert tab.epochs_spin.value() == 6 and "ImageNet" in tab.weights_edit.placeholderText()
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("yolov8n-cls"))
    assert tab.imgsz_spin.isEnabled() and tab.epochs_spin.value() == 20
    assert tab.imgsz_spin.value() == 96  # the user's own size comes back, not the other network's
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("mobilenetv2"))
    tab.epochs_spin.setValue(9)  # the user's own choice stays through a switch
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("yolov8n-cls"))
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("mobilenetv2"))
    assert tab.epochs_spin.value() == 9
    args = _arguments_of_a_run(qtbot, tab, tmp_path)
    assert args[args.index("--network") + 1] == "mobilenetv2" and "--imgsz" not in args  # the start's size
    assert settings.get(S.TRAIN_NETWORK) == "mobilenetv2"
    again = TrainerTab(settings, overrides=dict, availability=lambda: (True, "ok"))
    qtbot.addWidget(again)
    assert again.network_combo.currentData() == "mobilenetv2" and not again.imgsz_spin.isEnabled()
    again.network_combo.setCurrentIndex(again.network_combo.findData("yolov8n-cls"))
    assert again.imgsz_spin.value() == 96  # remembered, though MobileNetV2's 224 was on show when the run started


def test_unavailable_trainer_says_how_to_enable(qtbot, settings: S.Settings) -> None:
    tab = TrainerTab(settings, availability=lambda: (False, "Missing torch. pip install -e '.[train]'"))
    qtbot.addWidget(tab)
    assert "pip install -e '.[train]'" in tab.notice.text()
    assert not tab.start_button.isEnabled()
    assert tab.start_training() is False


def _fake_trainer(script: Path):
    def command(req: TrainRequest) -> list[str]:
        return [sys.executable, str(script), req.model_out]
    return command


_FAKE_OK = r"""
import json, sys
out = sys.argv[1]
def e(**k): print(json.dumps(k), flush=True)
print("plain text line", flush=True)
e(event="step", step="prepare", index=1, total=4)
e(event="log", message="prepared 12 images")
e(event="step", step="train", index=2, total=4)
for i in (1, 2): e(event="epoch", epoch=i, epochs=2, loss=1.0 / i, top1=0.4 * i)
sys.stderr.write("progress 10%\rprogress 100%\n")
e(event="step", step="export", index=3, total=4)
e(event="step", step="evaluate", index=4, total=4)
e(event="metrics", names=["sharp", "motion_blurred"], recall={"sharp": 0.9, "motion_blurred": 0.5},
  precision={"sharp": 0.8, "motion_blurred": 0.6}, sharp_false_positive_rate=0.1, accuracy=0.7,
  confusion=[[9, 1], [5, 5]], count=20)
e(event="done", model_dir=out)
"""

_FAKE_SLOW = r"""
import json, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print(json.dumps({"event": "step", "step": "train", "index": 2, "total": 4}), flush=True)
while not stop:
    time.sleep(0.02)
print(json.dumps({"event": "error", "message": "cancelled"}), flush=True)
sys.exit(130)
"""


def _tab(qtbot, settings: S.Settings, tmp_path: Path, script: str) -> TrainerTab:
    tab = TrainerTab(settings, availability=lambda: (True, "ok"))
    script_file = tmp_path / "fake_trainer.py"
    script_file.write_text(script)
    tab.process._command = _fake_trainer(script_file)
    qtbot.addWidget(tab)
    src = tmp_path / "src"
    src.mkdir()
    tab.source_edit.setText(str(src))
    return tab


def test_events_drive_progress_plot_metrics_and_model_switch(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    tab = _tab(qtbot, settings, tmp_path, _FAKE_OK)
    with qtbot.waitSignal(tab.process.run_finished, timeout=20000) as sig:
        assert tab.start_training()
    code, model_dir = sig.args
    assert code == 0 and model_dir.startswith(str(settings.user_models_dir))
    assert [p["epoch"] for p in tab.plot.points()] == [1, 2]
    log = tab.log.toPlainText()
    assert "plain text line" in log and "prepared 12 images" in log and "progress 100%" in log
    assert "progress 10%" not in log  # carriage-return redraws keep only the last state
    assert "90.0%" in tab.metrics_label.text() and "10.0%" in tab.metrics_label.text()
    assert tab.progress.value() == tab.progress.maximum()
    assert tab.use_button.isEnabled()
    with qtbot.waitSignal(tab.model_selected) as chosen:
        tab.use_button.click()
    assert chosen.args == [model_dir]
    tab.set_current_model(model_dir)
    with qtbot.waitSignal(tab.model_selected) as chosen:
        tab.bundled_button.click()
    assert chosen.args == [None]


def test_cancel_stops_the_subprocess(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    tab = _tab(qtbot, settings, tmp_path, _FAKE_SLOW)
    with qtbot.waitSignal(tab.process.step_started, timeout=20000):
        assert tab.start_training()
    assert tab.cancel_button.isEnabled()
    with qtbot.waitSignal(tab.process.run_finished, timeout=20000) as sig:
        tab.cancel_button.click()
    assert sig.args[0] == EXIT_CANCELLED
    assert "Cancelled" in tab.step_label.text()
    assert not tab.use_button.isEnabled() and tab.start_button.isEnabled()


def test_missing_source_folder_is_refused(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    tab = TrainerTab(settings, availability=lambda: (True, "ok"))
    qtbot.addWidget(tab)
    tab.source_edit.setText(str(tmp_path / "nope"))
    assert tab.start_training() is False
    assert "Choose a folder" in tab.step_label.text()


def test_format_metrics_lists_every_class() -> None:
    html = format_metrics({"names": ["sharp", "defocused_blurred"], "recall": {"sharp": 1.0, "defocused_blurred": 0.25},
                           "precision": {}, "sharp_false_positive_rate": 0.05, "accuracy": 0.8, "count": 10})
    assert "Sharp" in html and "Defocused" in html and "25.0%" in html and "5.0%" in html


def test_a_mobilenetv2_start_shows_its_own_input_size(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    """A fine-stem model as the start: the form shows its size (128 here, the fine stem's 448 px in real use) and the
    run leaves the size to the trainer, which reads it from the start; the bundled model's is 448 (its fine stem)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    make = ("import torch; from trainer.imagenet import build_network, export; "
            "torch.save(build_network(4, fine_stem=True).state_dict(), 'f.pt'); "
            "export('f.pt', 'fine', imgsz=128, fine_stem=True)")  # torch stays out of the Qt process
    subprocess.run([sys.executable, "-c", make], cwd=tmp_path, check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(repo)})
    tab = TrainerTab(settings, overrides=dict, availability=lambda: (True, "ok"))
    qtbot.addWidget(tab)
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("mobilenetv2"))
    tab.weights_edit.setText(str(tmp_path / "fine" / "blurflag.onnx"))
    assert not tab.imgsz_spin.isEnabled() and tab.imgsz_spin.value() == 128
    assert "128 px" in tab.imgsz_spin.toolTip()
    args = _arguments_of_a_run(qtbot, tab, tmp_path)
    assert "--imgsz" not in args and args[args.index("--weights") + 1].endswith("blurflag.onnx")
    tab.start_from_bundled_button.click()
    assert tab.imgsz_spin.value() == 448
    tab.weights_edit.setText(str(tmp_path / "missing.onnx"))  # nothing to read: the network's usual size
    assert tab.imgsz_spin.value() == 224
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("yolov8n-cls"))
    tab.weights_edit.setText(str(tmp_path / "fine" / "blurflag.onnx"))  # YOLOv8n-cls: any size, the user's
    assert tab.imgsz_spin.isEnabled()


def _tab_for_a_real_run(qtbot, settings: S.Settings, tmp_path: Path, per_class: int) -> TrainerTab:
    """A tab whose source is a tiny dataset of the four classes, for a run of the real trainer (the train extra)."""
    import trainer

    ok, why = trainer.available()
    assert ok, f"the train extra must be installed for this test: {why}"
    tab = TrainerTab(settings, overrides=dict)
    qtbot.addWidget(tab)
    tab.source_edit.setText(str(write_class_folders(tmp_path / "src", per_class=per_class, size=(96, 64))))
    return tab


def _finished_run(qtbot, tab: TrainerTab, timeout: int) -> str:
    """Start the tab's run and wait for it to finish successfully; the model folder it wrote."""
    with qtbot.waitSignal(tab.process.run_finished, timeout=timeout) as sig:
        assert tab.start_training()
    code, model_dir = sig.args
    assert code == 0, tab.log.toPlainText()[-3000:]
    return model_dir


@pytest.mark.slow
def test_real_trainer_run_on_a_tiny_dataset(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    """The real `python -m trainer.cli run --events` subprocess, driven through the tab."""
    tab = _tab_for_a_real_run(qtbot, settings, tmp_path, per_class=6)
    tab.resize(1100, 700)
    tab.show()
    tab.epochs_spin.setValue(2)
    tab.imgsz_spin.setValue(32)
    tab.batch_spin.setValue(8)
    tab.start_from_bundled_button.click()  # continue from the bundled model: its four classes are the dataset's
    assert Path(tab.weights_edit.text()).is_file()
    model_dir = _finished_run(qtbot, tab, timeout=240_000)
    assert "whole model of blurflag.onnx" in tab.log.toPlainText()
    assert Path(model_dir).parent == settings.user_models_dir
    assert [p["epoch"] for p in tab.plot.points()] == [1, 2]
    assert tab.state.metrics is not None and set(tab.state.metrics["recall"]) <= set(tab.state.metrics["names"])
    assert "Sharp false-positive rate" in tab.metrics_label.text()
    from engine import load_classifier

    clf = load_classifier(model_dir)
    assert len(clf.names) == 4
    assert (Path(model_dir) / "evaluation.json").exists()
    json.loads((Path(model_dir) / "evaluation.json").read_text())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert tab.grab().save(str(SCREENSHOTS / "trainer_tab_after_run.png"))


def test_real_mobilenetv2_run_continues_from_the_bundled_model(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    """The real trainer subprocess with the MobileNetV2 network, from the bundled model's first MobileNetV2."""
    tab = _tab_for_a_real_run(qtbot, settings, tmp_path, per_class=5)
    tab.network_combo.setCurrentIndex(tab.network_combo.findData("mobilenetv2"))
    tab.epochs_spin.setValue(1)
    tab.batch_spin.setValue(8)
    tab.start_from_bundled_button.click()
    model_dir = _finished_run(qtbot, tab, timeout=300_000)
    assert "starting from its member 1 of 3, the first MobileNetV2 network" in tab.log.toPlainText()
    assert [p["epoch"] for p in tab.plot.points()] == [1]
    from engine import load_classifier

    clf = load_classifier(model_dir)
    assert clf.spec.size == 448 and len(clf.names) == 4  # the bundled MobileNetV2's own size (fine stem)
    assert "448 px with a fine stem" in tab.log.toPlainText()
    assert tab.state.metrics is not None and (Path(model_dir) / "evaluation.json").exists()


_FAKE_ARGS = r"""
import json, sys
print(json.dumps({"event": "log", "message": "ARGS " + json.dumps(sys.argv[1:])}), flush=True)
print(json.dumps({"event": "done", "model_dir": sys.argv[-1]}), flush=True)
"""


def _arguments_of_a_run(qtbot, tab: TrainerTab, tmp_path: Path) -> list[str]:
    """Start the tab's run on an empty source folder with a fake trainer; the arguments the trainer got."""
    script = tmp_path / "fake.py"
    script.write_text(_FAKE_ARGS)
    tab.process._command = lambda req: [sys.executable, str(script), *command_line(req)[4:]]
    src = tmp_path / "src"
    src.mkdir()
    tab.source_edit.setText(str(src))
    with qtbot.waitSignal(tab.process.run_finished, timeout=20000):
        assert tab.start_training()
    line = next(x for x in tab.log.toPlainText().splitlines() if x.startswith("ARGS "))
    return json.loads(line[5:])


def test_overrides_become_extra_examples(qtbot, settings: S.Settings, tmp_path: Path) -> None:
    from tests.desktop.conftest import write_jpeg

    marked = write_jpeg(tmp_path / "photos" / "IMG_1.jpg", 1)
    tab = TrainerTab(settings, overrides=lambda: {str(marked): "motion_blurred"}, availability=lambda: (True, "ok"))
    qtbot.addWidget(tab)
    args = _arguments_of_a_run(qtbot, tab, tmp_path)
    extra = Path(args[args.index("--extra-examples") + 1])
    assert [p.name for p in (extra / "motion_blurred").iterdir()] == ["IMG_1.jpg"]
    assert marked.exists()
    assert settings.get(S.TRAIN_SOURCE) == str(tmp_path / "src")  # the form is remembered


def test_packaged_app_trains_in_the_installed_trainer_environment(qtbot, settings: S.Settings, monkeypatch,
                                                                  tmp_path: Path) -> None:
    """Frozen: the tab asks engine.trainer_env for the installed environment and runs the trainer there."""
    from desktop import trainer_tab
    from engine import trainer_env

    env = trainer_env.TrainerEnv(tmp_path / "trainer" / "bin" / "python", "installed")
    seen: list[Path] = []

    def fake_find(data_dir: Path, *args: object, **kwargs: object) -> trainer_env.TrainerStatus:
        seen.append(Path(data_dir))
        return trainer_env.TrainerStatus(True, "trainer available (installed)", env, "0.1.0")

    monkeypatch.setattr(trainer_tab, "IS_FROZEN", True)
    monkeypatch.setattr(trainer_env, "find_trainer", fake_find)
    tab = TrainerTab(settings)
    qtbot.addWidget(tab)
    assert seen == [settings.data_dir] and tab.available
    cmd = tab.process._command(TrainRequest("/src", "/work", "/out"))
    assert cmd[:5] == [str(env.python), "-I", "-m", "trainer.cli", "run"]
    assert "QT_PLUGIN_PATH" not in (tab.process._environment or {"QT_PLUGIN_PATH": "x"})


@pytest.mark.parametrize("installed", ["0.0.9", None])
def test_packaged_app_says_when_its_trainer_is_of_another_version(qtbot, settings: S.Settings, monkeypatch,
                                                                  tmp_path: Path, installed: str | None) -> None:
    """A trainer installed by another app version may lack newer options: the tab says to reinstall it."""
    from desktop import trainer_tab
    from engine import __version__, trainer_env

    env = trainer_env.TrainerEnv(tmp_path / "trainer" / "bin" / "python", "installed")
    version = installed or __version__
    monkeypatch.setattr(trainer_tab, "IS_FROZEN", True)
    monkeypatch.setattr(trainer_env, "find_trainer",
                        lambda *_a, **_k: trainer_env.TrainerStatus(True, "trainer available", env, version))
    tab = TrainerTab(settings)
    qtbot.addWidget(tab)
    assert tab.available
    assert ("install-trainer.sh" in tab.notice.text()) == (installed is not None)
    if installed:
        assert f"BlurFlag {installed}, this app {__version__}" in tab.notice.text()


def test_packaged_app_without_trainer_says_how_to_install(qtbot, settings: S.Settings, monkeypatch) -> None:
    from desktop import trainer_tab
    from engine import trainer_env

    monkeypatch.setattr(trainer_tab, "IS_FROZEN", True)
    monkeypatch.setattr(trainer_env, "find_trainer",
                        lambda *a, **k: trainer_env.TrainerStatus(False, "Training is not installed. Run install-trainer.sh"))
    tab = TrainerTab(settings)
    qtbot.addWidget(tab)
    assert "install-trainer.sh" in tab.notice.text() and not tab.start_button.isEnabled()
