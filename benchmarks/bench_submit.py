"""Target 1: accepted jobs/s through `POST /api/v1/jobs` against the raw Celery publish rate, in one run.

    .venv/bin/python benchmarks/bench_submit.py                 # one API process (`bpbench api`)
    .venv/bin/python benchmarks/bench_submit.py --uvicorn-workers 2 --profile

On a fresh PostgreSQL database and a claimed Redis database (benchmarks/service_stack.py), the API runs as
deployed (`bpbench api`: migrates, then uvicorn) with no worker, so every accepted job stays queued. Then,
interleaved for `--rounds` rounds:
- raw: `publish_job` (Celery `send_task` of `bpbench.run_job`, exactly what the API sends) in a loop in
  this process, into the same broker, for `--raw-seconds`;
- api: a load generator in another process (httpx, `--concurrency` connections on loopback) POSTs a tiny
  train spec for `--api-seconds`; only 202 answers count, and every latency is recorded.
The figure is the median over rounds of accepted/s divided by the raw publish rate of the same round, and
the p50/p99 latency at that load. `--profile` records the API with py-spy during the last api round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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
    service_env,
    start_py_spy,
    stop_py_spy,
    summarize_collapsed,
    tiny_train_spec,
)

# Parts of a submission, as frame names in the profile (substring match on "function (file:line)").
SUBMIT_PARTS = [
    "submit_job (services/api/routes/jobs.py",
    "submit_job (services/jobs/service.py",
    "publish_job (services/core/queue.py",
    "check_memory (services/api/routes/jobs.py",
    "job_spec (services/api/routes/jobs.py",
    "job_out (services/api/routes/jobs.py",
    "request_token (services/api/deps.py",
    "rate_limit (services/api/deps.py",
    "get_session (services/api/deps.py",
    "_do_ping",
    "commit (sqlalchemy/orm/session.py",
    "serialize_response (fastapi",
    "request_body_to_args (fastapi",
    "HttpMetricsMiddleware.__call__",
    "h11",
    "emit (logging",
    "run_sync_in_worker_thread",
]


async def _generate(url: str, token: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    body = json.dumps(tiny_train_spec()).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + seconds

        async def user() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.post("/api/v1/jobs", content=body)
                except httpx.HTTPError as exc:  # counted, never fatal: the figure is accepted jobs
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    continue
                elapsed = time.perf_counter() - started
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    latencies.append(elapsed)

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "accepted": len(latencies),
        "wall_s": wall,
        "statuses": statuses,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


def load_generator(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Run the load generator in another process; returns its counts and latency percentiles."""
    argv = [sys.executable, __file__, "--loadgen", url, "--concurrency", str(concurrency)]
    argv += ["--api-seconds", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def postgres_sessions(database_url: str) -> int:
    """Connections ever opened to this database (pg_stat_database.sessions): pool churn shows here."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (uvicorn --workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def raw_publish_rate(seconds: float) -> tuple[float, float]:
    """Jobs/s of `publish_job` (Celery send_task by name, as the API sends it) in a loop in this process,
    and the CPU milliseconds each publish cost this process."""
    from services.core.queue import publish_job

    for _ in range(200):  # warm the connection and producer pools
        publish_job(str(uuid.uuid4()), "cpu", time_limit_s=21600.0)
    count, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            publish_job(str(uuid.uuid4()), "cpu", time_limit_s=21600.0)
        count += 50
    return count / (time.perf_counter() - t0), 1000 * (time.process_time() - cpu0) / count


def main() -> None:
    """Parse the options and run the benchmark (or, with --loadgen, be the load generator)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--api-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--uvicorn-workers", type=int, default=1, help="1: `bpbench api`; N: uvicorn --workers N"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the API during the last round")
    parser.add_argument(
        "--env", action="append", default=[], help="extra KEY=VALUE for the API (a rate limit)"
    )
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        print(
            json.dumps(asyncio.run(_generate(args.loadgen, BENCH_TOKEN, args.concurrency, args.api_seconds)))
        )
        return

    from services.core import queue
    from services.core.config import Settings

    # The per-token rate limit (issue 4) would cap one benchmark token at its default 50/s: set high, kept on.
    extra = {"BPBENCH_RATE_LIMIT_PER_S": "1000000", "BPBENCH_RATE_LIMIT_BURST": "1000000"}
    extra.update(item.split("=", 1) for item in args.env)
    with (
        tempfile.TemporaryDirectory(prefix="bpbench-bench-") as tmp,
        postgres_database() as database_url,
        redis_database() as broker_url,
    ):
        data_dir = Path(tmp)
        queue.configure(Settings(database_url=database_url, broker_url=broker_url, data_dir=data_dir))
        env = service_env(database_url, broker_url, data_dir, **extra)
        with running_api(env, data_dir / "logs", uvicorn_workers=args.uvicorn_workers) as api:
            load_generator(api.url, args.concurrency, 2.0)  # warm-up: connections, caches, the token's row
            rounds = []
            for index in range(args.rounds):
                raw, raw_cpu_ms = raw_publish_rate(args.raw_seconds)
                profiler = None
                if args.profile and index == args.rounds - 1:
                    profiler = start_py_spy(
                        api.pid, PROFILE_DIR / "api-submit.collapsed", subprocesses=True, gil=True
                    )
                cpu0, sessions0 = tree_cpu_s(api.pid), postgres_sessions(database_url)
                gen = load_generator(api.url, args.concurrency, args.api_seconds)
                api_cpu_ms = 1000 * (tree_cpu_s(api.pid) - cpu0) / max(gen["accepted"], 1)
                new_connections = postgres_sessions(database_url) - sessions0
                stop_py_spy(profiler)
                accepted = gen["accepted"] / gen["wall_s"]
                rounds.append(
                    {
                        "raw_per_s": raw,
                        "api_per_s": accepted,
                        "raw_cpu_ms": raw_cpu_ms,
                        "api_cpu_ms": api_cpu_ms,
                        "new_db_connections": new_connections,
                        **gen,
                        "load": load_average(),
                    }
                )
                print(
                    f"round {index + 1}: raw publish {raw:7.0f}/s ({raw_cpu_ms:.2f} CPU-ms each)  "
                    f"api accepted {accepted:6.1f}/s ({api_cpu_ms:.2f} API CPU-ms each)  "
                    f"ratio {accepted / raw:6.3f}  p50 {gen['p50_ms']:.1f} ms  p99 {gen['p99_ms']:.1f} ms  "
                    f"new DB connections {new_connections}  statuses {gen['statuses']}  "
                    f"load {load_average()}",
                    flush=True,
                )
            if args.profile:
                collapsed = PROFILE_DIR / "api-submit.collapsed"
                print(f"\nAPI profile ({collapsed}; py-spy --gil: where the API's Python CPU time goes)")
                print("by part of the request (% of samples inclusive):")
                for name, share in inclusive_table(collapsed, SUBMIT_PARTS).items():
                    print(f"  {share:5.1f}%  {name}")
                print("hottest functions (% inclusive, % self):")
                for frame, incl, own in summarize_collapsed(collapsed, top=20):
                    print(f"  {incl:5.1f}% {own:5.1f}%  {frame}")
    ratios = [r["api_per_s"] / r["raw_per_s"] for r in rounds]
    summary = {
        "target": "submission throughput >= 50% of raw Celery publish",
        "api_accepted_per_s": statistics.median(r["api_per_s"] for r in rounds),
        "raw_publish_per_s": statistics.median(r["raw_per_s"] for r in rounds),
        "ratio_median": statistics.median(ratios),
        "raw_cpu_ms_per_publish": statistics.median(r["raw_cpu_ms"] for r in rounds),
        "api_cpu_ms_per_job": statistics.median(r["api_cpu_ms"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "concurrency": args.concurrency,
        "uvicorn_workers": args.uvicorn_workers,
        "load_average": load_average(),
        "machine": machine(),
    }
    summary["pass"] = summary["ratio_median"] >= 0.5
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
