"""Fast checks of the packaging inputs: build.spec, the bundled resources and the packaging scripts.

The bundle itself is built and checked by scripts/build_bundle.sh and scripts/check_bundle.sh (CI).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "build.spec"
SAMPLES = ROOT / "resources" / "samples"
TRAINING_STACK = {"torch", "torchvision", "ultralytics", "cv2", "matplotlib"}


def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))


def _spec_list(name: str) -> list[str]:
    """The string items of the top-level list assigned to `name` in build.spec."""
    for node in _spec_tree().body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            assert isinstance(node.value, ast.List), name
            return [ast.literal_eval(item) for item in node.value.elts]
    raise AssertionError(f"build.spec has no {name} list")


def _list_lines(name: str) -> list[str]:
    """The source lines between `NAME = [` and its closing `]`."""
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = ["))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("]"))
    return lines[start + 1:end]


def test_spec_is_valid_python() -> None:
    compile(SPEC.read_text(encoding="utf-8"), str(SPEC), "exec")


def test_spec_excludes_the_training_stack() -> None:
    excludes = set(_spec_list("EXCLUDES"))
    assert TRAINING_STACK <= excludes
    assert not TRAINING_STACK & set(_spec_list("HIDDEN_IMPORTS"))


@pytest.mark.parametrize("name", ["EXCLUDES", "HIDDEN_IMPORTS"])
def test_every_hidden_import_and_exclude_has_a_reason(name: str) -> None:
    lines = [line for line in _list_lines(name) if line.strip()]
    assert lines
    for line in lines:
        item, _, reason = line.partition("#")
        assert item.strip().startswith('"') and len(reason.strip()) > 10, f"{name}: no reason given in {line!r}"


def test_spec_entry_points_exist_and_run_main() -> None:
    tree = _spec_tree()
    entry = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ENTRY_POINTS")
    assert isinstance(entry.value, ast.Dict)
    names = [ast.literal_eval(k) for k in entry.value.keys if k is not None]
    assert names == ["blurflag-app", "blurflag", "blurflag-train"]
    for module in ("desktop/app.py", "engine/cli.py", "engine/trainer_env.py"):
        source = (ROOT / module).read_text(encoding="utf-8")
        assert 'if __name__ == "__main__":' in source, f"{module} must run main() as a script"
    # The GUI is windowed (no console on Windows); the two command-line tools keep their console.
    assert re.search(r'CONSOLE = \{"blurflag-app": False, "blurflag": True, "blurflag-train": True\}', SPEC.read_text())


def test_spec_bundles_model_resources_and_licence() -> None:
    text = SPEC.read_text(encoding="utf-8")
    for needed in ('"models" / "blurflag.onnx"', '"models" / "class_names.json"', '"resources" / "icon.png"',
                   '"resources" / "samples"', '"LICENSE"'):
        assert needed in text
    assert "upx=True" not in text and "upx=False" in text
    # No silent try/except around collecting onnxruntime (or anything else): a broken build must fail.
    assert not any(isinstance(node, ast.Try) for node in ast.walk(_spec_tree()))


def test_samples_cover_every_class_of_the_bundled_model() -> None:
    names = json.loads((ROOT / "models" / "class_names.json").read_text())
    samples = sorted(SAMPLES.glob("*__*.jpg"))
    expected = {p.name.split("__", 1)[0] for p in samples}
    assert expected <= set(names), f"samples name unknown classes: {expected - set(names)}"
    assert {"sharp", "defocused_blurred", "motion_blurred"} <= expected
    assert (SAMPLES / "README.md").read_text().count("AGPL") >= 1  # provenance and licence recorded


def test_samples_are_readable_photos() -> None:
    from engine.model import load_classifier
    from engine.preprocess import open_image

    spec = load_classifier().spec
    for sample in sorted(SAMPLES.glob("*__*.jpg")):
        assert open_image(sample, spec).mode == "RGB"  # the engine's own reader accepts it
        assert min(Image.open(sample).size) >= 640, sample.name  # real photo size, as the app sees them


def test_blurred_samples_lost_detail() -> None:
    """The blurred samples really are blurred: far less edge energy than their sharp original."""
    import numpy as np

    def edge_energy(path: Path) -> float:
        grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        return float(np.mean(np.abs(np.diff(grey, axis=0))) + np.mean(np.abs(np.diff(grey, axis=1))))

    for sharp in SAMPLES.glob("sharp__*.jpg"):
        source = sharp.name.split("__", 1)[1]
        for blurred in SAMPLES.glob(f"*blurred__{source}"):
            assert edge_energy(blurred) < 0.6 * edge_energy(sharp), blurred.name


def test_icon() -> None:
    icon = Image.open(ROOT / "resources" / "icon.png")
    assert icon.size == (256, 256) and icon.mode == "RGBA"
    ico = Image.open(ROOT / "resources" / "icon.ico")
    assert ico.format == "ICO"


def test_package_extra_holds_pyinstaller() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(r.lower().startswith("pyinstaller") for r in project["optional-dependencies"]["package"])


@pytest.mark.parametrize("script", ["build_bundle.sh", "check_bundle.sh", "install_trainer.sh"])
def test_scripts_are_executable_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK)
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(path)], check=True)


def test_install_trainer_help_and_refusals(tmp_path: Path) -> None:
    """install-trainer.sh explains itself and refuses what it cannot do, without installing anything."""
    script = ROOT / "scripts" / "install_trainer.sh"
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--wheelhouse" in out and "--uninstall" in out
    bad = subprocess.run(["bash", str(script), "--frobnicate"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "unknown option" in bad.stderr
    gone = subprocess.run(["bash", str(script), "--uninstall", "--prefix", str(tmp_path / "none")],
                          capture_output=True, text=True, check=True)
    assert "No trainer environment" in gone.stdout
    keep = tmp_path / "not-a-venv"
    keep.mkdir()
    (keep / "photo.jpg").write_bytes(b"mine")
    subprocess.run(["bash", str(script), "--uninstall", "--prefix", str(keep)], check=True, capture_output=True)
    assert (keep / "photo.jpg").read_bytes() == b"mine"  # only a folder with pyvenv.cfg is ever removed


def test_install_trainer_refuses_a_full_disk_before_touching_it(tmp_path: Path) -> None:
    """Without room for torch the installer stops first, with a clear message, and creates nothing."""
    script = ROOT / "scripts" / "install_trainer.sh"
    prefix = tmp_path / "data" / "trainer"
    env = {**os.environ, "BLURFLAG_TRAINER_MIN_FREE_MB": str(10**12)}  # more than any disk has
    run = subprocess.run(["bash", str(script), "--prefix", str(prefix), "--python", sys.executable],
                         capture_output=True, text=True, check=False, env=env)
    assert run.returncode != 0
    assert f"needs about {10**12} MB free for {prefix}" in run.stderr
    assert f"{tmp_path} has " in run.stderr  # the nearest folder that exists is the one measured
    assert not (tmp_path / "data").exists()


def test_self_test_passes_with_the_bundled_model() -> None:
    """The bundled model classifies every bundled sample as its name says (what the frozen --self-test checks)."""
    import io

    from engine.selftest import run_self_test

    out = io.StringIO()
    assert run_self_test(out=out) == 0, out.getvalue()
    assert "self-test passed" in out.getvalue()
