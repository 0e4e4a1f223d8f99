"""The settings module: declared keys, typed values, INI path, schema version, app data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop import settings as S


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    ini = tmp_path / "a" / "blurflag.ini"
    s = S.Settings(ini, tmp_path / "data")
    assert s.get(S.FOLDERS) == [] and s.get(S.RECURSIVE) is False and s.get(S.SETTLE_SECONDS) == 1.0
    s.set(S.FOLDERS, ["/photos/a", "/photos/b b"])
    s.set(S.RECURSIVE, True)
    s.set(S.BLUR_TYPE, "")
    s.set(S.TRAIN_EPOCHS, 7)
    s.set(S.POLL_INTERVAL, 0.25)
    s.set(S.GEOMETRY, b"\x00\x01binary")
    s.sync()
    assert ini.exists()
    again = S.Settings(ini, tmp_path / "data")
    assert again.get(S.FOLDERS) == ["/photos/a", "/photos/b b"]
    assert again.get(S.RECURSIVE) is True
    assert again.get(S.BLUR_TYPE) == ""
    assert again.get(S.TRAIN_EPOCHS) == 7
    assert again.get(S.POLL_INTERVAL) == 0.25
    assert again.get(S.GEOMETRY) == b"\x00\x01binary"
    assert again.schema_version == S.SCHEMA_VERSION


def test_bad_values_fall_back_to_defaults(tmp_path: Path) -> None:
    ini = tmp_path / "s.ini"
    ini.write_text("[watch]\nrecursive=maybe\nfolders=not json\n[trainer]\nepochs=lots\n")
    s = S.Settings(ini, tmp_path / "d")
    assert s.get(S.RECURSIVE) is False
    assert s.get(S.FOLDERS) == []
    assert s.get(S.TRAIN_EPOCHS) == S.TRAIN_EPOCHS.default
    with pytest.raises(TypeError):
        s.set(S.RECURSIVE, "yes")  # type: ignore[arg-type]


def test_every_key_is_declared_once() -> None:
    keys = [o.key for o in S.options()]
    assert len(keys) == len(set(keys))
    with pytest.raises(ValueError):
        S._declare(S.FOLDERS.key, [])


def test_data_dir_explicit_then_ini_then_platform_default(tmp_path: Path) -> None:
    explicit = S.Settings(tmp_path / "1.ini", tmp_path / "explicit")
    assert explicit.data_dir == tmp_path / "explicit" and explicit.data_dir.is_dir()
    portable = S.Settings(tmp_path / "2.ini")
    portable.set(S.DATA_DIR, str(tmp_path / "beside-the-app"))
    assert portable.data_dir == tmp_path / "beside-the-app"
    default = S.Settings(tmp_path / "3.ini")
    # The test-wide fixture points the platform locations into a temporary home, never the real one.
    assert default.data_dir == S.default_data_dir()
    assert str(tmp_path.parent) in str(default.data_dir) or "pytest" in str(default.data_dir)
    assert Path.home() not in default.data_dir.parents


def test_default_ini_path_is_under_the_config_location() -> None:
    path = S.default_ini_path()
    assert path.name == "blurflag.ini" and Path.home() not in path.parents


def test_window_geometry_persists(qtbot, make_window, settings: S.Settings) -> None:
    window = make_window()
    window.resize(700, 520)
    window.show()
    window.set_blur_type(None)
    window.set_flagged_only(True)
    size = (window.width(), window.height())
    window.close()
    assert settings.get(S.GEOMETRY)
    again = make_window()
    again.show()
    assert (again.width(), again.height()) == size
    assert again.blur_type is None and again.proxy.flagged_only
