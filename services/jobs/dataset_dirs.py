"""Which files a submitted job may read: only data sets inside the directories the server names.

A job's `dataset_path` is read by a worker on the server's machines, so a submitter could otherwise name
any file a worker can read (`/etc`, another user's home), and tell from the answers which paths exist.
`BPBENCH_DATASET_DIRS` lists the directories a submitted `dataset_path` may point into; none by default,
so a service reads no path a submitter names until its operator says where data sets live.

The check is on the path as written, never on the file system: the API may run on another machine than
the workers, and an answer that depends on what exists would tell a submitter what exists. Every path
outside the directories gets the same refusal. `bpbench run` (local, the user's own files) skips it.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath


def dataset_path_allowed(dataset_path: str, dataset_dirs: list[Path]) -> bool:
    """Whether `dataset_path` is an absolute path inside one of `dataset_dirs`, with no `..` in it."""
    path = PurePosixPath(dataset_path)
    if not path.is_absolute() or ".." in path.parts:
        return False
    normal = PurePosixPath(posixpath.normpath(dataset_path))
    return any(normal.is_relative_to(PurePosixPath(posixpath.normpath(str(d)))) for d in dataset_dirs)


def dataset_dirs_accepted(dataset_dirs: list[Path]) -> str:
    """What a `dataset_path` may be under these settings, in words (one refusal text for every path)."""
    if not dataset_dirs:
        return (
            "no dataset_path: this server reads no data set path a submitter names (its operator allows "
            "directories with BPBENCH_DATASET_DIRS; `bpbench run` reads local paths)"
        )
    listed = ", ".join(str(d) for d in dataset_dirs)
    return f"an absolute path inside {listed} (BPBENCH_DATASET_DIRS), without '..'"
