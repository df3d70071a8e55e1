"""bpbench's workers: `bpbench worker` (`workers.main`) and the Celery tasks (`workers.tasks`).

`celery -A workers inspect|control|events|flower|purge ...` finds bpbench's Celery app here: Celery's `-A`
looks up the package's `app` attribute, which is built on first access from the `BPBENCH_*` settings
(`services.core.queue.get_celery_app`). Importing `workers` or its modules builds no app and reads no
settings; start workers themselves with `bpbench worker`, which registers the device first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery


def __getattr__(name: str) -> Celery:
    """`workers.app`: this process's Celery app, built on first use (what `celery -A workers` loads)."""
    if name == "app":
        from services.core.queue import get_celery_app

        return get_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
