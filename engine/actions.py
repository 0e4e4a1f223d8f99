"""Moving or copying flagged photos into blur-type folders, with an on-disk journal to undo it.

The rules: a file is never overwritten (a free name ``name (1).jpg`` is chosen instead, and the
move itself refuses to replace anything), never deleted unless it is a copy we made that is still
byte-identical to its original, and sidecars travel with their photo. The journal is written
*before* anything moves (planned actions) and rewritten afterwards (what happened), so an undo
also works after a crash or restart: an action whose move never happened is simply skipped.
"""

from __future__ import annotations

import errno
import filecmp
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engine.fileio import atomic_write
from engine.model import PRODUCT_CLASSES

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1
JOURNAL_PREFIX = "journal-"
_SIDECAR_SUFFIXES = (".xmp", ".XMP")


@dataclass(frozen=True)
class FileAction:
    """One file operation: `source` was moved or copied to `dest`."""

    op: Literal["move", "copy"]
    source: str
    dest: str


@dataclass(frozen=True)
class ActionJournal:
    """What one `move_flagged` call did; `undo` reverses it.

    `journal_path` is the first journal file; a call touching several folders writes one journal per
    folder (`journal_paths`). `errors` says which files could not be handled, and why.
    """

    actions: tuple[FileAction, ...]
    journal_path: str | None
    journal_paths: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    created_at: float = field(default=0.0, compare=False)


def sidecars_of(image: Path) -> list[Path]:
    """Existing XMP sidecars of `image`: ``name.ext.xmp`` (darktable) and ``name.xmp`` (Lightroom and others)."""
    found: list[Path] = []
    for suffix in _SIDECAR_SUFFIXES:
        for candidate in (image.with_name(image.name + suffix), image.with_suffix(suffix)):
            if candidate != image and candidate.is_file() and candidate not in found:
                found.append(candidate)
    return found


def _shared(sidecar: Path, image: Path) -> bool:
    """Whether a ``name.xmp`` sidecar also belongs to a sibling with the same stem (RAW+JPEG pairs)."""
    if sidecar.name.lower() == (image.name + ".xmp").lower():
        return False  # darktable style names one file exactly
    stem = image.stem.lower()
    try:
        siblings = list(image.parent.iterdir())
    except OSError:
        return True  # when unsure, leave the original where it is and take a copy
    for other in siblings:
        if other == image or other.suffix.lower() == ".xmp":
            continue
        if other.stem.lower() == stem:
            return True
    return False


def _free_names(image_dest: Path, sidecar_names: Sequence[tuple[Path, Path]]) -> tuple[Path, list[Path]]:
    """The first ``name (n).ext`` in the destination folder free for the image and all its sidecars."""
    folder, stem, suffix = image_dest.parent, image_dest.stem, image_dest.suffix
    n = 0
    while True:
        candidate = folder / (f"{stem}{suffix}" if n == 0 else f"{stem} ({n}){suffix}")
        sides = [_sidecar_dest(candidate, side, image) for side, image in sidecar_names]
        if not any(os.path.lexists(p) for p in [candidate, *sides]):
            return candidate, sides
        n += 1


def _sidecar_dest(image_dest: Path, sidecar: Path, image: Path) -> Path:
    if sidecar.name.startswith(image.name):  # name.ext.xmp
        return image_dest.with_name(image_dest.name + sidecar.name[len(image.name) :])
    return image_dest.with_name(image_dest.stem + sidecar.suffix)  # name.xmp


def _move_no_clobber(src: Path, dest: Path) -> None:
    """Move `src` to `dest`, failing with FileExistsError rather than replacing anything."""
    try:
        os.link(src, dest, follow_symlinks=False)  # atomic, and refuses an existing name
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "destination exists", str(dest)) from None
        try:
            os.rename(src, dest)  # Windows refuses to replace; POSIX was checked just above
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another drive: copy, then remove
                raise
            _copy_no_clobber(src, dest)
            os.unlink(src)
        return
    try:
        os.unlink(src)
    except OSError:
        os.unlink(dest)  # undo the link: the file stays where it was
        raise


def _copy_no_clobber(src: Path, dest: Path) -> None:
    """Copy `src` to a new file `dest` (exclusive create), with its timestamps; a failed copy leaves nothing."""
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        try:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            fout.close()
            os.unlink(dest)
            raise
    try:
        shutil.copystat(src, dest)
    except OSError:
        pass  # timestamps are a nicety


def _check_name(name: str) -> str | None:
    if not name or name in (".", "..") or any(c in name for c in '/\\:*?"<>|') or name != name.strip():
        return f"{name!r} is not a usable folder name"
    return None


def _journal_dict(
    actions: Sequence[FileAction], created_at: float, errors: Sequence[str]
) -> dict[str, object]:
    return {
        "version": JOURNAL_VERSION,
        "created_at": created_at,
        "actions": [{"op": a.op, "source": a.source, "dest": a.dest} for a in actions],
        "errors": list(errors),
    }


def _write_json(path: Path, payload: dict[str, object]) -> None:
    atomic_write(path, json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8"))


def move_flagged(
    paths_by_type: Mapping[str, Sequence[str]], *, copy: bool = False, subfolder: str = "_blurflag"
) -> ActionJournal:
    """Move (or copy) each photo to ``<its folder>/<subfolder>/<blur type>/<name>``, sidecars included.

    A file that cannot be handled (missing, already sorted, permission denied) is skipped with a
    message in `ActionJournal.errors`; the others go on.
    """
    created_at = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created_at))
    errors: list[str] = []
    problem = _check_name(subfolder)
    if problem:
        raise ValueError(f"subfolder: {problem}")

    # Plan: group by source folder, one journal per folder.
    plans: dict[Path, list[tuple[Path, str]]] = {}
    seen: set[Path] = set()
    for blur_type, paths in paths_by_type.items():
        problem = _check_name(blur_type)
        if problem:
            errors.extend(f"{p}: blur type {problem}" for p in paths)
            continue
        for raw in paths:
            src = Path(os.path.abspath(raw))
            if src in seen:
                errors.append(f"{src}: listed twice; handled once")
                continue
            seen.add(src)
            if src.parent.parent.name == subfolder:
                errors.append(f"{src}: already in a {subfolder} folder")
                continue
            plans.setdefault(src.parent, []).append((src, blur_type))

    all_actions: list[FileAction] = []
    journal_paths: list[str] = []
    for folder, items in plans.items():
        base = folder / subfolder
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            errors.extend(f"{src}: cannot create {base}: {exc.strerror or exc}" for src, _ in items)
            continue
        journal = base / f"{JOURNAL_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.json"
        planned = [
            FileAction("copy" if copy else "move", str(src), str(base / blur_type / src.name))
            for src, blur_type in items
        ]
        folder_errors: list[str] = []
        try:
            _write_json(journal, _journal_dict(planned, created_at, []))  # write-ahead: survives a crash
        except OSError as exc:
            errors.extend(
                f"{src}: cannot write the undo journal {journal}: {exc.strerror or exc}" for src, _ in items
            )
            continue
        done: list[FileAction] = []
        for src, blur_type in items:
            done.extend(_relocate(src, base / blur_type, copy, folder_errors))
        errors.extend(folder_errors)
        if done:
            _write_json(journal, _journal_dict(done, created_at, folder_errors))
            journal_paths.append(str(journal))
            all_actions.extend(done)
        else:
            _remove_quietly(journal)
            _remove_empty_dirs(base, [base / bt for _, bt in items])
    return ActionJournal(
        tuple(all_actions),
        journal_paths[0] if journal_paths else None,
        tuple(journal_paths),
        tuple(errors),
        created_at,
    )


def _relocate(src: Path, dest_dir: Path, copy: bool, errors: list[str]) -> list[FileAction]:
    """Move or copy one photo and its sidecars; returns what was done."""
    if not src.is_file():
        errors.append(f"{src}: file not found")
        return []
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        errors.append(f"{src}: cannot create {dest_dir}: {exc.strerror or exc}")
        return []
    sidecars = sidecars_of(src)
    for _attempt in range(100):
        dest, side_dests = _free_names(dest_dir / src.name, [(s, src) for s in sidecars])
        try:
            if copy:
                _copy_no_clobber(src, dest)
            else:
                _move_no_clobber(src, dest)
            break
        except FileExistsError:
            continue  # someone took the name in between: pick the next one
        except OSError as exc:
            errors.append(f"{src}: cannot {'copy' if copy else 'move'} it: {exc.strerror or exc}")
            return []
    else:
        errors.append(f"{src}: no free name in {dest_dir}")
        return []
    done = [FileAction("copy" if copy else "move", str(src), str(dest))]
    for side, side_dest in zip(sidecars, side_dests, strict=True):
        side_copy = copy or _shared(side, src)
        try:
            if side_copy:
                _copy_no_clobber(side, side_dest)
            else:
                _move_no_clobber(side, side_dest)
            done.append(FileAction("copy" if side_copy else "move", str(side), str(side_dest)))
        except OSError as exc:
            errors.append(f"{side}: the sidecar stayed behind: {exc.strerror or exc}")
    return done


def undo(journal: ActionJournal) -> list[str]:
    """Reverse a journal's actions (newest first): moves go back, identical copies are deleted.

    Nothing is overwritten: a file whose original place is taken again stays where it is, with
    a message. Actions that could not be undone stay in the journal file for a later try; a
    fully undone journal file is removed.

    Returns:
        One message per action that could not be undone.
    """
    errors: list[str] = []
    remaining: list[FileAction] = []
    for action in reversed(journal.actions):
        problem = _undo_one(action)
        if problem:
            errors.append(problem)
            remaining.append(action)
    remaining.reverse()
    paths = journal.journal_paths or ((journal.journal_path,) if journal.journal_path else ())
    for path_text in paths:
        path = Path(path_text)
        base = path.parent
        mine = [a for a in remaining if Path(a.dest).parent.parent == base]
        if mine:
            try:
                _write_json(path, _journal_dict(mine, journal.created_at, errors))
            except OSError as exc:
                errors.append(f"cannot update the undo journal {path}: {exc.strerror or exc}")
        else:
            _remove_quietly(path)
        _remove_empty_dirs(
            base, [Path(a.dest).parent for a in journal.actions if Path(a.dest).parent.parent == base]
        )
    return errors


def _undo_one(action: FileAction) -> str | None:
    src, dest = Path(action.source), Path(action.dest)
    if action.op == "move":
        if not os.path.lexists(dest):
            if os.path.lexists(src):
                return None  # never moved (planned before a crash) or already put back
            return f"{dest}: no longer there; {src} cannot be restored"
        if os.path.lexists(src):
            return f"{src}: a file of that name exists again; {dest} was left where it is"
        try:
            src.parent.mkdir(parents=True, exist_ok=True)
            _move_no_clobber(dest, src)
        except OSError as exc:
            return f"{dest}: cannot move it back to {src}: {exc.strerror or exc}"
        return None
    if not os.path.lexists(dest):
        return None  # copy never made, or already removed
    if not src.is_file():
        return f"{dest}: kept, because its original {src} is gone"
    try:
        same = filecmp.cmp(src, dest, shallow=False)
    except OSError as exc:
        return f"{dest}: cannot compare with {src}: {exc.strerror or exc}"
    if not same:
        return f"{dest}: kept, because it differs from {src} now"
    try:
        os.unlink(dest)
    except OSError as exc:
        return f"{dest}: cannot remove the copy: {exc.strerror or exc}"
    return None


def load_journals(folder: str | Path, subfolder: str = "_blurflag") -> list[ActionJournal]:
    """The undoable journals of a folder, oldest first (unreadable journal files are skipped and logged)."""
    base = Path(folder) / subfolder
    journals: list[ActionJournal] = []
    try:
        files = sorted(base.glob(f"{JOURNAL_PREFIX}*.json"))
    except OSError:
        return []
    for path in files:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            actions = tuple(
                FileAction(_op(a["op"]), str(a["source"]), str(a["dest"])) for a in raw["actions"]
            )
            created = float(raw.get("created_at", 0.0))
            errors = tuple(str(e) for e in raw.get("errors", []))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable undo journal %s: %s", path, exc)
            continue
        if actions:
            journals.append(ActionJournal(actions, str(path), (str(path),), errors, created))
    journals.sort(key=lambda j: (j.created_at, j.journal_path or ""))
    return journals


def _op(value: object) -> Literal["move", "copy"]:
    if value == "move":
        return "move"
    if value == "copy":
        return "copy"
    raise ValueError(f"unknown journal operation {value!r}")


def export_training_examples(
    labels: Mapping[str, str], out_dir: str | Path, *, errors: list[str] | None = None
) -> int:
    """Copy each photo into ``out_dir/<class name>/``, the folder layout the trainer reads.

    Never moves or overwrites: a different photo with a taken name gets ``name (1).jpg``; the same
    photo exported again is recognised (identical bytes) and not copied twice.

    Args:
        labels: photo path to class name (one of the four classes).
        out_dir: the export folder.
        errors: if given, receives one message per photo that could not be exported.

    Returns:
        How many photos are now in the export (copied now or already there).
    """
    out = Path(out_dir)
    count = 0
    problems: list[str] = []
    for raw, label in labels.items():
        src = Path(raw)
        if label not in PRODUCT_CLASSES:
            problems.append(f"{src}: unknown class {label!r}")
            continue
        if not src.is_file():
            problems.append(f"{src}: file not found")
            continue
        folder = out / label
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if _export_one(src, folder):
                count += 1
        except OSError as exc:
            problems.append(f"{src}: cannot copy it to {folder}: {exc.strerror or exc}")
    for problem in problems:
        log.warning("export: %s", problem)
    if errors is not None:
        errors.extend(problems)
    return count


def _export_one(src: Path, folder: Path) -> bool:
    n = 0
    while n < 10_000:
        dest = folder / (src.name if n == 0 else f"{src.stem} ({n}){src.suffix}")
        if os.path.lexists(dest):
            if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
                return True  # exported before
            n += 1
            continue
        try:
            _copy_no_clobber(src, dest)
            return True
        except FileExistsError:
            continue
    raise OSError(f"no free name for {src.name}")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _remove_empty_dirs(base: Path, folders: Sequence[Path]) -> None:
    """Remove the blur-type folders (and then `base`) if they are empty; never anything with files in it."""
    for folder in sorted(set(folders), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        base.rmdir()
    except OSError:
        pass
