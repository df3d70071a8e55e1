"""Security (issue 4): every route needs a token, every spec field is bounded, request limits, CORS closed
by default, the API binds 127.0.0.1, and no token or password reaches a log line.

The HTTP tests talk to real API processes (uvicorn subprocesses) on both databases; the unit tests of the
limiter, the log redaction and the token comparison run in-process.
"""

from __future__ import annotations

import hmac
import re
import subprocess
import time
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy.orm import Session

from cli.api_client import ApiClient
from cli.app import app as cli_app
from harness.processes import bpbench_command
from services.api.limits import RateLimiter, TokenBucket
from services.api.main import create_app
from services.auth import service as auth_service
from services.auth.service import create_token
from services.core.config import Settings
from services.core.logging import redact_secrets
from services.jobs.spec import JobSpec
from tests.support import apiserver
from tests.support.apiserver import ADMIN_TOKEN, ApiServer, free_port, running_api, server_env
from tests.support.jobs import tiny_spec, wait_until
from tests.support.workers import start_worker

api = apiserver.api  # the shared API server fixture

# --- every route needs a token -------------------------------------------------------------------------

# The only routes that answer without a token, and why. Anything else must answer 401: a route added
# later without an auth dependency fails `test_every_route_but_the_public_ones_needs_a_token`.
PUBLIC_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness probe",
    ("GET", "/readyz"): "readiness probe",
    ("GET", "/"): "the dashboard's page (static HTML; `?token=` shows the sign-in confirmation)",
    ("POST", "/auth/signin"): "the confirmation's same-origin POST: the token in the form is the credential",
    ("GET", "/static/vendor/{name}"): "Plotly and the API docs' scripts, from their packages",
    ("GET", "/static"): "the dashboard's static files (mount)",
    ("POST", "/auth/logout"): "forgets the sign-in cookie; nothing to protect",
    ("GET", "/api/v1/session"): "tells the dashboard whether it is signed in",
    ("GET", "/openapi.json"): "the API's own documentation",
    ("GET", "/docs"): "the API's own documentation",
    ("GET", "/docs/oauth2-redirect"): "the API's own documentation",
    ("GET", "/redoc"): "the API's own documentation",
}


def app_routes(settings: Settings) -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the app, included routers flattened."""
    from fastapi import routing

    application = create_app(settings)
    # FastAPI >= 0.165 keeps included routers whole; `iter_route_contexts` flattens them.
    flatten = getattr(routing, "iter_route_contexts", None)
    routes = list(flatten(application.routes)) if flatten else list(application.routes)
    found = []
    for route in routes:
        methods = getattr(route, "methods", None) or {"GET"}  # a mount serves GET
        found += [(method, route.path) for method in sorted(methods) if method != "HEAD"]
    return sorted(set(found))


def test_every_route_but_the_public_ones_needs_a_token(api: ApiServer, service_settings: Settings) -> None:
    routes = app_routes(service_settings)
    assert set(PUBLIC_ROUTES) <= set(routes), "a public route listed here no longer exists"
    protected = [route for route in routes if route not in PUBLIC_ROUTES]
    assert {("POST", "/api/v1/jobs"), ("POST", "/api/v1/suites"), ("GET", "/metrics")} <= set(protected)
    assert len(protected) >= 12  # jobs (4 + report), suites, results, compare, timeline, devices, ...
    answers = {}
    with api.client(token=None) as anonymous:
        for method, path in protected:
            url = re.sub(r"\{[^}]+\}", "no-such-id", path)
            response = anonymous.request(method, url)
            answers[(method, path)] = (response.status_code, response.headers.get("www-authenticate"))
    assert answers == {route: (401, "Bearer") for route in protected}


def test_a_revoked_token_is_refused_at_once_with_the_token_cache_off(
    service_settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    # With the cache on (BPBENCH_TOKEN_CACHE_TTL_S > 0) a revocation takes up to the TTL:
    # tests/services/api/test_submission.py::test_a_revoked_token_is_refused_within_the_cache_ttl.
    token, row = create_token(db_session, name="soon-revoked", scopes=["read"])
    db_session.commit()
    server = running_api(service_settings, tmp_path, ADMIN_TOKEN, BPBENCH_TOKEN_CACHE_TTL_S="0")
    with server as api_server, api_server.client(token=token) as client:
        assert client.get("/api/v1/timeline").status_code == 200
        auth_service.revoke_token(db_session, row.id)
        db_session.commit()
        refused = client.get("/api/v1/timeline")
    assert refused.status_code == 401
    assert refused.json()["detail"] == "the bearer token is not valid (unknown or revoked)"


def test_tokens_are_compared_in_constant_time(db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    token, _ = create_token(db_session, name="timing", scopes=["read"])
    db_session.commit()
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_service.hmac, "compare_digest", spy)
    assert auth_service.authenticate(db_session, token) is not None
    assert auth_service.authenticate(db_session, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    # Both lookups compared full hashes with compare_digest, never the token with `==`.
    assert len(compared) == 2
    assert all(len(a) == len(b) == 64 for a, b in compared)
    assert compared[0][1] == auth_service.hash_token(token)


# --- bounds on every spec field ------------------------------------------------------------------------


_BOUND_TYPES: dict[type, str] = {
    at.Ge: "ge",
    at.Gt: "gt",
    at.Le: "le",
    at.Lt: "lt",
    at.MinLen: "min_length",
    at.MaxLen: "max_length",
}


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The annotation without Optional/Annotated, and the constraint metadata found on the way."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = typing.get_args(annotation)
            for item in extra:
                metadata.extend(getattr(item, "metadata", [item]))
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation, metadata


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    """{"ge": 1, "le": 100, ...} from pydantic's constraint metadata."""
    found: dict[str, Any] = {}
    for item in metadata:
        name = _BOUND_TYPES.get(type(item))
        if name is not None:
            found[name] = getattr(item, name)
    return found


def bounded_fields(
    model: type[BaseModel] = JobSpec, prefix: str = ""
) -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted path, type, bounds) of every scalar or list field of the spec, nested models included.

    A list's items are reported as `path.0` with the item's bounds."""
    fields = []
    for name, info in model.model_fields.items():
        annotation, metadata = _unwrap(info.annotation)
        metadata = list(info.metadata) + metadata
        path = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields += bounded_fields(annotation, f"{path}.")
        elif typing.get_origin(annotation) is list:
            fields.append((path, list, _bounds(metadata)))
            item, item_metadata = _unwrap(typing.get_args(annotation)[0])
            fields.append((f"{path}.0", item, _bounds(item_metadata)))
        else:
            fields.append((path, annotation, _bounds(metadata)))
    return fields


SPEC_FIELDS = bounded_fields()
NUMERIC_FIELDS = [(p, t, b) for p, t, b in SPEC_FIELDS if t in (int, float)]


def test_every_numeric_list_and_text_field_of_the_spec_is_bounded() -> None:
    unbounded = []
    for path, kind, bounds in SPEC_FIELDS:
        if kind in (int, float) and not (({"ge", "gt"} & set(bounds)) and ({"le", "lt"} & set(bounds))):
            unbounded.append(path)
        if kind is list and "max_length" not in bounds:
            unbounded.append(path)
        if kind is str and "max_length" not in bounds and path != "device":  # device: a pattern
            unbounded.append(path)
    assert unbounded == []
    assert {"steps", "batch_size", "model.layers.0", "timing.max_repeats", "time_limit_s"} <= {
        p for p, _, _ in NUMERIC_FIELDS
    }


def _body_with(path: str, value: Any) -> dict[str, Any]:
    """A valid tiny spec with the value at `path` (`model.layers.0`: item 0 of model.layers) replaced."""
    doc = tiny_spec(model={"name": "mlp", "layers": [784, 16, 10]}).model_dump(mode="json")
    parts = path.split(".")
    target: Any = doc
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    last = parts[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


def _refusals() -> list[Any]:
    """One case per bound of every numeric field: the first value outside it, and the range expected."""
    cases = []
    for path, kind, bounds in NUMERIC_FIELDS:
        noun = "an integer" if kind is int else "a number"
        words = [
            f"{op} {bounds[key]}"
            for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if key in bounds
        ]
        accepted = f"{noun} {' and '.join(words)}"
        step = 1 if kind is int else 0.5
        below = bounds["ge"] - step if "ge" in bounds else bounds["gt"]
        above = bounds["le"] + step if "le" in bounds else bounds["lt"]
        cases.append(pytest.param(path, below, accepted, id=f"{path}-below"))
        cases.append(pytest.param(path, above, accepted, id=f"{path}-above"))
    return cases


@pytest.fixture(scope="module")
def submitter(api: ApiServer, session_maker: Any) -> str:
    """A submit token of this module's own (so its requests have their own rate-limit bucket)."""
    with session_maker() as session:
        token, _ = create_token(session, name=f"bounds-{time.monotonic_ns()}", scopes=["submit"])
        session.commit()
    return token


@pytest.mark.parametrize(("path", "value", "accepted"), _refusals())
def test_a_value_outside_a_spec_fields_range_is_a_422_naming_field_value_and_range(
    api: ApiServer, submitter: str, path: str, value: Any, accepted: str
) -> None:
    with api.client(token=submitter) as client:
        response = client.post("/api/v1/jobs", json=_body_with(path, value))
    assert response.status_code == 422, response.text
    (item,) = response.json()["detail"]
    assert (item["field"], item["value"], item["accepted"]) == (path, value, accepted)
    assert item["message"] == f"{path}: got {value!r}; accepted: {accepted}"


@pytest.mark.parametrize(
    ("path", "bounds"), [pytest.param(p, b, id=p) for p, t, b in SPEC_FIELDS if t is list], ids=str
)
def test_a_list_too_long_or_too_short_is_a_422_naming_its_length_range(
    api: ApiServer, submitter: str, path: str, bounds: dict[str, Any]
) -> None:
    lengths = [bounds["max_length"] + 1] + ([bounds["min_length"] - 1] if bounds.get("min_length") else [])
    item_value = 64 if path != "model.layers" else 16
    for length in lengths:
        with api.client(token=submitter) as client:
            response = client.post("/api/v1/jobs", json=_body_with(path, [item_value] * length))
        assert response.status_code == 422, response.text
        (item,) = response.json()["detail"]
        assert item["field"] == path
        low = f"at least {bounds['min_length']} items and " if bounds.get("min_length") else ""
        assert item["accepted"] == f"a list ({low}at most {bounds['max_length']} items)"


def test_a_text_field_over_its_length_or_with_a_nul_character_is_a_422(
    api: ApiServer, submitter: str
) -> None:
    with api.client(token=submitter) as client:
        long = client.post("/api/v1/jobs", json=_body_with("dataset_path", "x" * 5000))
        nul = client.post(
            "/api/v1/jobs", json={**_body_with("dataset", "mnist"), "dataset_path": "/data\x00"}
        )
        target = client.post("/api/v1/jobs", json={**tiny_spec().model_dump(mode="json"), "target": "ab\x00"})
    assert long.status_code == 422
    assert long.json()["detail"][0]["field"] == "dataset_path"
    assert "4096" in long.json()["detail"][0]["accepted"]
    for response, field in ((nul, "dataset_path"), (target, "target")):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["field"] == field
        assert "NUL" in response.json()["detail"][0]["accepted"]


def test_a_nul_character_in_any_query_or_path_parameter_is_a_422_not_a_server_error(api: ApiServer) -> None:
    # PostgreSQL refuses NUL in text: these were 500s before the check (found by the security tests).
    schema = httpx.get(f"{api.url}/openapi.json").json()
    answers = {}
    with api.client() as client:
        for path, operations in schema["paths"].items():
            if "get" not in operations or path in ("/healthz", "/readyz"):
                continue
            names = [p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query"]
            url = re.sub(r"\{[^}]+\}", "a%00b", path)  # httpx refuses a raw NUL in a URL
            params = {names[0] if names else "x": "a\x00b"}
            response = client.get(url, params=params)
            answers[path] = (response.status_code, response.json()["detail"][0]["accepted"])
    assert len(answers) >= 9
    assert answers == dict.fromkeys(answers, (422, "text without NUL characters (\\u0000)"))


# --- request limits ------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_by_its_length_or_by_counting_its_stream(api: ApiServer) -> None:
    limit = Settings().max_body_bytes
    big = b'{"steps": 1, "x": "' + b"y" * limit + b'"}'

    def chunks() -> Any:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    with api.client() as client:
        declared = client.post("/api/v1/jobs", content=big, headers={"Content-Type": "application/json"})
        streamed = client.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        fits = client.post("/api/v1/jobs", json={"steps": 0})
    assert declared.status_code == 413
    assert declared.json()["detail"] == (
        f"request body of {len(big)} bytes; accepted: at most {limit} bytes (BPBENCH_MAX_BODY_BYTES)"
    )
    assert streamed.status_code == 413
    assert "accepted: at most 65536 bytes" in streamed.json()["detail"]
    assert fits.status_code == 422  # small bodies go on to validation


def test_rate_limit_is_per_token_with_retry_after(
    service_settings: Settings, session_maker: Any, tmp_path: Path
) -> None:
    with session_maker() as session:
        other, _ = create_token(session, name=f"other-{time.monotonic_ns()}", scopes=["read"])
        session.commit()
    limits = {"BPBENCH_RATE_LIMIT_PER_S": "0.5", "BPBENCH_RATE_LIMIT_BURST": "3"}
    with running_api(service_settings, tmp_path, ADMIN_TOKEN, **limits) as server:
        with server.client() as admin:
            codes = [admin.get("/api/v1/timeline").status_code for _ in range(4)]
            refused = admin.get("/api/v1/timeline")
            probe = admin.get("/healthz")
        with server.client(token=other) as second:
            second_code = second.get("/api/v1/timeline").status_code
        with server.client(token=None) as anonymous:
            anonymous_codes = [anonymous.get("/api/v1/jobs").status_code for _ in range(4)]
        # The CLI's client waits out a 429 (its Retry-After) instead of failing.
        started = time.monotonic()
        timeline = ApiClient(server.url, ADMIN_TOKEN).get("/api/v1/timeline")
        waited_s = time.monotonic() - started
    assert codes == [200, 200, 200, 429]
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2"  # one request at 0.5/s
    assert "at most 0.5 requests/s" in refused.json()["detail"]
    assert probe.status_code == 200  # probes are never limited
    assert second_code == 200  # another token has its own bucket
    assert anonymous_codes == [401, 401, 401, 429]  # without a token: by address, guesses included
    assert timeline["vendors"][0]["vendor"] == "NVIDIA"
    assert 1.0 <= waited_s < 10


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [100.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.retry_after("token:1") for _ in range(3)] == [0.0, 0.0, 0.5]
    assert limiter.retry_after("token:2") == 0.0  # keys are independent
    now[0] += 0.5  # one request's worth
    assert limiter.retry_after("token:1") == 0.0
    now[0] += 60  # a long pause refills to the burst, not beyond
    assert [limiter.retry_after("token:1") for _ in range(3)] == [0.0, 0.0, 0.5]
    assert RateLimiter(rate_per_s=0, burst=1).retry_after("x") == 0.0  # 0 turns the limit off
    bucket = TokenBucket(rate=1.0, capacity=1.0, tokens=0.25, updated=0.0)
    assert bucket.take(0.0) == pytest.approx(0.75)


# --- CORS, bind address --------------------------------------------------------------------------------


def _preflight(settings: Settings, origin: str = "https://evil.example") -> httpx.Response:
    with TestClient(create_app(settings)) as client:
        return client.options(
            "/api/v1/jobs", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )


def test_cors_is_closed_unless_origins_are_configured(service_settings: Settings) -> None:
    closed = _preflight(service_settings)
    assert closed.status_code == 405
    assert "access-control-allow-origin" not in closed.headers
    opened = service_settings.model_copy(update={"cors_origins": ["https://dash.example"]})
    allowed = _preflight(opened, "https://dash.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    assert "access-control-allow-origin" not in _preflight(opened, "https://evil.example").headers


def test_cors_origins_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPBENCH_CORS_ORIGINS", "https://a.example, https://b.example/")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.delenv("BPBENCH_CORS_ORIGINS")
    assert Settings().cors_origins == []


def test_the_api_binds_127_0_0_1_unless_told_otherwise() -> None:
    commands = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    for name in ("api", "up"):
        command = commands[name]
        (host,) = [p for p in command.params if p.name == "host"]
        assert host.default == "127.0.0.1", name
    assert Settings().api_host == "127.0.0.1"


# --- no secret in a log line ---------------------------------------------------------------------------


def test_secrets_are_redacted_from_log_text() -> None:
    assert redact_secrets("GET /?token=bpb_abc123xyz&next=1 HTTP/1.1") == "GET /?token=***&next=1 HTTP/1.1"
    assert redact_secrets("Authorization: Bearer s3cr3t-value") == "Authorization: Bearer ***"
    assert (
        redact_secrets("postgresql+psycopg://bench:pa55@db:5432/b")
        == "postgresql+psycopg://bench:***@db:5432/b"
    )
    assert redact_secrets("amqp://guest:guest@127.0.0.1:5672//") == "amqp://guest:***@127.0.0.1:5672//"
    assert redact_secrets("token bpb_Zx9-_aaaa leaked") == "token bpb_*** leaked"
    assert redact_secrets("plain text, 3 jobs") == "plain text, 3 jobs"
    # Upper case too (the quick pre-scan that skips plain lines is case-blind like the patterns).
    assert redact_secrets("x-auth: BEARER s3cr3t PASSWORD=hunter2") == "x-auth: BEARER *** PASSWORD=***"
    assert redact_secrets("token=%s password=%(pw)s") == "token=%s password=%(pw)s"


def test_a_record_is_redacted_once_on_its_logger_and_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from services.core import logging as bpbench_logging

    calls: list[str] = []
    real = bpbench_logging.redact_secrets

    def counted(text: str) -> str:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(bpbench_logging, "redact_secrets", counted)
    logger = logging.getLogger("bpbench.test.redact-once")
    logger.propagate = False
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addFilter(bpbench_logging.RedactSecretsFilter())
    handler.addFilter(bpbench_logging.RedactSecretsFilter())
    logger.addHandler(handler)
    try:
        logger.warning("GET /?token=%s HTTP/1.1", "bpb_abcdef123")
    finally:
        logger.removeHandler(handler)
    # The placeholder survives redaction of the format string; the argument is redacted on its own.
    assert seen == ["GET /?token=bpb_*** HTTP/1.1"]
    assert calls == ["GET /?token=%s HTTP/1.1", "bpb_abcdef123"]  # message and argument, once each


def _with_password(url: str, password: str) -> str:
    """The PostgreSQL URL with a password (the local server trusts 127.0.0.1, so any password works)."""
    return re.sub(r"^(\w[\w+]*://[^:@/]+)@", rf"\1:{password}@", url)


def test_no_token_or_password_appears_in_the_api_or_worker_logs(
    service_settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    password = "db-pa55word-never-logged"
    if service_settings.database_url.startswith("sqlite"):
        database_url = service_settings.database_url  # SQLite has no password; tokens are still checked
    else:
        database_url = _with_password(service_settings.database_url, password)
        assert password in database_url
    token, _ = create_token(db_session, name=f"logged-{time.monotonic_ns()}", scopes=["submit"])
    db_session.commit()
    settings = service_settings.model_copy(update={"database_url": database_url})
    secrets = [token, ADMIN_TOKEN, password]
    logs = []

    def exercise(url: str) -> None:
        httpx.get(f"{url}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}, params={"limit": 1})
        httpx.get(f"{url}/api/v1/jobs", params={"token": token, "limit": 1})
        httpx.get(f"{url}/", params={"token": token})  # the dashboard's sign-in link
        httpx.get(f"{url}/", params={"token": "bpb_wrong-guess-also-secret"})
        httpx.get(f"{url}/api/v1/jobs/{token}")  # a token pasted into a path
        httpx.post(f"{url}/api/v1/jobs", json=tiny_spec(device="gpu").model_dump(mode="json"),
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip

    # uvicorn's own logging (`bpbench up`, `uvicorn services.api.main:app`) ...
    with running_api(settings, tmp_path, ADMIN_TOKEN) as server:
        exercise(server.url)
    # ... and `bpbench api` (our logging setup, JSON lines).
    port = free_port()
    log_path = tmp_path / "bpbench-api.log"
    argv = [*bpbench_command(), "api", "--port", str(port), "--log-format", "json"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=server_env(settings, ADMIN_TOKEN), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 60, "bpbench api to serve")
        exercise(url)
    finally:
        process.terminate()
        process.wait(timeout=15)
    worker = start_worker(database_url, settings.broker_url, tmp_path, env={"BPBENCH_API_TOKEN": ADMIN_TOKEN})
    worker.stop()
    for path in sorted(tmp_path.glob("*.log")):
        logs.append((path.name, path.read_text(errors="replace")))
    assert {name for name, _ in logs} >= {"bpbench-api.log"}
    assert any("GET /?token=*** HTTP/1.1" in text for _, text in logs)  # the request was logged, redacted
    assert any("/api/v1/jobs/bpb_*** HTTP/1.1" in text for _, text in logs)
    leaks = [
        (name, secret) for name, text in logs for secret in [*secrets, "bpb_wrong-guess"] if secret in text
    ]
    assert leaks == []


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_405_names_every_method_of_the_path(api: ApiServer) -> None:
    with api.client() as client:
        jobs = client.request("OPTIONS", "/api/v1/jobs")
        page = client.request("PUT", "/")
    # Two routes serve /api/v1/jobs; Starlette alone would name only the first one's method.
    assert (jobs.status_code, jobs.headers["Allow"]) == (405, "GET, POST")
    assert jobs.json()["detail"] == "method OPTIONS not allowed here; allowed: GET, POST"
    assert (page.status_code, page.headers["Allow"]) == (405, "GET")


def test_the_openapi_schema_documents_the_errors_the_api_sends(api: ApiServer) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    submit = schema["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert {"400", "401", "403", "413", "415", "422", "429"} <= set(submit)
    assert "Retry-After" in submit["429"]["headers"]
    field_error = schema["components"]["schemas"]["ValidationError"]
    assert set(field_error["required"]) == {"field", "in", "value", "accepted", "message"}
    assert "404" in schema["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]
    assert "429" not in schema["paths"]["/healthz"]["get"]["responses"]
