"""`bpbench token create|list|revoke`: real `bpbench` processes on a migrated database (both backends)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

from harness.processes import bpbench_command
from services.auth.service import authenticate


@pytest.fixture
def token_env(database_url: str, tmp_path: Any) -> dict[str, str]:
    """An administrator's environment: the database of this test session, nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    return {**env, "BPBENCH_DATABASE_URL": database_url, "BPBENCH_DATA_DIR": str(tmp_path), "COLUMNS": "200"}


def bpbench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `bpbench ARGS`, capturing its output."""
    return subprocess.run(
        [*bpbench_command(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def listed(env: dict[str, str], name: str) -> dict[str, Any]:
    """The `token list --json` entry named `name`."""
    result = bpbench(env, "token", "list", "--json")
    assert result.returncode == 0, result.stderr
    return next(row for row in json.loads(result.stdout) if row["name"] == name)


def test_create_prints_the_token_once_and_it_authenticates(
    token_env: dict[str, str], db_session: Session
) -> None:
    name = f"ci-{uuid.uuid4().hex[:6]}"
    created = bpbench(token_env, "token", "create", "--name", name, "--scope", "submit,read")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("bpb_") and len(token) == 47  # alone on stdout, for `TOKEN=$(...)`
    assert "not shown again" in created.stderr and token not in created.stderr
    row = authenticate(db_session, token)
    assert row is not None
    assert (row.name, row.scopes) == (name, ["read", "submit"])
    entry = listed(token_env, name)
    assert (entry["scopes"], entry["prefix"], entry["revoked"]) == (["read", "submit"], token[:8], False)
    table = bpbench(token_env, "token", "list")
    assert name in table.stdout and token[:8] in table.stdout and token not in table.stdout
    for header in ("name", "scopes", "prefix", "created", "last used", "revoked"):
        assert header in table.stdout


def test_revoke_by_prefix_or_name_stops_the_token(token_env: dict[str, str], db_session: Session) -> None:
    first, second = (f"rev-{uuid.uuid4().hex[:6]}" for _ in range(2))
    tokens = [bpbench(token_env, "token", "create", "--name", n).stdout.strip() for n in (first, second)]
    by_prefix = bpbench(token_env, "token", "revoke", tokens[0][:8])
    by_name = bpbench(token_env, "token", "revoke", second)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert by_name.returncode == 0, by_name.stderr
    assert f"Revoked token {first!r}" in by_prefix.stdout
    assert [authenticate(db_session, t) for t in tokens] == [None, None]
    assert listed(token_env, first)["revoked"] is True
    assert listed(token_env, second)["revoked_at"] is not None
    again = bpbench(token_env, "token", "revoke", second)
    assert again.returncode == 1
    assert "no unrevoked token" in again.stderr


def test_bad_scopes_names_and_short_prefixes_are_refused(token_env: dict[str, str]) -> None:
    name = f"dup-{uuid.uuid4().hex[:6]}"
    assert bpbench(token_env, "token", "create", "--name", name).returncode == 0
    duplicate = bpbench(token_env, "token", "create", "--name", name)
    scope = bpbench(token_env, "token", "create", "--name", "x", "--scope", "read,root")
    short = bpbench(token_env, "token", "revoke", "bpb_")
    assert (duplicate.returncode, scope.returncode, short.returncode) == (1, 2, 1)
    assert f"a token named {name!r} exists" in duplicate.stderr
    assert "--scope 'read,root': accepted: one or more of read, submit, admin" in scope.stderr
    assert "no unrevoked token has the name or prefix 'bpb_'" in short.stderr


def test_an_unmigrated_database_is_named_without_its_password(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env["BPBENCH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    result = bpbench(env, "token", "list")
    assert result.returncode == 1
    assert "no such table: api_tokens" in result.stderr and "bpbench migrate" in result.stderr
