"""Remembering results across restarts: an SQLite (WAL) file keyed by path and file version.

A result is valid only for the file version it was computed from (size and mtime in nanoseconds),
so a photo that was edited or replaced is classified again. User overrides live in their own table:
they belong to the photo, not to one classification, and survive re-classification.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from engine.errors import EngineError
from engine.model import PRODUCT_CLASSES
from engine.results import Classification, ImageResult

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    classified_at REAL NOT NULL,
    blur_type TEXT,
    top_class TEXT,
    confidence REAL,
    probabilities TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS overrides (
    path TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    set_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_COLUMNS = "r.path, r.size, r.mtime_ns, r.classified_at, r.blur_type, r.top_class, r.confidence, r.probabilities, r.error"


class StoreError(EngineError):
    """The result database cannot be used (e.g. it was written by a newer BlurFlag)."""


@dataclass(frozen=True)
class StoredResult:
    """A result as remembered: the file version it belongs to, when it was made, and the user's override."""

    result: ImageResult
    size: int
    mtime_ns: int
    classified_at: float
    override: str | None = None

    @property
    def label(self) -> str | None:
        """The class the user or the model settled on: the override, else the top prediction."""
        return self.override or self.result.top_class


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a model folder's ONNX file and class names, to tell when cached results went stale."""
    digest = hashlib.sha256()
    folder = Path(model_dir)
    for file in sorted(folder.glob("*.onnx")) + [folder / "class_names.json"]:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class ResultStore:
    """SQLite-backed results, safe to call from several threads (one connection behind a lock)."""

    def __init__(self, db_path: str | Path, *, model_id: str | None = None) -> None:
        """Open (or create) the database.

        Args:
            db_path: the SQLite file; its folder is created if needed.
            model_id: identifies the model and how the engine decides with it (the app uses `model_fingerprint`
                and the classifier's `decision_rule`); when it differs from the one the stored results came from,
                those results are dropped (overrides are kept).

        Raises:
            StoreError: the file belongs to a newer BlurFlag version.
        """
        self._path = Path(db_path)
        self._lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            # A damaged cache is not the user's data: keep it aside for inspection and start afresh.
            aside = self._path.with_name(f"{self._path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("result database %s is unreadable (%s); moved it to %s", self._path, exc, aside)
            os.replace(self._path, aside)
            for suffix in ("-wal", "-shm"):
                side = self._path.with_name(self._path.name + suffix)
                if side.exists():
                    os.replace(side, aside.with_name(aside.name + suffix))
            self._conn = self._open()
        if model_id is not None:
            self._check_model(model_id)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, check_same_thread=False, timeout=30.0, isolation_level=None)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} was written by a newer BlurFlag (schema {version} > {SCHEMA_VERSION})"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_model(self, model_id: str) -> None:
        with self._lock:
            row = self._db().execute("SELECT value FROM meta WHERE key='model_id'").fetchone()
            if row is not None and row[0] == model_id:
                return
            with self._db():
                self._db().execute("BEGIN IMMEDIATE")
                if row is not None:
                    self._db().execute("DELETE FROM results")
                self._db().execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('model_id', ?)", (model_id,)
                )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the result database {self._path} is closed")
        return self._conn

    @property
    def path(self) -> Path:
        return self._path

    def get(self, path: str, size: int, mtime_ns: int) -> ImageResult | None:
        """The stored result for this exact file version, or None (unknown, or the file changed)."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS} FROM results r WHERE r.path=? AND r.size=? AND r.mtime_ns=?",
                    (path, size, mtime_ns),
                )
                .fetchone()
            )
        return _result(row) if row else None

    def get_stored(self, path: str) -> StoredResult | None:
        """Whatever is stored for `path`, whichever file version it came from."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS}, o.label FROM results r LEFT JOIN overrides o USING(path) WHERE r.path=?",
                    (path,),
                )
                .fetchone()
            )
        return _stored(row) if row else None

    def put(self, result: ImageResult, size: int, mtime_ns: int) -> None:
        """Insert or replace the result for `result.path` (errors are stored too)."""
        self.put_many([(result, size, mtime_ns)])

    def put_many(self, items: list[tuple[ImageResult, int, int]]) -> None:
        """Store several results in one transaction."""
        now = time.time()
        rows = [_row(result, size, mtime_ns, now) for result, size, mtime_ns in items]
        with self._lock, self._db():
            self._db().execute("BEGIN IMMEDIATE")
            self._db().executemany(
                "INSERT OR REPLACE INTO results(path, size, mtime_ns, classified_at, blur_type, top_class,"
                " confidence, probabilities, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def rename(self, old: str, new: str) -> None:
        """Carry the result and override of `old` over to `new` (replacing whatever `new` had)."""
        if old == new:
            return
        with self._lock, self._db():
            self._db().execute("BEGIN IMMEDIATE")
            for table in ("results", "overrides"):
                if self._db().execute(f"SELECT 1 FROM {table} WHERE path=?", (old,)).fetchone():
                    self._db().execute(f"DELETE FROM {table} WHERE path=?", (new,))
                    self._db().execute(f"UPDATE {table} SET path=? WHERE path=?", (new, old))

    def delete(self, path: str) -> None:
        """Forget a file: its result and its override."""
        with self._lock, self._db():
            self._db().execute("BEGIN IMMEDIATE")
            self._db().execute("DELETE FROM results WHERE path=?", (path,))
            self._db().execute("DELETE FROM overrides WHERE path=?", (path,))

    def all(self) -> list[StoredResult]:
        """Every stored result with its override, sorted by path."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS}, o.label FROM results r LEFT JOIN overrides o USING(path) ORDER BY r.path"
                )
                .fetchall()
            )
        return [_stored(row) for row in rows]

    def set_override(self, path: str, label: str | None) -> None:
        """Record the user's class for a photo (one of the four class names); None clears it.

        Raises:
            ValueError: `label` is not a class name.
        """
        if label is not None and label not in PRODUCT_CLASSES:
            raise ValueError(f"unknown class {label!r}; choose one of: {', '.join(sorted(PRODUCT_CLASSES))}")
        with self._lock, self._db():
            self._db().execute("BEGIN IMMEDIATE")
            if label is None:
                self._db().execute("DELETE FROM overrides WHERE path=?", (path,))
            else:
                self._db().execute(
                    "INSERT OR REPLACE INTO overrides(path, label, set_at) VALUES (?, ?, ?)",
                    (path, label, time.time()),
                )

    def overrides(self) -> dict[str, str]:
        """Every override, path to class name."""
        with self._lock:
            rows = self._db().execute("SELECT path, label FROM overrides ORDER BY path").fetchall()
        return {str(p): str(label) for p, label in rows}

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        """Checkpoint and close the database; safe to call twice."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("could not checkpoint %s: %s", self._path, exc)
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _row(result: ImageResult, size: int, mtime_ns: int, now: float) -> tuple[Any, ...]:
    c = result.classification
    probs = json.dumps(c.probabilities) if c else None
    return (
        result.path,
        int(size),
        int(mtime_ns),
        now,
        result.blur_type,
        c.top_class if c else None,
        c.confidence if c else None,
        probs,
        result.error,
    )


def _result(row: tuple[Any, ...]) -> ImageResult:
    path, _size, _mtime, _at, blur_type, top_class, confidence, probs, error = row[:9]
    classification = None
    if probs is not None:
        values = {str(k): float(v) for k, v in json.loads(str(probs)).items()}
        classification = Classification(values, str(top_class), float(confidence))
    return ImageResult(
        str(path),
        classification,
        None if error is None else str(error),
        None if blur_type is None else str(blur_type),
    )


def _stored(row: tuple[Any, ...]) -> StoredResult:
    override = row[9]
    return StoredResult(
        _result(row),
        int(row[1]),
        int(row[2]),
        float(row[3]),
        None if override is None else str(override),
    )
