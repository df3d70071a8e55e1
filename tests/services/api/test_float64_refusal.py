"""A float64 job aimed only at devices that recorded no float64 is refused at submission (422 on `dtype`),
over real HTTP on both databases; `bpbench submit` prints that refusal as one line.

The module's API runs on a database of its own, so the devices that may take a job are exactly the ones
registered here (the session's shared database collects other tests' OpenCL and XLA devices). Its broker is
a Redis database of its own that no worker consumes: an accepted job stays queued, and no worker of the
session takes a job of this database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import upgrade_to_head
from services.devices.models import Device
from services.devices.service import register_device, register_worker
from tests.support.apiserver import ADMIN_TOKEN, ApiServer, running_api
from tests.support.cli import bpbench, one_line_error, user_env
from tests.support.jobs import tiny_spec
from tests.support.servers import DATABASE_BACKENDS, claimed_redis_database, empty_database

ACCEPTED = "float32 on it, or float64 on a device that has it (e.g. cpu)"


def fingerprint(spelling: str, backend: str, hardware: str, *, float64: bool) -> dict[str, Any]:
    """A fingerprint as a worker of `backend` on `spelling` records it (engine.backend.fingerprint)."""
    return {
        "device": spelling,
        "cpu_model": f"Test host CPU {uuid.uuid4().hex[:8]}",
        "physical_cores": 8,
        "logical_cores": 8,
        "numpy_version": "2.4.6",
        "blas": [],
        "python_version": "3.11.2",
        "platform": "Linux",
        "hostname": "fleet",
        "backend": {
            "name": backend,
            "library": {"opencl": "pyopencl", "oneapi": "dpnp", "numpy": "numpy"}[backend],
            "library_version": "1.0",
            "driver_version": "r41p0",
            "runtime_version": "3.0",
            "vendor": "ARM" if "Mali" in hardware else "Intel",
            "hardware": hardware,
            "float64": float64,
        },
    }


@dataclass
class Fleet:
    """The API of a database of its own and the devices registered in it."""

    api: ApiServer
    mali: Device  # opencl, no float64: the only device of its class
    arc: Device  # oneapi GPU, no float64
    oneapi_cpu: Device  # oneapi on a CPU, float64: the same class as `arc`
    cpu: Device  # numpy, float64
    # (Re)starts the Mali's worker now: a worker is live only while its heartbeat is recent, and this
    # module's earlier tests may outlast that under load.
    start_mali_worker: Callable[[], None]


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    with empty_database(request.param, request, tmp) as database_url:
        upgrade_to_head(database_url)
        engine = make_engine(database_url)
        with sessionmaker(bind=engine, expire_on_commit=False)() as session:
            mali = register_device(
                session, fingerprint("opencl:0:0", "opencl", "Mali-G78 MP24", float64=False)
            )
            arc = register_device(
                session, fingerprint("oneapi:level_zero:gpu:0", "oneapi", "Intel Arc A770", float64=False)
            )
            oneapi_cpu = register_device(
                session, fingerprint("oneapi:opencl:cpu:0", "oneapi", "Intel Xeon", float64=True)
            )
            cpu = register_device(session, fingerprint("cpu", "numpy", "Intel Xeon", float64=True))

        def start_mali_worker() -> None:
            """A live worker of the Mali, so that a suite for it is served."""
            with sessionmaker(bind=engine)() as session:
                register_worker(
                    session,
                    name="opencl@fleet",
                    device_id=mali.id,
                    device="opencl:0:0",
                    queues=["opencl", mali.queue],
                    hostname="fleet",
                    pid=1,
                )

        # (An unreachable broker would do as well, but each accepted job then waits out the publisher's
        # retries: 6 s a job.)
        with claimed_redis_database() as broker_url:
            settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=tmp / "data")
            with running_api(settings, tmp, ADMIN_TOKEN, ready_path="/healthz") as api:
                yield Fleet(api, mali, arc, oneapi_cpu, cpu, start_mali_worker)
        engine.dispose()


def submit(fleet: Fleet, **fields: Any) -> Any:
    body = {**tiny_spec().model_dump(mode="json"), **fields}
    with fleet.api.client() as client:
        return client.post("/api/v1/jobs", json=body)


def test_a_float64_job_that_only_devices_without_float64_may_take_is_a_422_naming_dtype_device_and_accepted(
    fleet: Fleet,
) -> None:
    refusal = (
        "float64 cannot run on device 'opencl:0:0' (no registered device that takes opencl jobs has "
        f"float64: Mali-G78 MP24 ({fleet.mali.id})); accepted: {ACCEPTED}"
    )
    refused = submit(fleet, device="opencl:0:0", dtype="float64")
    assert refused.status_code == 422
    (item,) = refused.json()["detail"]
    assert (item["field"], item["value"], item["accepted"]) == ("dtype", "float64", refusal)
    assert item["message"] == f"dtype: {refusal}"


def test_the_same_job_in_float32_is_taken(fleet: Fleet) -> None:
    taken = submit(fleet, device="opencl:0:0", dtype="float32")
    assert taken.status_code == 202, taken.text
    assert (taken.json()["status"], taken.json()["queue"]) == ("queued", "opencl")


def test_a_float64_job_aimed_at_a_device_without_float64_by_its_id_is_refused_naming_it(fleet: Fleet) -> None:
    refused = submit(fleet, device="oneapi:level_zero:gpu:0", dtype="float64", target=fleet.arc.id)
    assert refused.status_code == 422
    (item,) = refused.json()["detail"]
    assert item["field"] == "dtype"
    assert item["accepted"] == (
        "float64 cannot run on device 'oneapi:level_zero:gpu:0' (its target Intel Arc A770 "
        f"({fleet.arc.id}) has no float64); accepted: {ACCEPTED}"
    )


def test_a_float64_job_is_taken_when_one_device_that_may_take_it_has_float64(fleet: Fleet) -> None:
    # The Arc has none, but a oneAPI worker on a CPU also takes jobs spelled for the oneapi queue.
    taken = submit(fleet, device="oneapi:level_zero:gpu:0", dtype="float64")
    assert taken.status_code == 202, taken.text
    assert taken.json()["queue"] == "oneapi"


def test_a_float64_job_aimed_at_a_device_with_float64_is_taken(fleet: Fleet) -> None:
    on_cpu = submit(fleet, device="cpu", dtype="float64", target=fleet.cpu.id)
    on_oneapi_cpu = submit(fleet, device="oneapi:opencl:cpu:0", dtype="float64", target=fleet.oneapi_cpu.id)
    assert (on_cpu.status_code, on_oneapi_cpu.status_code) == (202, 202), (on_cpu.text, on_oneapi_cpu.text)
    assert on_cpu.json()["queue"] == f"device.{fleet.cpu.id}"


def test_a_float64_job_no_registered_device_may_take_is_taken_for_its_worker_to_check(fleet: Fleet) -> None:
    # No XLA worker has registered here: only a worker can tell, and it checks at run time.
    taken = submit(fleet, device="xla:cpu:0", dtype="float64")
    assert taken.status_code == 202, taken.text


def test_the_device_list_says_which_devices_have_float64(fleet: Fleet) -> None:
    with fleet.api.client() as client:
        items = client.get("/api/v1/devices").json()["items"]
    float64 = {item["id"]: item["float64"] for item in items}
    assert float64 == {
        fleet.mali.id: False,
        fleet.arc.id: False,
        fleet.oneapi_cpu.id: True,
        fleet.cpu.id: True,
    }


def test_a_suite_on_a_device_without_float64_leaves_the_gradient_check_out_and_says_why(fleet: Fleet) -> None:
    fleet.start_mali_worker()
    with fleet.api.client() as client:
        response = client.post("/api/v1/suites", json={"name": "smoke", "devices": [fleet.mali.id]})
    assert response.status_code == 202, response.text
    suite = response.json()
    assert [job["suite_item"] for job in suite["jobs"]] == [
        "gemm calibration", "textbook net", "MLP on synthetic data", "simple_convnet",
        "backprop vs numerical",
    ]  # fmt: skip
    # Spelt as its worker's fingerprint was (`opencl` alone is no device), aimed at it by id.
    places = {(job["device"], job["target_device_id"]) for job in suite["jobs"]}
    assert places == {("opencl:0:0", fleet.mali.id)}
    assert suite["left_out"] == [
        f"gradient check on {fleet.mali.id}: float64 cannot run on device 'opencl:0:0' (its target "
        f"Mali-G78 MP24 ({fleet.mali.id}) has no float64); accepted: {ACCEPTED}"
    ]


def test_bpbench_submit_prints_the_refusal_in_one_line(fleet: Fleet, tmp_path: Path) -> None:
    env = user_env(fleet.api.url, tmp_path / "data", fleet.api.token)
    result = bpbench(env, "submit", "--device", "opencl:0:0", "--dtype", "float64")
    assert one_line_error(result) == (
        "error: HTTP 422 from POST /api/v1/jobs: dtype: float64 cannot run on device 'opencl:0:0' (no "
        f"registered device that takes opencl jobs has float64: Mali-G78 MP24 ({fleet.mali.id})); "
        f"accepted: {ACCEPTED}"
    )
