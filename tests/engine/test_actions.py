"""File actions: move/copy flagged photos with sidecars, never overwrite, undo exactly, across restarts."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import engine.actions as actions_mod
from engine.actions import (
    ActionJournal,
    FileAction,
    export_training_examples,
    load_journals,
    move_flagged,
    undo,
)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (journals aside) with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("journal-")
    }


@pytest.fixture
def shoot(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"photo a")
    (folder / "a.xmp").write_bytes(b"<x:xmpmeta>a</x:xmpmeta>")
    (folder / "b.jpg").write_bytes(b"photo b")
    (folder / "b.jpg.xmp").write_bytes(b"<x:xmpmeta>b darktable</x:xmpmeta>")
    (folder / "c.jpg").write_bytes(b"photo c")
    (folder / "keep.jpg").write_bytes(b"not flagged")
    return folder


def test_move_sorts_photos_with_their_sidecars_and_undo_restores_exactly(shoot: Path) -> None:
    before = snapshot(shoot)
    journal = move_flagged({"motion_blurred": [str(shoot / "a.jpg"), str(shoot / "b.jpg")],
                            "defocused_blurred": [str(shoot / "c.jpg")]})  # fmt: skip
    flagged = shoot / "_blurflag"
    assert journal.errors == ()
    assert set(journal.actions) == {
        FileAction("move", str(shoot / "a.jpg"), str(flagged / "motion_blurred" / "a.jpg")),
        FileAction("move", str(shoot / "a.xmp"), str(flagged / "motion_blurred" / "a.xmp")),
        FileAction("move", str(shoot / "b.jpg"), str(flagged / "motion_blurred" / "b.jpg")),
        FileAction("move", str(shoot / "b.jpg.xmp"), str(flagged / "motion_blurred" / "b.jpg.xmp")),
        FileAction("move", str(shoot / "c.jpg"), str(flagged / "defocused_blurred" / "c.jpg")),
    }
    assert sorted(p.name for p in shoot.iterdir()) == ["_blurflag", "keep.jpg"]
    assert (flagged / "motion_blurred" / "a.jpg").read_bytes() == b"photo a"
    assert journal.journal_path is not None and Path(journal.journal_path).parent == flagged
    saved = json.loads(Path(journal.journal_path).read_text(encoding="utf-8"))
    assert len(saved["actions"]) == 5
    assert undo(journal) == []
    assert snapshot(shoot) == before
    assert not flagged.exists(), "the emptied folders and the journal are cleaned up"


def test_names_are_never_overwritten(shoot: Path) -> None:
    dest = shoot / "_blurflag" / "motion_blurred"
    dest.mkdir(parents=True)
    (dest / "a.jpg").write_bytes(b"an earlier a.jpg")
    (dest / "a (1).xmp").write_bytes(b"someone's sidecar")  # blocks "a (1)" for the pair
    journal = move_flagged({"motion_blurred": [str(shoot / "a.jpg")]})
    assert [Path(a.dest).name for a in journal.actions] == ["a (2).jpg", "a (2).xmp"]
    assert (dest / "a.jpg").read_bytes() == b"an earlier a.jpg"
    assert (dest / "a (1).xmp").read_bytes() == b"someone's sidecar"
    assert (dest / "a (2).jpg").read_bytes() == b"photo a"
    assert undo(journal) == []
    assert (shoot / "a.jpg").read_bytes() == b"photo a" and (shoot / "a.xmp").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["a (1).xmp", "a.jpg"]


def test_the_no_clobber_move_works_without_hard_links(shoot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object, *, follow_symlinks: bool = True) -> None:
        raise PermissionError(1, "hard links not supported here")

    monkeypatch.setattr(os, "link", no_links)
    target = shoot / "_blurflag" / "motion_blurred"
    target.mkdir(parents=True)
    (target / "c.jpg").write_bytes(b"taken")
    journal = move_flagged({"motion_blurred": [str(shoot / "c.jpg")]})
    assert [Path(a.dest).name for a in journal.actions] == ["c (1).jpg"]
    assert (target / "c.jpg").read_bytes() == b"taken"
    assert undo(journal) == []
    assert (shoot / "c.jpg").read_bytes() == b"photo c"


def test_undo_survives_a_restart_and_never_overwrites(shoot: Path) -> None:
    journal = move_flagged({"motion_blurred": [str(shoot / "a.jpg"), str(shoot / "c.jpg")]})
    (shoot / "c.jpg").write_bytes(b"a new photo with the old name")
    # "Restart": only what is on disk is left.
    (loaded,) = load_journals(shoot)
    assert set(loaded.actions) == set(journal.actions) and loaded.journal_path == journal.journal_path
    errors = undo(loaded)
    assert len(errors) == 1 and "c.jpg" in errors[0] and "exists again" in errors[0]
    assert (shoot / "c.jpg").read_bytes() == b"a new photo with the old name", "not overwritten"
    assert (shoot / "_blurflag" / "motion_blurred" / "c.jpg").read_bytes() == b"photo c", "not lost"
    assert (shoot / "a.jpg").read_bytes() == b"photo a" and (shoot / "a.xmp").exists()
    (remaining,) = load_journals(shoot)  # what could not be undone stays undoable
    assert remaining.actions == (
        FileAction("move", str(shoot / "c.jpg"), str(shoot / "_blurflag" / "motion_blurred" / "c.jpg")),
    )
    (shoot / "c.jpg").rename(shoot / "c-new.jpg")
    assert undo(remaining) == []
    assert (shoot / "c.jpg").read_bytes() == b"photo c"
    assert load_journals(shoot) == []


def test_copy_mode_and_its_undo_delete_only_identical_copies(shoot: Path) -> None:
    before = snapshot(shoot)
    journal = move_flagged(
        {"defocused_object_portrait": [str(shoot / "a.jpg"), str(shoot / "b.jpg")]}, copy=True
    )
    assert {a.op for a in journal.actions} == {"copy"} and len(journal.actions) == 4
    copies = shoot / "_blurflag" / "defocused_object_portrait"
    assert (copies / "a.jpg").read_bytes() == b"photo a" and (copies / "b.jpg.xmp").exists()
    assert {k: v for k, v in snapshot(shoot).items() if not k.startswith("_blurflag")} == before
    (copies / "b.jpg").write_bytes(b"edited copy")
    errors = undo(journal)
    assert len(errors) == 1 and "differs" in errors[0]
    assert (copies / "b.jpg").read_bytes() == b"edited copy", "an edited copy is kept"
    assert not (copies / "a.jpg").exists() and not (copies / "a.xmp").exists()
    assert {k: v for k, v in snapshot(shoot).items() if not k.startswith("_blurflag")} == before


def test_a_sidecar_shared_with_a_raw_file_is_copied_not_moved(tmp_path: Path) -> None:
    (tmp_path / "IMG_1.JPG").write_bytes(b"jpeg")
    (tmp_path / "IMG_1.CR2").write_bytes(b"raw")
    (tmp_path / "IMG_1.xmp").write_bytes(b"raw edits")
    journal = move_flagged({"motion_blurred": [str(tmp_path / "IMG_1.JPG")]})
    assert [(a.op, Path(a.source).name) for a in journal.actions] == [
        ("move", "IMG_1.JPG"),
        ("copy", "IMG_1.xmp"),
    ]
    assert (tmp_path / "IMG_1.xmp").read_bytes() == b"raw edits", "the RAW keeps its sidecar"
    assert (tmp_path / "_blurflag" / "motion_blurred" / "IMG_1.xmp").read_bytes() == b"raw edits"
    assert undo(journal) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_1.CR2", "IMG_1.JPG", "IMG_1.xmp"]


def test_bad_items_are_reported_and_the_rest_goes_on(shoot: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "d.jpg").write_bytes(b"photo d")
    (shoot / "_blurflag" / "motion_blurred").mkdir(parents=True)
    (shoot / "_blurflag" / "motion_blurred" / "old.jpg").write_bytes(b"sorted before")
    journal = move_flagged(
        {
            "motion_blurred": [str(shoot / "missing.jpg"), str(shoot / "a.jpg"), str(other / "d.jpg"),
                               str(shoot / "_blurflag" / "motion_blurred" / "old.jpg"), str(shoot / "a.jpg")],
            "../escape": [str(shoot / "c.jpg")],
        }
    )  # fmt: skip
    messages = "\n".join(journal.errors)
    assert "missing.jpg: file not found" in messages
    assert "already in a _blurflag folder" in messages
    assert "listed twice" in messages
    assert "not a usable folder name" in messages
    assert (shoot / "c.jpg").exists() and not (tmp_path / "escape").exists()
    assert sorted(Path(a.source).name for a in journal.actions) == ["a.jpg", "a.xmp", "d.jpg"]
    assert len(journal.journal_paths) == 2, "one journal per source folder"
    assert [len(j.actions) for j in load_journals(shoot)] == [2] and [
        len(j.actions) for j in load_journals(other)
    ] == [1]
    assert undo(journal) == []
    assert (shoot / "a.jpg").exists() and (other / "d.jpg").exists()
    assert load_journals(shoot) == [] and load_journals(other) == []
    assert not (other / "_blurflag").exists()
    assert (shoot / "_blurflag" / "motion_blurred" / "old.jpg").read_bytes() == b"sorted before"


def test_an_interrupted_move_can_still_be_undone(shoot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = actions_mod._relocate
    calls: list[Path] = []

    def crash_on_second(src: Path, dest_dir: Path, copy: bool, errors: list[str]) -> list[FileAction]:
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the app is killed half-way
        return real(src, dest_dir, copy, errors)

    monkeypatch.setattr(actions_mod, "_relocate", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        move_flagged({"motion_blurred": [str(shoot / "a.jpg"), str(shoot / "b.jpg"), str(shoot / "c.jpg")]})
    monkeypatch.undo()
    assert not (shoot / "a.jpg").exists()
    (journal,) = load_journals(shoot)  # the write-ahead journal lists the planned moves
    assert undo(journal) == []
    assert (shoot / "a.jpg").read_bytes() == b"photo a"
    assert (shoot / "b.jpg").exists() and (shoot / "c.jpg").exists()
    assert load_journals(shoot) == []


def test_unreadable_journals_are_skipped(shoot: Path) -> None:
    move_flagged({"motion_blurred": [str(shoot / "a.jpg")]})
    (shoot / "_blurflag" / "journal-broken.json").write_text("{not json", encoding="utf-8")
    (shoot / "_blurflag" / "journal-weird.json").write_text(
        '{"actions": [{"op": "delete"}]}', encoding="utf-8"
    )
    journals = load_journals(shoot)
    assert len(journals) == 1 and isinstance(journals[0], ActionJournal)
    assert load_journals(shoot / "nowhere") == []


def test_export_copies_into_class_folders_without_overwriting(tmp_path: Path) -> None:
    (tmp_path / "day1").mkdir()
    (tmp_path / "day2").mkdir()
    (tmp_path / "day1" / "IMG_1.jpg").write_bytes(b"day one")
    (tmp_path / "day2" / "IMG_1.jpg").write_bytes(b"day two")  # same name, other photo
    (tmp_path / "day2" / "IMG_2.jpg").write_bytes(b"sharp one")
    labels = {
        str(tmp_path / "day1" / "IMG_1.jpg"): "motion_blurred",
        str(tmp_path / "day2" / "IMG_1.jpg"): "motion_blurred",
        str(tmp_path / "day2" / "IMG_2.jpg"): "sharp",
        str(tmp_path / "day2" / "gone.jpg"): "sharp",
        str(tmp_path / "day2" / "IMG_2.jpg") + "x": "blurry",
    }
    out = tmp_path / "examples"
    errors: list[str] = []
    assert export_training_examples(labels, out, errors=errors) == 3
    assert (
        len(errors) == 2
        and any("file not found" in e for e in errors)
        and any("unknown class" in e for e in errors)
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == [
        "motion_blurred/IMG_1 (1).jpg",
        "motion_blurred/IMG_1.jpg",
        "sharp/IMG_2.jpg",
    ]
    assert {(out / "motion_blurred" / n).read_bytes() for n in ("IMG_1.jpg", "IMG_1 (1).jpg")} == {
        b"day one",
        b"day two",
    }
    assert (tmp_path / "day1" / "IMG_1.jpg").read_bytes() == b"day one", "copied, never moved"
    assert export_training_examples(labels, out) == 3  # again: recognised, not duplicated
    assert len(list(out.rglob("*.jpg"))) == 3
