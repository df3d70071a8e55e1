"""Fuzzing with hostile JSON: schemathesis against the running API, its bodies salted with lone surrogates
and non-finite numbers (`tests/support/hostile_json.py`), on PostgreSQL.

The schema-driven run (`tests/services/api/test_fuzz.py`) only sends JSON that Python and RFC 8259 agree
on. Here about half of the generated bodies have one string, number or key replaced by a lone UTF-16
surrogate (alone or inside text), `NaN`, `Infinity`, `-Infinity` or `1e400`, as Python's `json.dumps`
writes them. Every answer must be a non-5xx whose body is valid JSON, and the server must log no traceback.
The CI run is modest (`BPBENCH_HOSTILE_FUZZ_EXAMPLES`, default 20 per operation); the long run is the same
test with 150.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.services.api.test_fuzz import fuzzed_api, read_interactions  # noqa: F401  (the fuzzed API fixture)
from tests.support.apiserver import PROJECT_ROOT, ApiServer

SEED = 20261203
EXAMPLES_PER_OPERATION = int(os.environ.get("BPBENCH_HOSTILE_FUZZ_EXAMPLES", "20"))
MIN_REQUESTS = 12 * EXAMPLES_PER_OPERATION


def body_text(message: dict[str, Any] | None) -> str:
    """The body of a recorded request or response, as text ('' without one)."""
    message = message or {}
    body = message.get("body", message.get("content"))  # requests have a body, responses a content
    if isinstance(body, dict) and "$base64" in body:
        return base64.b64decode(body["$base64"]).decode("utf-8", "replace")
    return "" if body is None else str(body)


def strictly_json(text: str) -> bool:
    """Whether `text` is RFC 8259 JSON: no NaN or Infinity, no lone surrogate."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        json.loads(text, parse_constant=refuse)
        text.encode("utf-8")
    except ValueError:
        return False
    return True


@pytest.mark.slow
def test_hostile_json_bodies_get_no_server_error_and_only_json_answers(
    fuzzed_api: ApiServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    reports = tmp_path / "reports"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{fuzzed_api.url}/openapi.json",
        "--header", f"Authorization: Bearer {fuzzed_api.token}",
        "--checks", "not_a_server_error",
        "--phases", "fuzzing,stateful",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
        "--workers", "1", "--no-shrink", "--generation-allow-x00", "true",
        "--generation-database", "none", "--request-timeout", "20",
        "--report", "ndjson", "--report-dir", str(reports),
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.hostile_json", "PYTHONPATH": str(PROJECT_ROOT)}
    run = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    output = run.stdout + run.stderr
    (ndjson,) = reports.glob("*.ndjson")
    interactions = [i for i in read_interactions(ndjson) if i.get("response")]
    statuses = collections.Counter(i["response"]["status_code"] for i in interactions)
    hostile = [i for i in interactions if not strictly_json(body_text(i["request"]) or "null")]
    hostile_statuses = collections.Counter(i["response"]["status_code"] for i in hostile)
    print(f"\n{len(interactions)} requests, statuses {dict(sorted(statuses.items()))}")
    hostile_answers = dict(sorted(hostile_statuses.items()))
    print(f"{len(hostile)} with a surrogate or a non-finite number, statuses {hostile_answers}")

    assert run.returncode == 0, output[-6000:]
    assert len(interactions) >= MIN_REQUESTS
    assert not [code for code in statuses if code >= 500]
    # The hostile values were really sent, and refused with readable JSON.
    assert len(hostile) >= EXAMPLES_PER_OPERATION
    assert hostile_statuses[422] >= len(hostile) // 2
    bodies = [body_text(i["response"]) for i in hostile]
    assert bodies and all(strictly_json(body) for body in bodies)
    log = fuzzed_api.log_path.read_text(errors="replace")
    assert "Traceback" not in log
