"""The `blurflag` command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.toydata import scene


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for i in range(3):
        scene(i).save(tmp_path / f"a{i}.jpg")
    sub = tmp_path / "sub"
    sub.mkdir()
    scene(9).save(sub / "deep.png")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    return tmp_path


def test_json_lines_for_a_folder(folder: Path) -> None:
    code, out, _ = run(["classify", str(folder), "--json"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a0.jpg", "a1.jpg", "a2.jpg"]
    for r in rows:
        assert set(r) == {"path", "top_class", "confidence", "probabilities"}
        assert len(r["probabilities"]) == 4


def test_recursive_and_blur_type_keys(folder: Path) -> None:
    code, out, _ = run(["classify", str(folder), "-r", "--json", "--blur-type", "motion_blurred"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 4
    for r in rows:
        assert r["blur_type"] == "motion_blurred"
        assert r["detected"] == (r["top_class"] == "motion_blurred")
        assert r["blur_type_probability"] == r["probabilities"]["motion_blurred"]


def test_unreadable_file_gives_error_line_and_exit_1(folder: Path) -> None:
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    code, out, _ = run(["classify", str(folder / "a0.jpg"), str(bad), str(folder / "nope.jpg"), "--json"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert "top_class" in rows[0]
    assert set(rows[1]) == {"path", "error"} and set(rows[2]) == {"path", "error"}
    assert "not found" in rows[2]["error"]


def test_table_output(folder: Path) -> None:
    code, out, err = run(["classify", str(folder), "--blur-type", "defocused_blurred"])
    assert code == 0
    assert out.splitlines()[0].startswith("file")
    assert len(out.splitlines()) == 4
    assert "3 images, 0 unreadable" in err


@pytest.mark.parametrize(
    "argv",
    [["classify", "x.jpg", "--blur-type", "sharp"], ["classify"], ["frobnicate"], [], ["classify", "/nonexistent/dir/"]],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a if a != "/nonexistent/dir/" else str(empty) for a in argv]
    code, _, _ = run(argv)
    assert code == 2


def test_bad_model_folder_exits_2(folder: Path, tmp_path: Path) -> None:
    code, _, err = run(["classify", str(folder), "--model", str(tmp_path / "none")])
    assert code == 2 and "cannot load the model" in err


def test_console_entry_point_version() -> None:
    out = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("blurflag ")
