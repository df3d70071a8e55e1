"""The data directory's ownership and room: private to its user, and ready only while it has space.

The directory holds the admin token, the SQLite database and the broker's append-only file, so it is
created 0700 and the files in it 0600 (a shared host's other users read none of them). A database or
broker on a full disk fails every write, so `/readyz` says not ready below `MIN_FREE_BYTES`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# Room for SQLite's journal and a few pages of the broker's log: below this the next write may fail.
MIN_FREE_BYTES = 4 * 1024 * 1024


def _tighten(path: Path, mode: int) -> None:
    # Only our own files: another user's directory (a shared --data-dir) is theirs to set.
    with contextlib.suppress(OSError):
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def make_private_dir(path: Path) -> None:
    """Create `path` (and its parents) readable by its user only; an existing one of ours is tightened."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)


def ensure_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists; an existing one of ours is tightened to 0600."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        _tighten(path, PRIVATE_FILE_MODE)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a reader at any moment sees the old file or the new one,
    never a truncated one (written to a sibling, then `os.replace`d over it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def disk_problem(path: Path) -> str | None:
    """None while the file system holding `path` has `MIN_FREE_BYTES` free, else what is wrong."""
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if free < MIN_FREE_BYTES:
        return f"disk full: {free:,} bytes free at {path}, under the {MIN_FREE_BYTES:,} needed"
    return None
