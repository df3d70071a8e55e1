"""This machine's CPU through every stack installed here, end to end: a real worker per stack (`cpu`,
`oneapi:opencl:cpu:0`, `xla:cpu:0`, `opencl:0:0`) runs the same train job submitted over the HTTP API; the
real `/api/v1/compare` lists the CPU as one hardware measured through four stacks under the host's vendor,
and the dashboard in real headless Chromium shows the four stacks in its compare table and under the
vendor's row of its timeline.

A missing dpnp, JAX or PyOpenCL skips, except under CI=true (CI installs them), where it fails. One
database only: the compare queries and their grouping run on both databases in
tests/services/results/test_compare*.py; what is tested here is the stacks end to end, and a second
database would double the time for nothing.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from engine.backends.numpy_backend import cpu_model, host_cpu_vendor
from engine.backends.vendors import vendor_of_cpuinfo
from tests.services.web.test_dashboard import JOB_TIMEOUT_S, Console, signed_in  # noqa: F401 (fixture)
from tests.support import apiserver, needs
from tests.support.apiserver import ApiServer
from tests.support.jobs import tiny_spec, wait_until
from tests.support.servers import DATABASE_BACKENDS
from tests.support.workers import WorkerProcess

api = apiserver.api

# PostgreSQL, as deployed, unless this run was restricted to SQLite.
ONE_DATABASE = "postgresql" if "postgresql" in DATABASE_BACKENDS else DATABASE_BACKENDS[0]
pytestmark = pytest.mark.parametrize("database_url", [ONE_DATABASE], indirect=True)

# Each stack on this CPU: its worker's device, and the backend and library the fingerprint names.
STACKS = {
    "cpu": ("numpy", "numpy"),
    "oneapi:opencl:cpu:0": ("oneapi", "dpnp"),
    "xla:cpu:0": ("xla", "jax"),
    "opencl:0:0": ("opencl", "pyopencl"),  # pocl's CPU device (Debian's pocl-opencl-icd in CI)
}
EXTRAS = {"dpnp": "oneapi", "jax": "xla", "pyopencl": "opencl"}


def _require_stacks() -> None:
    """Skip (or under CI=true fail) unless every stack's library is installed."""
    missing = [
        f"{module} (the {extra} extra)"
        for module, extra in EXTRAS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return
    needs.missing(f"not installed: {', '.join(missing)}; pip install -e '.[oneapi,xla,opencl]'")


def _host_vendor() -> str:
    """The vendor the registry must name for this host's CPU: its CPUID vendor, read from /proc/cpuinfo
    here (an x86 host); a host without one (aarch64) is named by its model and architecture."""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        found = vendor_of_cpuinfo(fh.read())
    return found if found != "unknown" else host_cpu_vendor()


@pytest.fixture
def stack_workers(
    cpu_worker: WorkerProcess, worker_factory: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> dict[str, WorkerProcess]:
    """One real worker per stack: the session's CPU worker (the only one on the `cpu` queue) and a oneapi
    and an xla worker started side by side; device spelling -> worker."""
    _require_stacks()
    # Neither variable in the workers' environment: the oneapi worker finds the pip runtime and pins itself.
    monkeypatch.delenv("OCL_ICD_FILENAMES", raising=False)
    monkeypatch.delenv("ONEAPI_DEVICE_SELECTOR", raising=False)
    others = [device for device in STACKS if device != "cpu"]
    with ThreadPoolExecutor(len(others)) as pool:
        started = {device: pool.submit(worker_factory, device=device) for device in others}
        return {"cpu": cpu_worker} | {device: future.result() for device, future in started.items()}


def _submit(client: Any, body: dict[str, Any]) -> str:
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _succeeded(client: Any, job_ids: list[str], workers: dict[str, WorkerProcess]) -> list[dict[str, Any]]:
    """Wait until every job is final; each must have succeeded."""

    def final() -> list[dict[str, Any]] | None:
        docs = [client.get(f"/api/v1/jobs/{job_id}").json() for job_id in job_ids]
        return docs if all(d["status"] in ("succeeded", "failed", "cancelled") for d in docs) else None

    docs = wait_until(final, JOB_TIMEOUT_S, f"jobs {job_ids}", interval_s=0.25)
    logs = "\n".join(f"--- {w.name} ({d}):\n{w.log()}" for d, w in workers.items())
    for doc in docs:
        assert doc["status"] == "succeeded", f"{doc['device']}: {doc['error']}\n{logs}"
    return docs


@pytest.mark.slow
def test_this_cpu_is_one_hardware_through_every_stack_in_compare_and_on_the_dashboard(
    stack_workers: dict[str, WorkerProcess],
    api: ApiServer,
    signed_in: tuple[Any, Console],  # noqa: F811
    screenshot: Any,
) -> None:
    # The same job for each stack; its own seed isolates its spec in a shared database.
    seed = uuid.uuid4().int % 1_000_000
    bodies = {
        device: tiny_spec(
            device=device,
            model={"name": "two_layer_net"},
            synthetic_samples=1024,
            steps=200,
            batch_size=32,
            dtype="float32",
            seed=seed,
        ).model_dump(mode="json")
        for device in STACKS
    }
    with api.client() as client:
        ids = [_submit(client, body) for body in bodies.values()]
        jobs = _succeeded(client, ids, stack_workers)
        spec_hashes = {job["spec_hash"] for job in jobs}
        assert len(spec_hashes) == 1, spec_hashes  # where a job runs is not part of what it measures
        assert [(job["device"], job["worker"], job["device_id"]) for job in jobs] == [
            (device, worker.name, worker.device_id) for device, worker in stack_workers.items()
        ]
        answer = client.get("/api/v1/compare", params={"spec_hash": spec_hashes.pop()})
        assert answer.status_code == 200, answer.text
        compared = answer.json()
        devices = {d["id"]: d for d in client.get("/api/v1/devices").json()["items"]}

    vendor = _host_vendor()
    ids_by_device = {device: worker.device_id for device, worker in stack_workers.items()}
    assert len(set(ids_by_device.values())) == len(STACKS)  # hardware plus stack: a device per stack
    hardware_name = cpu_model()  # /proc/cpuinfo's model name, whichever stack measured it
    hardware = f"{vendor} {hardware_name}"
    rows = {row["device_id"]: row for row in compared["rows"]}
    assert set(rows) == set(ids_by_device.values())
    for device, (backend, library) in STACKS.items():
        row = rows[ids_by_device[device]]
        assert (row["hardware"], row["vendor"], row["device_name"]) == (hardware, vendor, hardware_name)
        assert (row["backend"], row["library"]) == (backend, devices[row["device_id"]]["library"])
        assert row["library"].startswith(f"{library} "), (device, row["library"])  # and its version
        assert row["samples_per_s"]["median"] > 0 and row["runs"] == 1, (device, row)
    # One hardware group: this CPU, its stacks fastest first.
    [group] = compared["hardware"]
    assert (group["hardware"], group["vendor"]) == (hardware, vendor)
    medians = [stack["samples_per_s"] for stack in group["stacks"]]
    assert medians == sorted(medians, reverse=True) and all(m > 0 for m in medians)
    assert {stack["device_id"]: stack["backend"] for stack in group["stacks"]} == {
        ids_by_device[device]: backend for device, (backend, _) in STACKS.items()
    }

    page, console = signed_in
    page.reload()  # the workers registered and the jobs finished after the page first loaded
    page.wait_for_selector("body[data-ready='true']")
    # The compare table: the stacks of this CPU, side by side under one hardware.
    page.select_option("#compare-filters select[name=spec_hash]", compared["spec_hash"])
    for device_id in ids_by_device.values():
        page.wait_for_selector(f"#compare-table tr[data-device-id='{device_id}']")
    table = page.locator("#compare-table tbody tr")
    assert table.count() == len(STACKS)
    assert {table.nth(i).get_attribute("data-hardware") for i in range(len(STACKS))} == {hardware}
    classes = [table.nth(i).get_attribute("class") for i in range(len(STACKS))]
    assert classes == ["", *["same-hardware"] * (len(STACKS) - 1)]
    for device_id, row in rows.items():
        cells = page.locator(f"#compare-table tr[data-device-id='{device_id}'] td").all_inner_texts()
        assert cells[1:3] == [f"{row['backend']} · {row['library']}", vendor], cells
    # Wherever the comparison names a device, one CPU's stacks are told apart by the stack.
    labels = {device_id: f"{hardware_name} · {row['backend']}" for device_id, row in rows.items()}
    options = page.eval_on_selector_all(
        "#compare-filters select[name=baseline] option", "options => options.map(o => [o.value, o.text])"
    )
    assert {value: text for value, text in options if value} == labels
    bars = page.evaluate("document.getElementById('compare-chart').data[0].x")
    assert bars == [f"{labels[row['device_id']]} ({row['device_id'][:6]})" for row in compared["rows"]]
    baseline = labels[compared["baseline_device_id"]]
    assert f" · baseline {baseline} · " in page.inner_text("#compare-spec")
    # The stacks' differences name each stack, and a field a stack does not record is a dash, not "null".
    note = page.inner_text("#compare-note")
    assert "backend differs: " in note and "null" not in note, note
    assert all(f"{label} " in note for label in labels.values()), note
    # The timeline: each stack's device under the vendor's row, named with its stack.
    vendor_row = page.locator(f"#timeline-list div.vendor[data-vendor='{vendor}']")
    notes = dict(
        page.evaluate("document.getElementById('timeline-chart').layout.annotations.map(a => [a.y, a.text])")
    )[vendor]
    for device_id, row in rows.items():
        stack = f"{row['backend']} · {row['library']}"
        text = vendor_row.locator(f"li[data-device-id='{device_id}']").inner_text()
        assert text.startswith(f"{hardware_name} ({stack}, {device_id})"), text
        assert "samples/s" in text, text  # the figure its train job measured
        assert f"<b>{hardware_name}</b> ({stack})" in notes, notes
    screenshot(page, "stacks")
    assert console.errors == []
