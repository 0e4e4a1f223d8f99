"""The one way the engine replaces a file: synced temporary file in the same folder, then `os.replace`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, mode: int | None = None, mode_from: Path | None = None) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one.

    Args:
        path: the file to create or replace.
        data: its new content.
        mode: permission bits for the new file (mkstemp would leave it private), or
        mode_from: a file whose permission bits to copy (best effort).

    Raises:
        OSError: when the file cannot be written; the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".blurflag.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif mode_from is not None:
            try:
                shutil.copymode(mode_from, tmp)
            except OSError:
                pass  # permissions are a nicety; the content is what matters
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
