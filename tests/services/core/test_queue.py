"""The Celery app is built lazily: importing the queue client or the task module reads no settings.

A process that imports `services.core.queue` or `workers.tasks` (the API, the CLI, a test) must not read
`BPBENCH_*` at import: the settings it runs with may only be chosen afterwards (`configure`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.core import queue
from services.core.config import Settings

REPO = Path(__file__).resolve().parents[3]

# Run in a fresh interpreter: os.environ is replaced by a mapping that records every key read, then the
# two modules are imported with values that `Settings()` would refuse.
IMPORT_WITH_A_SPY = """
import json, os

reads = []

class RecordingEnviron(dict):
    def __getitem__(self, key):
        reads.append(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        reads.append(key)
        return dict.get(self, key, default)

    def __contains__(self, key):
        reads.append(key)
        return dict.__contains__(self, key)

    def __iter__(self):
        reads.append("<every variable>")
        return dict.__iter__(self)

    def items(self):
        reads.append("<every variable>")
        return dict.items(self)

    def keys(self):
        reads.append("<every variable>")
        return dict.keys(self)

os.environ = RecordingEnviron(os.environ)

import services.core.queue as queue
import workers.tasks
from services.core.config import get_settings

print(json.dumps({
    "settings_read": get_settings.cache_info().currsize,
    "app_built": queue._app is not None,
    "bpbench_reads": sorted({key for key in reads if key.startswith("BPBENCH_") or key.startswith("<")}),
}))
"""


def test_importing_the_queue_and_the_task_module_reads_no_settings_and_no_environment() -> None:
    env = {
        **os.environ,
        "BPBENCH_DATABASE_URL": "bogus://not-a-database",
        "BPBENCH_BROKER_URL": "bogus://not-a-broker",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_WITH_A_SPY],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"settings_read": 0, "app_built": False, "bpbench_reads": []}


def test_the_bogus_settings_would_have_been_refused_had_they_been_read() -> None:
    # What makes the test above able to fail: reading these values raises.
    env = {**os.environ, "BPBENCH_BROKER_URL": "bogus://not-a-broker", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", "from services.core.config import Settings; Settings()"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 1
    assert "BPBENCH_BROKER_URL must start with one of" in done.stderr


def test_configure_keeps_the_app_for_the_same_settings_and_builds_a_new_one_for_another_broker(
    tmp_path: Path,
) -> None:
    import workers.tasks  # noqa: F401  (registers the shared task on every app built)

    first = Settings(data_dir=tmp_path, broker_url="memory://first")
    second = Settings(data_dir=tmp_path, broker_url="memory://second")
    before = (queue._app, queue._app_config)
    try:
        app = queue.configure(first)
        assert queue.configure(first) is app
        assert queue.get_celery_app() is app

        other = queue.configure(second)

        assert other is not app
        assert other.conf.broker_url == "memory://second"
        assert app.conf.broker_url == "memory://first"  # the old app was left as it was, only closed
        assert queue.RUN_JOB_TASK in other.tasks
        assert other.tasks[queue.RUN_JOB_TASK].acks_late is True
    finally:
        queue._app, queue._app_config = before  # this session's app, for the tests that follow
