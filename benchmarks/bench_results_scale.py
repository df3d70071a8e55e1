"""Target 4: `GET /api/v1/compare` and `GET /api/v1/jobs?status=` on a small and on a large results store.

    .venv/bin/python benchmarks/bench_results_scale.py                      # PostgreSQL: 1,000 vs 1,000,000
    .venv/bin/python benchmarks/bench_results_scale.py --backend sqlite     # SQLite: 1,000 vs 100,000
    .venv/bin/python benchmarks/bench_results_scale.py --explain            # + the query plans, large store

Each store is a fresh database migrated to head and filled by benchmarks/gen_results.py (one spec per
1,000 results, 8 devices, 5 trials per result, 5% of the jobs not succeeded). One API per store runs as
deployed (`bpbench api`); the requests alternate between the two APIs, endpoint by endpoint, so both sides
see the same machine. Figures: the median latency over `--requests` requests (after warm-up) per endpoint
and store, and the ratio large / small (target: <= 3).

The compared spec is spec 0, which has 1,000 results in both stores: the question is whether a query
slows down as *other* results pile up (it must not), not whether pooling more trials of one spec costs
more (it does, and should). `compare` without filters has to choose among every spec, so its work grows
with the number of specs; it is reported as its own row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_results import generate, spec_of
from service_stack import (
    BENCH_TOKEN,
    RATE_LIMIT_OUT_OF_THE_WAY,
    load_average,
    machine,
    postgres_database,
    redis_database,
    running_api,
    service_env,
)

SPEC = spec_of(0)
ENDPOINTS: dict[str, str] = {
    "compare?spec_hash": "/api/v1/compare?" + urlencode({"spec_hash": SPEC["spec_hash"]}),
    "compare?model&dataset&batch_size&dtype": "/api/v1/compare?"
    + urlencode({k: SPEC[k] for k in ("model", "dataset", "batch_size", "dtype")}),
    "jobs?status=succeeded": "/api/v1/jobs?status=succeeded",
    "jobs?status=failed": "/api/v1/jobs?status=failed",
    "jobs?status=queued": "/api/v1/jobs?status=queued",
    "jobs": "/api/v1/jobs",
    "compare (no filter: every spec)": "/api/v1/compare",
}


@contextlib.contextmanager
def store(backend: str, results: int, tmp: Path) -> Iterator[str]:
    """A database of `backend` migrated to head and holding `results` generated results."""
    from services.core.migrate import upgrade_to_head

    if backend == "postgresql":
        context: contextlib.AbstractContextManager[str] = postgres_database()
    else:
        path = tmp / f"results-{results}.db"
        context = contextlib.nullcontext(f"sqlite:///{path}")
    with context as url:
        upgrade_to_head(url)
        seconds = generate(url, results, echo=False)
        print(
            f"{backend}: {results:,} results generated in {seconds:.1f} s (load {load_average()})", flush=True
        )
        yield url


def explain(database_url: str) -> None:
    """Print the plan of every SQL statement the endpoints run (EXPLAIN ANALYZE on PostgreSQL).

    In order: compare?spec_hash=, the job list and its count, then compare with no filter.
    """
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from services.core.db import make_engine
    from services.jobs import service
    from services.results.compare import compare
    from services.results.filters import ResultFilter

    engine = make_engine(database_url)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    starts: dict[int, str] = {}  # where each endpoint's statements begin in `captured`
    with Session(engine) as session:
        starts[len(captured)] = "compare?spec_hash"
        compare(session, ResultFilter(spec_hash=SPEC["spec_hash"]))
        starts[len(captured)] = "jobs?status=succeeded"
        service.list_jobs(session, status="succeeded", limit=50)
        service.count_jobs(session, status="succeeded")
        starts[len(captured)] = "compare (no filter: every spec)"
        compare(session, ResultFilter())
    event.remove(engine, "before_cursor_execute", capture)
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        for number, (statement, parameters) in enumerate(captured):
            if number in starts:
                print(f"\n=== {starts[number]}")
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
            raw = connection.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            cursor.execute(prefix + statement, parameters)
            plan = [str(row[-1] if not postgres else row[0]) for row in cursor.fetchall()]
            cursor.close()
            print("\n" + " ".join(statement.split())[:300])
            for line in plan[:14]:
                print("    " + line)
    engine.dispose()


def main() -> None:
    """Parse the options, build the two stores, and time the endpoints on both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument(
        "--large", type=int, default=None, help="default 1,000,000 (PostgreSQL), 100,000 (SQLite)"
    )
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--explain", action="store_true", help="print the query plans on the large store")
    args = parser.parse_args()
    large = args.large or (1_000_000 if args.backend == "postgresql" else 100_000)

    import httpx

    extra = RATE_LIMIT_OUT_OF_THE_WAY
    with (
        tempfile.TemporaryDirectory(prefix="bpbench-bench-") as tmp_name,
        redis_database() as broker_url,
        store(args.backend, args.small, Path(tmp_name)) as small_url,
        store(args.backend, large, Path(tmp_name)) as large_url,
    ):
        tmp = Path(tmp_name)
        if args.explain:
            explain(large_url)
        headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
        with (
            running_api(
                service_env(small_url, broker_url, tmp / "small", **extra), tmp / "logs"
            ) as small_api,
            running_api(
                service_env(large_url, broker_url, tmp / "large", **extra), tmp / "logs"
            ) as large_api,
            httpx.Client(headers=headers, timeout=120) as client,
        ):
            apis = {"small": small_api.url, "large": large_api.url}
            times: dict[tuple[str, str], list[float]] = {(e, s): [] for e in ENDPOINTS for s in apis}
            sizes: dict[tuple[str, str], str] = {}
            for round_ in range(args.requests + 2):  # the first two rounds warm up and are not counted
                for name, path in ENDPOINTS.items():
                    for side, url in apis.items() if round_ % 2 else reversed(apis.items()):
                        started = time.perf_counter()
                        response = client.get(url + path)
                        elapsed = time.perf_counter() - started
                        if response.status_code != 200:
                            raise RuntimeError(f"{side} {path}: {response.status_code} {response.text[:300]}")
                        if round_ >= 2:
                            times[(name, side)].append(elapsed)
                        body = response.json()
                        sizes[(name, side)] = (
                            f"total {body['total']}"
                            if "total" in body
                            else f"{len(body.get('rows', []))} rows"
                        )
    rows = []
    print(f"\n{args.backend}: small {args.small:,} results, large {large:,} results; load {load_average()}")
    print(f"{'endpoint':42} {'small ms':>9} {'large ms':>9} {'ratio':>6}  answer (small / large)")
    for name in ENDPOINTS:
        small = 1000 * statistics.median(times[(name, "small")])
        big = 1000 * statistics.median(times[(name, "large")])
        rows.append({"endpoint": name, "small_ms": small, "large_ms": big, "ratio": big / small})
        print(
            f"{name:42} {small:9.1f} {big:9.1f} {big / small:6.2f}  "
            f"{sizes[(name, 'small')]} / {sizes[(name, 'large')]}"
        )
    summary = {
        "target": "large store answers within 3x of the small one",
        "backend": args.backend,
        "small": args.small,
        "large": large,
        "rows": rows,
        "load_average": load_average(),
        "machine": machine(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
