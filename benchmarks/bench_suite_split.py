"""The standard suite's wall time split into the service's part and the engine's, from one `bpbench up`.

    .venv/bin/python benchmarks/bench_suite_split.py            # a fresh data directory, removed after

Runs `bpbench up --exit-when-done` (SQLite, the embedded broker, the API and one CPU worker, as a user
starts it; no BPBENCH_ setting from this environment) on a fresh data directory, so the standard suite runs.
Then reads the stack's own database. Per job: `wait` (created -> started), of it `dispatch` (the part when
the job's worker was free: since the later of its creation and the previous job's finish on that worker),
`engine` (the result's `engine_time_s`: data, training, evaluation, as timed inside the engine) and
`around` (started -> finished minus the engine: claim, result recording, progress). The suite's span runs
from the first job's creation to the last one's finish; the service's share of it is everything that is
not engine time: `1 - sum(engine) / span` (with one worker running jobs one at a time). The start-up of the
stack (broker, migrations, API, worker registration) is shown apart, before the first job exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.core.db import make_engine
from services.jobs.models import Job
from services.results.models import Result

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_up(data_dir: Path, timeout_s: float) -> tuple[float, datetime, str]:
    """`bpbench up --exit-when-done` on `data_dir`: its wall seconds, when it started (UTC), its output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BPBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-P", "-m", "cli", "up", "--data-dir", str(data_dir), "--port", str(free_port())]
    started_at, started = datetime.now(UTC), time.monotonic()
    done = subprocess.run(
        [*argv, "--exit-when-done"], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bpbench up exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, started_at, done.stdout


def split(data_dir: Path) -> list[dict[str, Any]]:
    """One row per job, in the order the worker started them: its times in seconds."""
    engine = make_engine(f"sqlite:///{data_dir / 'bpbench.db'}")
    try:
        with Session(engine) as session:
            jobs = list(session.scalars(select(Job).order_by(Job.started_at)))
            pairs = session.execute(select(Result.job_id, Result.engine_time_s))
            engine_times = {job_id: seconds for job_id, seconds in pairs}
    finally:
        engine.dispose()
    rows: list[dict[str, Any]] = []
    free_since: dict[str | None, datetime] = {}
    for job in jobs:
        if job.status != "succeeded" or job.started_at is None or job.finished_at is None:
            raise SystemExit(f"job {job.id} ({job.kind}) ended {job.status}: {job.error}")
        engine_s = float(engine_times[job.id] or 0.0)
        ready = max(job.created_at, free_since.get(job.worker_name, job.created_at))
        rows.append(
            {
                "job": job.spec["model"]["name"] if job.kind == "train" else job.kind,
                "kind": job.kind,
                "created_at": job.created_at,
                "finished_at": job.finished_at,
                "wait_s": (job.started_at - job.created_at).total_seconds(),
                "dispatch_s": (job.started_at - ready).total_seconds(),
                "engine_s": engine_s,
                "around_s": (job.finished_at - job.started_at).total_seconds() - engine_s,
            }
        )
        free_since[job.worker_name] = job.finished_at
    return rows


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--timeout", type=float, default=900, help="seconds `bpbench up` may take")
    parser.add_argument("--keep", type=Path, default=None, help="use this data directory and keep it")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and totals here")
    args = parser.parse_args()

    data_dir = args.keep or Path(tempfile.mkdtemp(prefix="bpbench-suite-")) / "data"
    load_before = os.getloadavg()
    try:
        up_s, up_started, _ = run_up(data_dir, args.timeout)
        rows = split(data_dir)
    finally:
        if args.keep is None:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    load_after = os.getloadavg()
    first, last = min(r["created_at"] for r in rows), max(r["finished_at"] for r in rows)
    span = (last - first).total_seconds()
    engine_s = sum(r["engine_s"] for r in rows)
    dispatch_s, around_s = sum(r["dispatch_s"] for r in rows), sum(r["around_s"] for r in rows)
    totals = {
        "up_wall_s": up_s,
        "startup_s": (first - up_started).total_seconds(),
        "suite_span_s": span,
        "engine_s": engine_s,
        "dispatch_s": dispatch_s,
        "around_s": around_s,
        "service_share": 1 - engine_s / span,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
    }
    print(f"{'job':22} {'kind':9} {'wait s':>8} {'dispatch s':>10} {'engine s':>9} {'around s':>9}")
    for r in rows:
        print(
            f"{r['job']:22} {r['kind']:9} {r['wait_s']:8.3f} {r['dispatch_s']:10.3f} "
            f"{r['engine_s']:9.3f} {r['around_s']:9.3f}"
        )
    print(
        f"suite span {span:.2f} s (first created -> last finished): engine {engine_s:.2f} s, dispatch "
        f"{dispatch_s:.2f} s, around the engine {around_s:.2f} s; service share {totals['service_share']:.1%}"
    )
    print(
        f"`bpbench up` wall {up_s:.1f} s, of which start-up before the first job {totals['startup_s']:.1f} s"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {os.cpu_count()} CPUs")
    if args.json:
        document = {"rows": rows, "totals": totals}
        args.json.write_text(json.dumps(document, default=str, indent=2) + "\n")


if __name__ == "__main__":
    main()
