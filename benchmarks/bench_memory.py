"""Target 5: resident memory of a worker over 1,000 jobs and of the API over 100,000 requests, from outside.

    .venv/bin/python benchmarks/bench_memory.py                       # both phases
    .venv/bin/python benchmarks/bench_memory.py --jobs 1000 --requests 0
    .venv/bin/python benchmarks/bench_memory.py --jobs 0 --requests 100000

One stack on a fresh PostgreSQL database and a claimed Redis database: `bpbench api` and one
`bpbench worker --concurrency 1 --threads 1`. psutil reads the RSS of each process (the worker's consumer
process and its pool process separately) from this process.

- Worker: `--jobs` tiny train jobs go through the API in batches of 50 (the queue never runs dry); the RSS
  is read after every batch. Growth = last reading / reading after the warm-up (`--warmup-jobs`) - 1.
- API: `--requests` GETs from a load generator in another process (8 connections), a mix of reads: job
  pages filtered by status, single jobs with their result summary, results with trials, compare, devices,
  timeline, health. The RSS is read every `--sample-every` requests; growth as above after
  `--warmup-requests`.
Target: growth <= 10% for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import (
    BENCH_TOKEN,
    RATE_LIMIT_OUT_OF_THE_WAY,
    fresh_backing,
    load_average,
    machine,
    process_tree_rss,
    running_api,
    running_worker,
    tiny_train_spec,
    wait_until,
)

MIB = 1024 * 1024


async def _read_load(url: str, paths: list[str], count: int, concurrency: int) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
    statuses: dict[int, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as client:

        async def user() -> None:
            nonlocal next_index
            while next_index < count:
                path = paths[next_index % len(paths)]
                next_index += 1
                response = await client.get(path)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return {"statuses": statuses}


def read_requests(url: str, paths: list[str], count: int) -> dict[str, Any]:
    """`count` GETs cycling through `paths`, from another process; returns the status counts."""
    argv = [
        sys.executable,
        __file__,
        "--loadgen",
        url,
        "--requests",
        str(count),
        "--paths",
        json.dumps(paths),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def succeeded_count(engine: Any) -> int:
    """Jobs in a final state."""
    from sqlalchemy import func, select

    from services.jobs.models import FINAL_STATUSES, Job

    with engine.connect() as connection:
        query = select(func.count()).select_from(Job).where(Job.status.in_(sorted(FINAL_STATUSES)))
        return int(connection.execute(query).scalar_one())


def growth(readings: list[tuple[int, int]], after: int) -> float:
    """Last reading over the first reading at or after `after` (x-axis units), minus 1."""
    base = next((rss for x, rss in readings if x >= after), readings[0][1])
    return readings[-1][1] / base - 1.0


def worker_phase(client: Any, engine: Any, worker_pid: int, jobs: int, warmup: int) -> dict[str, Any]:
    """Run `jobs` tiny jobs through the worker in batches of 50; RSS of its processes after each batch."""
    import psutil

    spec = tiny_train_spec()
    parent: list[tuple[int, int]] = []
    child: list[tuple[int, int]] = []
    done = 0
    while done < jobs:
        batch = min(50, jobs - done)
        for _ in range(batch):
            client.post("/api/v1/jobs", json=spec).raise_for_status()
        target = done + batch

        def finished(target: int = target) -> bool:
            return succeeded_count(engine) >= target

        wait_until(finished, 600, f"{target} jobs", interval_s=0.2)
        done = target
        sizes = process_tree_rss(worker_pid)
        children = [p.pid for p in psutil.Process(worker_pid).children(recursive=True)]
        parent.append((done, sizes.get(worker_pid, 0)))
        child.append((done, sum(sizes.get(pid, 0) for pid in children)))
        print(
            f"  {done:5d} jobs: consumer {parent[-1][1] / MIB:6.1f} MiB, "
            f"pool process {child[-1][1] / MIB:6.1f} MiB  load {load_average()}",
            flush=True,
        )
    return {
        "jobs": done,
        "consumer_mib": [round(rss / MIB, 1) for _, rss in parent],
        "pool_mib": [round(rss / MIB, 1) for _, rss in child],
        "consumer_growth": growth(parent, warmup),
        "pool_growth": growth(child, warmup),
    }


def api_phase(
    url: str, api_pid: int, paths: list[str], requests: int, every: int, warmup: int
) -> dict[str, Any]:
    """`requests` reads in slices of `every`; after each slice the RSS of every process of the API (`bpbench
    api` serves from `--workers N` uvicorn processes under a supervisor): each must stay flat."""
    total: list[tuple[int, int]] = []
    by_pid: dict[int, list[tuple[int, int]]] = {}
    statuses: dict[str, int] = {}
    sent = 0
    while sent < requests:
        count = min(every, requests - sent)
        result = read_requests(url, paths, count)
        for code, n in result["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
        sent += count
        sizes = process_tree_rss(api_pid)
        total.append((sent, sum(sizes.values())))
        for pid, rss in sizes.items():
            by_pid.setdefault(pid, []).append((sent, rss))
        each = ", ".join(f"{pid}: {rss / MIB:.1f}" for pid, rss in sorted(sizes.items()))
        print(
            f"  {sent:7d} requests: API {total[-1][1] / MIB:6.1f} MiB in all ({each})  load {load_average()}",
            flush=True,
        )
    # A process that was not there from the first reading (a restarted worker) is judged from its own start.
    growths = {pid: growth(readings, warmup) for pid, readings in by_pid.items()}
    return {
        "requests": sent,
        "statuses": statuses,
        "processes": len(by_pid),
        "api_mib": [round(rss / MIB, 1) for _, rss in total],
        "api_mib_by_process": {str(pid): [round(r / MIB, 1) for _, r in rs] for pid, rs in by_pid.items()},
        "api_growth_by_process": {str(pid): g for pid, g in growths.items()},
        "api_total_growth": growth(total, warmup),
        "api_growth": max(growths.values()),
    }


def main() -> None:
    """Parse the options, start the stack, run the phases, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--warmup-jobs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--warmup-requests", type=int, default=10_000)
    parser.add_argument("--sample-every", type=int, default=5_000)
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        result = asyncio.run(_read_load(args.loadgen, json.loads(args.paths), args.requests, 8))
        print(json.dumps(result))
        return

    import httpx

    from services.core.db import make_engine

    summary: dict[str, Any] = {
        "target": "RSS growth <= 10% (worker over 1,000 jobs, API over 100,000 requests)"
    }
    with fresh_backing() as backing:
        data_dir = backing.data_dir
        env = backing.env(**RATE_LIMIT_OUT_OF_THE_WAY)
        headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
        with (
            running_api(env, data_dir / "logs") as api,
            running_worker(env, data_dir / "logs", concurrency=1, threads=1) as worker,
            httpx.Client(base_url=api.url, headers=headers, timeout=60) as client,
        ):
            engine = make_engine(backing.database_url)
            # At least a few jobs and results exist for the reads to find.
            jobs = max(args.jobs, 20)
            print(f"worker: {jobs} tiny jobs; load {load_average()}", flush=True)
            t0 = time.perf_counter()
            summary["worker"] = worker_phase(client, engine, worker.pid, jobs, args.warmup_jobs)
            summary["worker"]["seconds"] = time.perf_counter() - t0
            summary["worker"]["load_average"] = load_average()
            if args.requests:
                page = client.get("/api/v1/jobs", params={"status": "succeeded", "limit": 5}).json()
                job_id = page["items"][0]["id"]
                spec_hash = page["items"][0]["spec_hash"]
                paths = [
                    "/api/v1/jobs?status=succeeded&limit=20",
                    f"/api/v1/jobs/{job_id}",
                    f"/api/v1/results?job_id={job_id}",
                    f"/api/v1/compare?spec_hash={spec_hash}",
                    "/api/v1/jobs?status=queued",
                    "/api/v1/devices",
                    "/api/v1/timeline",
                    "/healthz",
                ]
                print(f"API: {args.requests} reads; load {load_average()}", flush=True)
                t0 = time.perf_counter()
                summary["api"] = api_phase(
                    api.url, api.pid, paths, args.requests, args.sample_every, args.warmup_requests
                )
                summary["api"]["seconds"] = time.perf_counter() - t0
                summary["api"]["load_average"] = load_average()
            engine.dispose()
    summary["pass"] = (
        summary["worker"]["pool_growth"] <= 0.10 and summary["worker"]["consumer_growth"] <= 0.10
    )
    if "api" in summary:
        summary["pass"] = summary["pass"] and summary["api"]["api_growth"] <= 0.10
    summary["machine"] = machine()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
