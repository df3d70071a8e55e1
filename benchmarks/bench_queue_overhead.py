"""Target 2: what the queue costs a one-second job: submission -> `succeeded` minus the engine's own time.

    .venv/bin/python benchmarks/bench_queue_overhead.py            # 50 jobs, p50 of the overhead
    .venv/bin/python benchmarks/bench_queue_overhead.py --jobs 20 --profile

The stack runs as deployed on a fresh PostgreSQL database and a claimed Redis database: `bpbench api` and one
`bpbench worker --device cpu --threads 1` (prefork, one process). A train job is calibrated so that its
engine time (`engine_time_s` of its result) is about `--engine-seconds`; then `--jobs` such jobs are run one
after another on the idle worker. For each: the clock starts before `POST /api/v1/jobs` is sent and stops
when this process sees the row `succeeded` (it polls the database every `--poll-ms`, which adds half that on
average: counted as overhead, not subtracted). overhead = that wall time - engine_time_s.

The overhead is split with the row's own timestamps: post (the POST's round trip, seen by the client), API
(created -> published), queue (published -> claimed by the worker: broker, Celery's hand-off to the pool
process, the claim), run (claimed -> finished, minus the engine: the worker's own work around the engine),
and after (finished -> seen: the result's commit, polling, and the part of the POST before the row exists).
`--profile` records the worker's pool process with py-spy over the whole series.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import (
    BENCH_TOKEN,
    PROFILE_DIR,
    inclusive_table,
    load_average,
    machine,
    percentile,
    postgres_database,
    redis_database,
    running_api,
    running_worker,
    service_env,
    start_py_spy,
    stop_py_spy,
)

# Parts of a job's life in the pool process, as frame names in the profile (substring match).
WORKER_PARTS = [
    "execute_job (workers/tasks.py",
    "claim_job (services/jobs/service.py",
    "check_memory (workers/tasks.py",
    "_run_train (engine/jobs.py",
    "to_jsonable (engine/jobs.py",
    "progress (workers/tasks.py",
    "should_stop (workers/tasks.py",
    "complete_job (services/jobs/service.py",
    "build_result (services/results/service.py",
    "free_gpu_memory (workers/tasks.py",
    "JobHeartbeat",
    "trace_task (celery",
    "update_progress (services/jobs/service.py",
    "_do_ping",
    "Connection.wait (psycopg",
    "commit (sqlalchemy/orm/session.py",
    "fingerprint (engine/backend.py",
    "_make_synthetic (engine/datasets.py",
]


PROFILE_RATE = 500  # py-spy samples per second


def one_second_spec(steps: int) -> dict[str, Any]:
    """A train job whose engine time grows with `steps` (an MLP on generated data, one BLAS thread)."""
    return {
        "kind": "train",
        "device": "cpu",
        "model": {"name": "mlp", "layers": [784, 128, 10]},
        "dataset": "synthetic",
        "synthetic_samples": 2048,
        "steps": steps,
        "batch_size": 64,
        "timing": {"warmup": 5, "window": 10, "min_repeats": 3, "max_repeats": 50},
    }


def run_one(client: Any, engine: Any, spec: dict[str, Any], poll_s: float) -> dict[str, float]:
    """Submit one job and wait until it succeeded; returns its timings in seconds."""
    from sqlalchemy import select

    from services.jobs.models import Job
    from services.results.models import Result

    t0 = time.perf_counter()
    response = client.post("/api/v1/jobs", json=spec)
    post_s = time.perf_counter() - t0
    response.raise_for_status()
    job_id = response.json()["id"]
    with engine.connect() as connection:
        while True:
            status = connection.execute(select(Job.status).where(Job.id == job_id)).scalar_one()
            connection.rollback()
            if status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(poll_s)
        seen = time.perf_counter() - t0
        job = connection.execute(
            select(Job.created_at, Job.published_at, Job.started_at, Job.finished_at, Job.error).where(
                Job.id == job_id
            )
        ).one()
        engine_s = connection.execute(select(Result.engine_time_s).where(Result.job_id == job_id)).scalar()
    if status != "succeeded" or engine_s is None:
        raise RuntimeError(f"job {job_id} ended {status}: {job.error}")
    run_s = (job.finished_at - job.started_at).total_seconds()
    return {
        "wall_s": seen,
        "engine_s": float(engine_s),
        "overhead_s": seen - float(engine_s),
        "post_s": post_s,
        "api_s": (job.published_at - job.created_at).total_seconds(),
        "queue_s": (job.started_at - job.published_at).total_seconds(),
        "run_minus_engine_s": run_s - float(engine_s),
        "after_s": seen - (job.finished_at - job.created_at).total_seconds(),
    }


def main() -> None:
    """Parse the options, start the stack, calibrate, run the series and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--engine-seconds", type=float, default=1.0)
    parser.add_argument("--poll-ms", type=float, default=5.0)
    parser.add_argument("--pause-s", type=float, default=0.3, help="idle time between jobs")
    parser.add_argument("--profile", action="store_true", help="py-spy the worker's pool process")
    args = parser.parse_args()

    import httpx

    from services.core.db import make_engine

    extra = {"BPBENCH_RATE_LIMIT_PER_S": "1000000", "BPBENCH_RATE_LIMIT_BURST": "1000000"}
    with (
        tempfile.TemporaryDirectory(prefix="bpbench-bench-") as tmp,
        postgres_database() as database_url,
        redis_database() as broker_url,
    ):
        data_dir = Path(tmp)
        env = service_env(database_url, broker_url, data_dir, **extra)
        with (
            running_api(env, data_dir / "logs") as api,
            running_worker(env, data_dir / "logs", concurrency=1, threads=1) as worker,
            httpx.Client(
                base_url=api.url, headers={"Authorization": f"Bearer {BENCH_TOKEN}"}, timeout=60
            ) as client,
        ):
            engine = make_engine(database_url)
            poll_s = args.poll_ms / 1000
            # Calibrate: the engine time of a 300-step job, then scale the steps to the target.
            probe = run_one(client, engine, one_second_spec(300), poll_s)
            steps = max(20, int(300 * args.engine_seconds / probe["engine_s"]))
            run_one(client, engine, one_second_spec(steps), poll_s)  # warm: imports, dataset, caches
            print(
                f"calibrated: {steps} steps ~ {args.engine_seconds:g} s of engine time; load {load_average()}"
            )
            profiler = None
            if args.profile:
                import psutil

                children = psutil.Process(worker.pid).children(recursive=True)
                target = children[0].pid if children else worker.pid
                profiler = start_py_spy(
                    target, PROFILE_DIR / "worker-overhead.collapsed", idle=True, rate=PROFILE_RATE
                )
            rows = []
            for index in range(args.jobs):
                time.sleep(args.pause_s)
                row = run_one(client, engine, one_second_spec(steps), poll_s)
                rows.append(row)
                if index % 10 == 9:
                    print(
                        f"  {index + 1} jobs: last overhead {1000 * row['overhead_s']:.1f} ms on "
                        f"{row['engine_s']:.3f} s engine; load {load_average()}",
                        flush=True,
                    )
            stop_py_spy(profiler)
            engine.dispose()
    overhead_ratio = [r["overhead_s"] / r["engine_s"] for r in rows]
    summary: dict[str, Any] = {
        "target": "queue overhead p50 <= 5% of engine time",
        "jobs": len(rows),
        "engine_s_p50": statistics.median(r["engine_s"] for r in rows),
        "overhead_ms_p50": 1000 * statistics.median(r["overhead_s"] for r in rows),
        "overhead_ms_p90": 1000 * percentile([r["overhead_s"] for r in rows], 90),
        "overhead_ratio_p50": statistics.median(overhead_ratio),
        "split_ms_p50": {
            key: 1000 * statistics.median(r[key] for r in rows)
            for key in ("post_s", "api_s", "queue_s", "run_minus_engine_s", "after_s")
        },
        "poll_ms": args.poll_ms,
        "load_average": load_average(),
        "machine": machine(),
    }
    summary["pass"] = summary["overhead_ratio_p50"] <= 0.05
    print(json.dumps(summary, indent=2))
    if args.profile:
        collapsed = PROFILE_DIR / "worker-overhead.collapsed"
        print(f"\nworker pool process ({collapsed}; py-spy --idle: wall-clock time of its threads)")
        print("by part of the job (the task's thread: % of its samples, ms per job at the nominal rate):")
        shares = inclusive_table(collapsed, WORKER_PARTS, skip_idle=False, within="execute_job")
        samples = shares.pop("_samples", 0.0)
        for name, share in shares.items():
            per_job_ms = share / 100 * samples / PROFILE_RATE / len(rows) * 1000
            print(f"  {share:5.1f}%  {per_job_ms:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
