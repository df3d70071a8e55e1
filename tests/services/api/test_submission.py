"""Submission throughput (issue 7): group commit, the token cache and `bpbench api --workers`.

Group commit runs in-process on both databases with the session's real Redis, and over HTTP through a real
API process; the token cache and `--workers` are checked through real API processes.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest
import redis
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cli.servers import MAX_DEFAULT_API_WORKERS, default_api_workers
from harness.processes import bpbench_command
from services.api import deps
from services.api.group_commit import GroupCommit
from services.api.routes.jobs import JobSubmission
from services.auth import service as auth_service
from services.auth.service import TokenCache, TokenIdentity, create_token
from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import upgrade_to_head
from services.jobs import service as jobs
from services.jobs.models import Job
from tests.support import apiserver
from tests.support.apiserver import ADMIN_TOKEN, PROJECT_ROOT, ApiServer, free_port, running_api, server_env
from tests.support.jobs import tiny_spec, wait_until

api = apiserver.api  # the shared API server fixture


T = TypeVar("T")


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` in a thread of its own: the browser tests' Playwright keeps an event loop running in
    this thread for the rest of the session, and `asyncio.run` refuses to start inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def gpu_rows(count: int, **spec: Any) -> list[dict[str, Any]]:
    """Rows of `count` gpu jobs (no test worker serves the gpu queue, so their messages stay in Redis)."""
    return [jobs.job_row(tiny_spec(device="gpu", seed=1000 + i, **spec)) for i in range(count)]


def queued_job_ids(broker_url: str, queue: str = "gpu") -> set[str]:
    """The job ids of the `bpbench.run_job` messages waiting in a Redis queue (kombu's message format)."""
    client = redis.Redis.from_url(broker_url)
    try:
        ids = set()
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            ids.add(args[0])
        return ids
    finally:
        client.close()


def stored(session_maker: sessionmaker[Session], ids: list[str]) -> list[Job]:
    with session_maker() as session:
        return list(session.scalars(select(Job).where(Job.id.in_(ids))))


async def submit_all(committer: GroupCommit, rows: list[dict[str, Any]]) -> list[Any]:
    """Submit every row at once (as concurrent requests would); each outcome or the exception it raised."""
    try:
        return await asyncio.gather(*(committer.submit(row) for row in rows), return_exceptions=True)
    finally:
        committer.close()


# --- group commit ---------------------------------------------------------------------------------------


def test_concurrent_submissions_are_committed_in_one_batch_and_all_published(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    batches: list[int] = []
    committer = GroupCommit(session_maker, observe_batch=batches.append)
    rows = gpu_rows(20)

    outcomes = run_coroutine(submit_all(committer, rows))

    ids = [row["id"] for row in rows]
    found = stored(session_maker, ids)
    assert batches == [20]
    assert len(found) == 20 and {job.status for job in found} == {"queued"}
    published = {job.published_at for job in found}
    assert len(published) == 1 and None not in published  # one UPDATE for the batch
    assert outcomes == [found[0].published_at] * 20
    assert set(ids) <= queued_job_ids(service_settings.broker_url)


def test_more_submissions_than_a_batch_holds_are_written_in_several_batches(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    batches: list[int] = []
    committer = GroupCommit(session_maker, max_batch=8, observe_batch=batches.append)
    rows = gpu_rows(20)

    run_coroutine(submit_all(committer, rows))

    assert batches == [8, 8, 4]
    found = stored(session_maker, [row["id"] for row in rows])
    assert len(found) == 20
    assert len({job.published_at for job in found}) == 3  # one UPDATE per batch
    assert None not in {job.published_at for job in found}


def test_a_row_the_database_refuses_fails_alone_and_its_batch_is_stored(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    committer = GroupCommit(session_maker)
    rows = gpu_rows(4)
    # A target device that does not exist: the foreign key refuses this row (on both databases).
    bad = jobs.job_row(tiny_spec(device="gpu", seed=999), target_device_id="nosuchdevice")
    rows.insert(2, bad)

    outcomes = run_coroutine(submit_all(committer, rows))

    assert isinstance(outcomes[2], IntegrityError)
    good = [row["id"] for row in rows if row is not bad]
    assert [outcome is not None for i, outcome in enumerate(outcomes) if i != 2] == [True] * 4
    found = stored(session_maker, [row["id"] for row in rows])
    assert sorted(job.id for job in found) == sorted(good)
    assert all(job.published_at is not None for job in found)


def test_a_batch_the_database_cannot_store_fails_every_request_and_stores_nothing(
    service_settings: Settings, tmp_path: Path
) -> None:
    # A database without the jobs table: the INSERT fails, as it would with the server down.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    committer = GroupCommit(sessionmaker(bind=engine, expire_on_commit=False))
    rows = gpu_rows(5)

    outcomes = run_coroutine(submit_all(committer, rows))

    engine.dispose()
    assert [type(outcome) for outcome in outcomes] == [OperationalError] * 5
    assert not {row["id"] for row in rows} & queued_job_ids(service_settings.broker_url)


def test_a_broker_outage_leaves_the_whole_batch_queued_and_unpublished(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    from services.core import queue

    dead = service_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    queue.configure(dead)
    try:
        rows = gpu_rows(6)
        outcomes = run_coroutine(submit_all(GroupCommit(session_maker), rows))
    finally:
        queue.configure(service_settings)

    assert outcomes == [None] * 6  # committed, answered, left to the reconciler
    found = stored(session_maker, [row["id"] for row in rows])
    assert [(job.status, job.published_at) for job in found] == [("queued", None)] * 6


def test_concurrent_http_submissions_are_group_committed_and_each_answer_is_its_committed_row(
    api: ApiServer, service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    def batch_metrics(client: httpx.Client) -> tuple[float, float]:
        text = client.get("/metrics").text
        values = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("bpbench_job_submit_batch")
        )
        prefix = "bpbench_job_submit_batch_size"
        return float(values[f"{prefix}_count"]), float(values[f"{prefix}_sum"])

    async def submit(bodies: list[dict[str, Any]]) -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {api.token}"}
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(base_url=api.url, headers=headers, limits=limits, timeout=30) as client:
            return await asyncio.gather(*(client.post("/api/v1/jobs", json=body) for body in bodies))

    bodies = [tiny_spec(device="gpu", seed=2000 + i).model_dump(mode="json") for i in range(40)]
    with api.client() as client:
        count0, sum0 = batch_metrics(client)
        responses = run_coroutine(submit(bodies))
        count1, sum1 = batch_metrics(client)

    assert [response.status_code for response in responses] == [202] * 40
    answers = {response.json()["id"]: response.json() for response in responses}
    found = {job.id: job for job in stored(session_maker, list(answers))}
    assert set(found) == set(answers)
    for job_id, answer in answers.items():
        assert answer["status"] == "queued" and answer["queue"] == "gpu"
        assert answer["spec_hash"] == found[job_id].spec_hash
        assert answer["published_at"] is not None
        assert found[job_id].published_at is not None
    assert set(answers) <= queued_job_ids(service_settings.broker_url)
    assert sum1 - sum0 == 40
    assert count1 - count0 < 40  # some requests shared a commit
    with api.client() as client:
        for job_id in answers:
            client.post(f"/api/v1/jobs/{job_id}/cancel")


def test_a_submission_the_database_cannot_store_is_a_503_and_nothing_is_accepted(
    redis_broker_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "bpbench.db"
    upgrade_to_head(f"sqlite:///{path}")
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{path}", broker_url=redis_broker_url)
    body = tiny_spec(device="gpu").model_dump(mode="json")
    with running_api(settings, tmp_path, ADMIN_TOKEN) as server, server.client() as client:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("ALTER TABLE jobs RENAME TO jobs_elsewhere")
            db.commit()
        refused = client.post("/api/v1/jobs", json=body)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("ALTER TABLE jobs_elsewhere RENAME TO jobs")
            db.commit()
            rows_after_refusal = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        accepted = client.post("/api/v1/jobs", json=body)

    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert "nothing was accepted" in refused.json()["detail"]
    assert rows_after_refusal == 0
    assert accepted.status_code == 202


def test_a_submissions_spec_is_the_validated_spec_without_its_target() -> None:
    body = {**tiny_spec(steps=7, optimizer={"name": "adam", "lr": 0.01}).model_dump(), "target": "abc"}
    submission = JobSubmission.model_validate(body)
    validated = tiny_spec(steps=7, optimizer={"name": "adam", "lr": 0.01})

    assert submission.engine_dict() == validated.engine_dict()
    assert submission.spec_hash() == validated.spec_hash()
    assert "target" not in submission.engine_dict()
    row = jobs.job_row(submission, target_device_id="abc", engine_doc=submission.engine_dict())
    assert (row["spec"], row["spec_hash"]) == (validated.engine_dict(), validated.spec_hash())
    assert row["target_device_id"] == "abc"


# --- token cache ----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_token_is_kept_for_its_ttl_and_then_looked_up_again() -> None:
    clock = FakeClock()
    cache = TokenCache(5.0, clock=clock)
    identity = TokenIdentity(id=7, name="ci", scopes=("submit",))
    cache.put("bpb_secret", identity)

    clock.now += 4.9
    assert cache.get("bpb_secret") == identity
    assert cache.get("bpb_other") is None
    clock.now += 0.1
    assert cache.get("bpb_secret") is None


def test_the_token_cache_keeps_no_revoked_token_nothing_with_ttl_0_and_at_most_its_size() -> None:
    clock = FakeClock()
    revoked = TokenIdentity(id=1, name="old", scopes=("read",), revoked=True)
    cache = TokenCache(5.0, clock=clock, max_entries=2)
    cache.put("bpb_revoked", revoked)
    for name in ("a", "b", "c"):
        cache.put(f"bpb_{name}", TokenIdentity(id=2, name=name, scopes=("read",)))
    off = TokenCache(0.0, clock=clock)
    off.put("bpb_a", TokenIdentity(id=2, name="a", scopes=("read",)))

    assert cache.get("bpb_revoked") is None
    assert [cache.get(f"bpb_{name}") is not None for name in ("a", "b", "c")] == [False, True, True]
    assert off.get("bpb_a") is None


def test_requests_with_the_same_uncached_token_share_one_database_lookup(
    session_maker: sessionmaker[Session], db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = create_token(db_session, name="looked-up-once", scopes=["read"])
    db_session.commit()
    calls: list[str] = []
    real = deps._look_up_token

    def counted(factory: sessionmaker[Session], raw: str) -> TokenIdentity | None:
        calls.append(raw)
        time.sleep(0.05)  # long enough for every request to arrive while it runs
        return real(factory, raw)

    monkeypatch.setattr(deps, "_look_up_token", counted)
    lookups = deps.TokenLookups(TokenCache(5.0))

    async def twenty_requests() -> list[TokenIdentity | None]:
        return await asyncio.gather(*(lookups.identity(session_maker, token) for _ in range(20)))

    identities = run_coroutine(twenty_requests())
    again = run_coroutine(lookups.identity(session_maker, token))

    assert len(calls) == 1
    assert {identity.name if identity else None for identity in identities} == {"looked-up-once"}
    assert again == identities[0]  # from the cache: still one lookup
    assert len(calls) == 1


def test_a_revoked_token_is_refused_within_the_cache_ttl(
    service_settings: Settings, db_session: Session, tmp_path: Path
) -> None:
    token, row = create_token(db_session, name="revoked-within-ttl", scopes=["read"])
    db_session.commit()
    with (
        running_api(service_settings, tmp_path, ADMIN_TOKEN, BPBENCH_TOKEN_CACHE_TTL_S="2") as server,
        server.client(token=token) as client,
    ):
        assert client.get("/api/v1/timeline").status_code == 200  # looked up, now cached
        auth_service.revoke_token(db_session, row.id)
        db_session.commit()
        revoked_at = time.monotonic()
        still_cached = client.get("/api/v1/timeline").status_code
        wait_until(
            lambda: client.get("/api/v1/timeline").status_code == 401, 5, "the revocation", interval_s=0.1
        )
        refused_after = time.monotonic() - revoked_at

    assert still_cached == 200
    assert refused_after <= 2.0 + 0.5


def test_a_new_token_works_at_once_though_the_cache_holds_others(api: ApiServer, db_session: Session) -> None:
    with api.client() as admin:
        assert admin.get("/api/v1/timeline").status_code == 200  # the admin token is cached
    with api.client(token="bpb_made-a-moment-later") as client:
        assert client.get("/api/v1/timeline").status_code == 401
        auth_service.add_token(db_session, "bpb_made-a-moment-later", name="later", scopes=["read"])
        db_session.commit()
        assert client.get("/api/v1/timeline").status_code == 200  # unknown tokens are never cached


# --- bpbench api --workers ------------------------------------------------------------------------------


def test_the_default_number_of_api_processes_is_one_per_cpu_at_most_eight() -> None:
    assert default_api_workers() == max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_API_WORKERS))


def test_bpbench_api_with_workers_serves_from_that_many_processes_and_stops_cleanly(
    redis_broker_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=redis_broker_url)  # a fresh, unmigrated SQLite file
    port = free_port()
    env = server_env(settings, ADMIN_TOKEN)
    argv = [*bpbench_command(), "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "3"]
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            return False

        wait_until(ready, 90, "bpbench api --workers 3 to serve")

        def three_servers() -> list[psutil.Process] | None:
            children = psutil.Process(process.pid).children()
            found = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
            return found if len(found) == 3 else None

        servers = wait_until(three_servers, 30, "three API processes")
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        bodies = [tiny_spec(device="gpu", seed=i).model_dump(mode="json") for i in range(6)]
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            answers = [client.post("/api/v1/jobs", json=body) for body in bodies]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    assert len(servers) == 3
    assert [answer.status_code for answer in answers] == [202] * 6
    assert code == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers)
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 6
    engine.dispose()


def test_bpbench_api_refuses_zero_workers() -> None:
    done = subprocess.run(
        [*bpbench_command(), "api", "--workers", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr


def test_group_commit_needs_a_session_without_a_transaction(session_maker: sessionmaker[Session]) -> None:
    rows = gpu_rows(1)
    with session_maker() as session:
        session.execute(select(func.count()).select_from(Job))  # begins a transaction
        try:
            jobs.insert_job_rows(session, rows)
        except ValueError as error:
            refused = str(error)
        else:
            refused = ""
    assert "no transaction" in refused
    assert stored(session_maker, [rows[0]["id"]]) == []


def test_submit_job_rows_commits_publishes_and_records_in_one_call(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    rows = gpu_rows(3)
    with session_maker() as session:
        outcome = jobs.submit_job_rows(session, rows)
    found = stored(session_maker, [row["id"] for row in rows])
    assert outcome.published == 3 and outcome.published_at is not None
    assert {job.published_at for job in found} == {outcome.published_at}
    assert {row["id"] for row in rows} <= queued_job_ids(service_settings.broker_url)


def test_a_batch_is_inserted_published_and_recorded_over_one_database_connection(
    service_settings: Settings, session_maker: sessionmaker[Session]
) -> None:
    engine = session_maker.kw["bind"]
    checkouts: list[int] = []

    def count_checkout(*_: Any) -> None:
        checkouts.append(1)

    event.listen(engine, "checkout", count_checkout)
    try:
        rows = gpu_rows(4)
        with session_maker() as session:
            outcome = jobs.submit_job_rows(session, rows)
    finally:
        event.remove(engine, "checkout", count_checkout)
    found = stored(session_maker, [row["id"] for row in rows])

    assert (outcome.published, len(checkouts)) == (4, 1)
    assert [job.published_at for job in found] == [outcome.published_at] * 4
    assert {row["id"] for row in rows} <= queued_job_ids(service_settings.broker_url)


def test_an_api_server_process_freezes_its_start_up_objects_and_collects_less_often() -> None:
    code = (
        "import gc; from services.api.main import SERVING_GC_THRESHOLDS, tune_gc_for_serving; "
        "tune_gc_for_serving(); "
        "print(gc.get_threshold() == SERVING_GC_THRESHOLDS, gc.get_freeze_count() > 1000)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )
    assert done.stdout.split() == ["True", "True"], done.stderr
