"""Target 3: tiny jobs per second through one worker process, and what limits it (a py-spy profile).

    .venv/bin/python benchmarks/bench_worker_throughput.py             # 300 jobs of 20 steps
    .venv/bin/python benchmarks/bench_worker_throughput.py --no-profile

On a fresh PostgreSQL database and a claimed Redis database, `--jobs` tiny train jobs (20 steps of a
784-16-10 MLP, what the tests run) are submitted through the job service (committed, then published), so
the queue is full before the worker starts. Then one `bpbench worker --concurrency 1 --threads 1` drains it.
jobs/s = jobs / (last `finished_at` - first `started_at`), from the rows themselves; the share of that
time spent inside the engine is the sum of `engine_time_s` over it.

With py-spy (pip install py-spy), the pool process that runs the jobs is recorded with `--idle` (wall
time): the table splits each job's time into the engine, the claim, the result write, progress and
cancellation checks, Celery's own code, and waiting for the next message (the pool process idle between two
jobs: the broker round trip and the hand-off from the consumer process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import (
    PROFILE_DIR,
    fresh_backing,
    inclusive_table,
    load_average,
    machine,
    running_worker,
    start_py_spy,
    stop_py_spy,
    summarize_collapsed,
    tiny_train_spec,
    wait_until,
)

PROFILE_RATE = 250
# Parts of a job's life in the pool process (substring match on "function (file:line)").
PARTS = [
    "trace_task (celery",
    "execute_job (services/jobs/runner.py",
    "run_job (engine/jobs.py",
    "_run_train (engine/jobs.py",
    "_load (engine/jobs.py",
    "_build (engine/jobs.py",
    "fingerprint (engine/backend.py",
    "claim_job (services/jobs/service.py",
    "complete_job (services/jobs/service.py",
    "check_memory (services/jobs/runner.py",
    "JobMonitor.__init__",
    "progress (services/jobs/runner.py",
    "should_stop (services/jobs/runner.py",
    "JobHeartbeats.watch",
    "JobHeartbeats.unwatch",
    "_do_ping",
    "Connection.wait (psycopg",
    "job_context",
]


def submit(database_url: str, broker_url: str, data_dir: Path, count: int) -> None:
    """Submit `count` tiny jobs through the job service (row committed, then published)."""
    from services.core import queue
    from services.core.config import Settings
    from services.core.db import session_factory
    from services.jobs import service
    from services.jobs.spec import JobSpec

    settings = Settings(database_url=database_url, broker_url=broker_url, data_dir=data_dir)
    queue.configure(settings)
    spec = JobSpec.model_validate(tiny_train_spec())
    with session_factory(settings)() as session:
        for _ in range(count):
            service.submit_job(session, spec)


def finished_count(engine: Any) -> int:
    """Jobs in a final state."""
    from sqlalchemy import func, select

    from services.jobs.models import FINAL_STATUSES, Job

    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(Job).where(Job.status.in_(sorted(FINAL_STATUSES)))
            ).scalar_one()
        )


def main() -> None:
    """Parse the options, fill the queue, drain it with one worker process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()

    from sqlalchemy import func, select

    from services.core.db import make_engine
    from services.jobs.models import Job
    from services.results.models import Result

    collapsed = PROFILE_DIR / "worker-tiny.collapsed"
    with fresh_backing() as backing:
        from services.core.migrate import upgrade_to_head

        data_dir, database_url, broker_url = backing.data_dir, backing.database_url, backing.broker_url
        upgrade_to_head(database_url)
        submit(database_url, broker_url, data_dir, args.jobs)
        print(f"{args.jobs} jobs queued; load {load_average()}", flush=True)
        engine = make_engine(database_url)
        env = backing.env()
        with running_worker(env, data_dir / "logs", concurrency=1, threads=1) as worker:
            profiler = None
            if not args.no_profile:
                import psutil

                children = psutil.Process(worker.pid).children(recursive=True)
                target = children[0].pid if children else worker.pid
                profiler = start_py_spy(target, collapsed, idle=True, rate=PROFILE_RATE)
            drained = lambda: finished_count(engine) >= args.jobs  # noqa: E731
            wait_until(drained, 1800, "the queue to drain", interval_s=0.5)
            stop_py_spy(profiler)
        with engine.connect() as connection:
            first, last, done = connection.execute(
                select(func.min(Job.started_at), func.max(Job.finished_at), func.count()).where(
                    Job.status == "succeeded"
                )
            ).one()
            engine_s = connection.execute(select(func.sum(Result.engine_time_s))).scalar_one()
        engine.dispose()
    if first is None or last is None or engine_s is None:
        raise RuntimeError("no job succeeded; see the worker's log")
    wall = (last - first).total_seconds()
    summary: dict[str, Any] = {
        "target": "tiny-job throughput per worker process (measured, with what limits it)",
        "jobs": int(done),
        "jobs_per_s": done / wall,
        "ms_per_job": 1000 * wall / done,
        "engine_ms_per_job": 1000 * float(engine_s) / done,
        "engine_share": float(engine_s) / wall,
        "load_average": load_average(),
        "machine": machine(),
    }
    print(json.dumps(summary, indent=2))
    if profiler is not None:
        print(f"\npool process, wall time ({collapsed}, py-spy --idle at {PROFILE_RATE} Hz)")
        # The pool process's main thread runs billiard's work loop; heartbeat threads are left out.
        shares = inclusive_table(collapsed, PARTS, skip_idle=False, within="workloop (billiard")
        shares.pop("_samples", None)
        busy = shares.get("trace_task (celery", 0.0)
        print(f"  {100 - busy:5.1f}%  between jobs (waiting for the next message)")
        for name, share in shares.items():
            print(f"  {share:5.1f}%  {name}")
        print("hottest functions outside waiting (% inclusive, % self):")
        for frame, incl, own in summarize_collapsed(collapsed, top=15):
            print(f"  {incl:5.1f}% {own:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
