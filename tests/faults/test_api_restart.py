"""Fault 3: the API is killed and restarted in the middle of a burst of submissions.

A client thread submits jobs over HTTP as fast as it can, retrying refused connections; the API process
(uvicorn) is SIGKILLed part-way and started again on the same port. Every job that got a 202 must reach a
final state, with one result each; a request cut off by the kill may have committed its row without an
answer, so every job in the database must end too (the reconciler publishes rows nobody published).
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.faults.conftest import (
    ApiProcess,
    Stack,
    free_port,
    point_client_at,
    private_redis,
    shared_postgres_database,
    unique,
)
from tests.support.jobs import tiny_spec, wait_until

BURST = 150
KILL_AFTER = 50
RECONCILER = {"BPBENCH_QUEUED_REPUBLISH_AFTER_S": "5", "BPBENCH_RECONCILE_INTERVAL_S": "1"}


@pytest.mark.slow
def test_every_job_accepted_around_an_api_restart_reaches_a_final_state(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    shared_postgres_database(stack, request)
    private_redis(stack)
    point_client_at(stack)
    api = ApiProcess(stack, free_port())
    api.start()
    for name in (unique("api-a"), unique("api-b")):
        stack.worker(name)
    stack.reconciler(**RECONCILER)
    body = tiny_spec(steps=200).model_dump(mode="json")
    accepted: list[str] = []
    refused: list[str] = []
    done = threading.Event()

    def submit_burst() -> None:
        with api.client() as client:
            for i in range(BURST):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        response = client.post("/api/v1/jobs", json={**body, "seed": i})
                    except httpx.TransportError as exc:  # the API is down: retry, as a client would
                        refused.append(type(exc).__name__)
                        time.sleep(0.1)
                        continue
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    else:
                        refused.append(str(response.status_code))
                    break
        done.set()

    submitter = threading.Thread(target=submit_burst, daemon=True)
    started = time.monotonic()
    submitter.start()
    wait_until(lambda: len(accepted) >= KILL_AFTER, 60, f"{KILL_AFTER} submissions")
    assert api.proc is not None
    api.proc.kill()  # SIGKILL: requests in flight are cut off
    killed_at = time.monotonic()
    time.sleep(1.0)
    api.start()
    restart_s = time.monotonic() - killed_at
    assert done.wait(120), "the burst did not finish"

    wait_until(
        lambda: stack.all_final(accepted), 120, f"{len(accepted)} accepted jobs to finish", interval_s=0.5
    )
    wait_until(lambda: stack.all_final(), 60, "every job in the database to finish", interval_s=0.5)
    counts = stack.counts(accepted)
    every = stack.counts()

    assert len(accepted) + len([r for r in refused if r.isdigit()]) <= BURST
    assert len(accepted) >= BURST - 5, (len(accepted), refused)
    assert counts == {"succeeded": len(accepted), "results": len(accepted), "duplicates": 0}, counts
    assert every["duplicates"] == 0 and every["results"] == every["succeeded"]
    assert any(not r.isdigit() for r in refused)  # the client did see the API go away
    print(
        f"\nfault 3 (API restart): {len(accepted)} jobs accepted (202) of {BURST}, "
        f"{len(refused)} refused attempts while it was down ({restart_s:.1f} s), "
        f"{every['succeeded']} jobs in the database, {counts['results']} results, 0 duplicates, "
        f"{time.monotonic() - started:.1f} s in all"
    )
