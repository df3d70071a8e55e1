"""Plain `alembic` from the repository root (the root `alembic.ini`), on both databases, as an operator
runs it: `alembic current` names the head that `bpbench migrate` reached, `alembic heads` the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")


def head_revision() -> str:
    scripts = ScriptDirectory.from_config(Config(str(ROOT / "migrations" / "alembic.ini")))
    return str(scripts.get_current_head())


def alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env["BPBENCH_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(ALEMBIC), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_alembic_current_from_the_repository_root_names_the_head(database_url: str) -> None:
    done = alembic(database_url, "current")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{head_revision()} (head)"


def test_alembic_heads_from_the_repository_root_is_the_one_head() -> None:
    done = alembic("sqlite:///unused.db", "heads")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{head_revision()} (head)"
