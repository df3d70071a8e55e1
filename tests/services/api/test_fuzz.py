"""Fuzzing (issue 4): schemathesis against the running API, with an admin token, on PostgreSQL.

A real uvicorn process on a private PostgreSQL database and a private Redis database (no worker listens
there, so the jobs the fuzzer submits just stay queued and are dropped with the database) receives at least
1,000 generated requests: every operation of the OpenAPI schema, valid and invalid inputs (schemathesis's
coverage, fuzzing and stateful phases, fixed seed). Every check runs except `positive_data_acceptance`:
the spec has cross-field rules OpenAPI cannot express (two_layer_net takes 3 widths, dataset=mnist needs
dataset_path, the parameter and memory caps, min_repeats <= max_repeats, a registered device id), so a
schema-valid body may rightly be refused with a 422 that names the rule.

PostgreSQL, not SQLite, because it is the stricter of the two (NUL characters, integer ranges) and the one
deployments use. The run takes about a minute; `BPBENCH_FUZZ_EXAMPLES` changes the examples per operation.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.config import Settings
from services.core.migrate import upgrade_to_head
from tests.support.apiserver import ADMIN_TOKEN, ApiServer, running_api
from tests.support.servers import claimed_redis_database, empty_database

SEED = 20261126
EXAMPLES_PER_OPERATION = int(os.environ.get("BPBENCH_FUZZ_EXAMPLES", "50"))
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def fuzzed_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The API on a PostgreSQL database and a Redis database of its own, rate limit off."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with empty_database("postgresql", request, tmp) as database_url, claimed_redis_database() as broker_url:
        upgrade_to_head(database_url)
        settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=tmp)
        with running_api(settings, tmp, ADMIN_TOKEN, BPBENCH_RATE_LIMIT_PER_S="0") as server:
            yield server


def read_interactions(ndjson: Path) -> list[dict[str, Any]]:
    """Every request schemathesis sent, with the generation metadata of its test case."""
    interactions = []
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for case_id, interaction in (recorder.get("interactions") or {}).items():
            case = recorder["cases"][case_id]["value"]
            interactions.append({"label": recorder["label"], "case": case, **interaction})
    return interactions


def input_class(case: dict[str, Any]) -> str:
    """What kind of input a case was: the coverage scenario, or generated valid/invalid data."""
    meta = case.get("meta") or {}
    phase = (meta.get("phase") or {}).get("name", "unknown")
    data = (meta.get("phase") or {}).get("data") or {}
    mode = (meta.get("generation") or {}).get("mode", "")
    if phase == "coverage" and data.get("scenario"):
        return f"coverage: {data['scenario']}"
    if phase == "stateful":
        return f"stateful: {mode} data in request sequences"
    components = sorted((meta.get("components") or {}).keys())
    return f"{phase}: {mode} data in {', '.join(components) or 'no parameters'}"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzzed_api: ApiServer, tmp_path: Path
) -> None:
    reports = tmp_path / "reports"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{fuzzed_api.url}/openapi.json",
        "--header", f"Authorization: Bearer {fuzzed_api.token}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED),
        "--workers", "1", "--no-shrink", "--generation-allow-x00", "true",
        "--generation-database", "none", "--request-timeout", "20",
        "--report", "ndjson", "--report-dir", str(reports),
    ]  # fmt: skip
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=480, check=False)
    output = run.stdout + run.stderr
    (ndjson,) = reports.glob("*.ndjson")
    interactions = read_interactions(ndjson)
    statuses = collections.Counter(i["response"]["status_code"] for i in interactions if i.get("response"))
    classes = collections.Counter(input_class(i["case"]) for i in interactions)
    print(f"\n{len(interactions)} requests; statuses {dict(sorted(statuses.items()))}")
    for name, count in sorted(classes.items(), key=lambda item: (-item[1], item[0])):
        print(f"{count:6d}  {name}")

    assert run.returncode == 0, output[-6000:]
    assert len(interactions) >= MIN_REQUESTS
    assert not [code for code in statuses if code >= 500]
    # The server saw them too, and logged no traceback.
    log = fuzzed_api.log_path.read_text(errors="replace")
    served = re.findall(r'"[A-Z]+ \S+ HTTP/1\.1" (\d{3})', log)
    assert len(served) >= MIN_REQUESTS
    assert not [code for code in served if code.startswith("5")]
    assert "Traceback" not in log
    # Invalid input was really tried: many refusals, and many acceptances of valid input.
    assert statuses[422] >= 200 and sum(n for code, n in statuses.items() if code < 300) >= 100
    assert (fuzzed_api.token not in output) and (fuzzed_api.token not in log)
