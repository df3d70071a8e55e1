"""Every JSON example of the documentation (README.md, docs/*.md), sent to the real API.

A request example (a job spec) must be accepted by `POST /api/v1/jobs` in the words it is written in; the only
refusal allowed is of its `target`, whose device id exists on the documented deployment and not in this test's
database. An error example (`{"detail": ...}`) must be exactly what the API answers to the spec it describes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import apiserver
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec

api = apiserver.api
ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", flags=re.M | re.S)


def json_examples() -> list[tuple[str, Any]]:
    """(document:line, parsed JSON) of every ```json block of the documentation."""
    examples = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in JSON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            examples.append((f"{document.relative_to(ROOT)}:{line}", json.loads(match.group(1))))
    return examples


EXAMPLES = json_examples()
REQUESTS = [(where, doc) for where, doc in EXAMPLES if "kind" in doc]
ERRORS = [(where, doc) for where, doc in EXAMPLES if "detail" in doc]


def valid_body() -> dict[str, Any]:
    return tiny_spec().model_dump(mode="json", exclude_unset=True)


def test_the_documentation_has_request_and_error_examples() -> None:
    # The checks below must have something to check: the deploy guide's targeted job, the README's 422.
    assert any(where.startswith("docs/deploy.md") and "target" in doc for where, doc in REQUESTS)
    assert any(where.startswith("README.md") for where, _ in ERRORS)
    assert len(REQUESTS) + len(ERRORS) == len(EXAMPLES)


@pytest.mark.parametrize(("where", "body"), REQUESTS, ids=[where for where, _ in REQUESTS])
def test_every_request_example_is_accepted_by_the_api(
    api: ApiServer, where: str, body: dict[str, Any]
) -> None:
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    if response.status_code == 422:
        refused = {(error["field"], error["value"]) for error in response.json()["detail"]}
        # The field is understood; only the example's device is not registered here.
        assert refused == {("target", body.get("target"))}, f"{where}: {response.text}"
    else:
        assert response.status_code == 202, f"{where}: {response.text}"


def test_a_misnamed_field_is_refused_so_the_check_above_can_fail(api: ApiServer) -> None:
    with api.client() as client:
        response = client.post("/api/v1/jobs", json={**valid_body(), "target_device": "3f2a9c0d1e2b"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["detail"]] == ["target_device"]


@pytest.mark.parametrize(("where", "documented"), ERRORS, ids=[where for where, _ in ERRORS])
def test_every_error_example_is_what_the_api_answers(
    api: ApiServer, where: str, documented: dict[str, Any]
) -> None:
    body = valid_body()
    for error in documented["detail"]:
        body[error["field"]] = error["value"]
    with api.client() as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, f"{where}: {response.text}"
    assert response.json() == documented, where
