"""One CPU measured through two stacks: two devices (hardware plus stack), listed side by side in compare,
each under its backend's vendor."""

from __future__ import annotations

import copy
import random
from typing import Any

from sqlalchemy.orm import Session

from engine.backend import CPU, fingerprint
from services.devices.models import Device
from services.devices.service import register_device, software_of, stack_name
from services.jobs import service as jobs
from services.results.compare import compare
from services.results.filters import ResultFilter
from tests.support.jobs import tiny_spec


def _stack(doc: dict[str, Any], **backend: Any) -> dict[str, Any]:
    """This host's fingerprint as another backend would record it on the same CPU."""
    other = copy.deepcopy(doc)
    other["backend"] = {**other["backend"], **backend}
    return other


def _measured(session: Session, device: Device, spelling: str, batch_size: int, median: float) -> None:
    """A train job on `device`, claimed and completed through the job service with these trials."""
    job = jobs.create_job(session, tiny_spec(device=spelling, batch_size=batch_size))
    session.commit()
    claim = jobs.claim_job(session, job.id, worker_name="w@stacks", device_id=device.id)
    assert claim is not None
    trials = [median - 10, median, median + 10]
    document = {
        "kind": "train",
        "metrics": {"steps": 20},
        "statistics": {"samples_per_s": {"median": median, "ci95": [median - 10, median + 10]}},
        "trials": trials,
        "fingerprint": device.fingerprint,
        "engine_time_s": 0.25,
    }
    assert jobs.complete_job(session, job.id, document, attempt=claim.attempt) is not None


def test_one_cpu_through_two_stacks_is_two_devices_listed_side_by_side(db_session: Session) -> None:
    here = fingerprint(CPU)
    model = f"{here['cpu_model']} (stacks test {random.randrange(10**9)})"  # this test's own hardware
    here["cpu_model"] = here["backend"]["hardware"] = model
    through_xla = _stack(here, name="xla", library="jax", library_version="0.4.38")
    elsewhere = _stack(here, hardware="AMD EPYC 9654 (stacks test)", vendor="AMD")
    elsewhere["cpu_model"] = "AMD EPYC 9654 (stacks test)"
    numpy_cpu, xla_cpu, epyc = (register_device(db_session, fp) for fp in (here, through_xla, elsewhere))
    batch_size = random.randrange(40_000, 60_000)  # isolates this test's spec in a shared database

    _measured(db_session, xla_cpu, "xla:cpu:0", batch_size, 3000.0)
    _measured(db_session, epyc, "cpu", batch_size, 2000.0)
    _measured(db_session, numpy_cpu, "cpu", batch_size, 1000.0)
    answer = compare(db_session, ResultFilter(batch_size=batch_size), None)

    assert xla_cpu.id != numpy_cpu.id and xla_cpu.name == numpy_cpu.name == model
    assert (xla_cpu.device_class, numpy_cpu.device_class) == ("xla", "cpu")
    # The same CPU's two stacks side by side, though the EPYC is faster than its numpy stack.
    assert [(r["device_id"], r["backend"], r["library"]) for r in answer["rows"]] == [
        (xla_cpu.id, "xla", "jax 0.4.38"),
        (numpy_cpu.id, "numpy", f"numpy {here['numpy_version']}"),
        (epyc.id, "numpy", f"numpy {here['numpy_version']}"),
    ]
    vendor = numpy_cpu.vendor
    assert [r["hardware"] for r in answer["rows"]] == [f"{vendor} {model}"] * 2 + [
        "AMD AMD EPYC 9654 (stacks test)"
    ]
    assert answer["hardware"] == [
        {
            "hardware": f"{vendor} {model}",
            "vendor": vendor,
            "stacks": [
                {"device_id": xla_cpu.id, "backend": "xla", "library": "jax 0.4.38", "samples_per_s": 3000.0},
                {
                    "device_id": numpy_cpu.id,
                    "backend": "numpy",
                    "library": f"numpy {here['numpy_version']}",
                    "samples_per_s": 1000.0,
                },
            ],
        },
        {
            "hardware": "AMD AMD EPYC 9654 (stacks test)",
            "vendor": "AMD",
            "stacks": [
                {
                    "device_id": epyc.id,
                    "backend": "numpy",
                    "library": f"numpy {here['numpy_version']}",
                    "samples_per_s": 2000.0,
                }
            ],
        },
    ]


def test_software_names_a_stack_other_than_numpy_and_cuda_whose_versions_it_always_had() -> None:
    xla = {
        "backend": {"name": "xla", "library": "jax", "library_version": "0.4.38", "runtime_version": "0.4.38"}
    }
    assert {k: software_of(xla).get(k) for k in ("backend", "library", "backend_runtime")} == {
        "backend": "xla",
        "library": "jax 0.4.38",
        "backend_runtime": "0.4.38",
    }
    # NumPy's stack: as before the registry (its version under `numpy`), so no history is cut by it.
    numpy = {
        "numpy_version": "2.4.6",
        "backend": {"name": "numpy", "library": "numpy", "library_version": "2.4.6"},
    }
    assert software_of(numpy) == software_of({"numpy_version": "2.4.6"}) == {"numpy": "2.4.6"}
    assert (stack_name(xla), stack_name(numpy), stack_name({"numpy_version": "2.4.6"})) == (
        "xla (jax 0.4.38)",
        "numpy (numpy 2.4.6)",
        "numpy (numpy 2.4.6)",
    )


def test_a_device_registered_through_its_backend_takes_the_backends_vendor(db_session: Session) -> None:
    doc = _stack(fingerprint(CPU), vendor="Apple", hardware=f"Apple M3 ({random.randrange(10**9)})")
    device = register_device(db_session, doc)
    assert (device.vendor, device.name, device.device_class) == ("Apple", doc["backend"]["hardware"], "cpu")
