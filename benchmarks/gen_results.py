"""Fill a bpbench database (migrated to head) with N stored results, in SQL: fast enough for a million.

    .venv/bin/python benchmarks/gen_results.py postgresql://postgres@127.0.0.1:5432/mydb 1000000
    .venv/bin/python benchmarks/gen_results.py sqlite:////tmp/bench.db 100000

Rows are made by the database itself (`generate_series` on PostgreSQL, a recursive CTE on SQLite), one
INSERT ... SELECT per table, so a million results and five million trials take a minute, not an hour.
The shape follows what a busy deployment accumulates:
- 8 devices; results spread evenly over them;
- one spec per 1,000 results (so the number of specs grows with the store: 1 at 1k, 1,000 at 1M), each
  spec a distinct (model, dataset, batch_size) so that compare's filters pick one spec, and each spec's
  results spread over the 8 devices; 1% of the jobs are `gemm` (one gemm spec, a peak FLOP/s per result);
- 5 trials per train result (the `samples_per_s` series, a result's trials side by side), none for gemm;
- `spec_device_stats` (compare's counts per spec and device) rebuilt from the results by the service's
  own INSERT ... SELECT (`refresh_spec_device_stats`), and a gemm result's `peak_flops_per_s` column set
  with its JSON document, as `complete_job` stores them;
- every result's job `succeeded`, plus 5% more jobs that are not (failed 3%, cancelled 1%, queued 0.5%,
  running 0.5%), newest last.
Then VACUUM ANALYZE (PostgreSQL) or ANALYZE (SQLite), as autovacuum would have done to a store that has
lived a while. `spec_of(n)` gives the filters of spec n, for the benchmark's queries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEVICES = 8
RESULTS_PER_SPEC = 1000
TRIALS_PER_RESULT = 5
MODELS = ("two_layer_net", "mlp", "simple_convnet")
DATASETS = ("mnist5k", "mnist", "digits", "synthetic", "spiral")
GEMM_EVERY = 101  # about 1% of the jobs are gemm jobs (101: prime, so every device gets some)
GEMM_SPEC_HASH = "ffffffffffffffff"


def spec_count(results: int) -> int:
    """How many train specs a store of `results` results holds."""
    return max(1, results // RESULTS_PER_SPEC)


def spec_of(number: int) -> dict[str, Any]:
    """The compare filters (and hash) of train spec `number` (0-based)."""
    return {
        "spec_hash": f"{number:016x}",
        "kind": "train",
        "model": MODELS[number % 3],
        "dataset": DATASETS[(number // 3) % 5],
        "batch_size": 1 + number // 15,
        "dtype": "float32",
    }


def _sql(dialect: str, results: int) -> list[str]:
    """The INSERT ... SELECT statements for this dialect and size."""
    jobs = results + results // 20
    specs = spec_count(results)
    pg = dialect == "postgresql"
    if pg:
        hex8 = "lpad(to_hex(i), 8, '0')"
        hex12 = "lpad(to_hex(i), 12, '0')"
        spec_hash = f"lpad(to_hex(i % {specs}), 16, '0')"
        ts = f"(now() - make_interval(secs => ({jobs} - i) * 1.0))"
        ts_plus = f"(now() - make_interval(secs => ({jobs} - i) * 1.0 - 0.5))"
        now = "now()"
        as_json = "::json"
    else:
        hex8 = "printf('%08x', i)"
        hex12 = "printf('%012x', i)"
        spec_hash = f"printf('%016x', i % {specs})"
        ts = f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({jobs} - i) || ' seconds')"
        ts_plus = f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({jobs} - i) || ' seconds', '+0.5 seconds')"
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
        as_json = ""

    def series(count: int) -> str:
        """The integers 1..count as a row source with one column `i`."""
        if pg:
            return f"generate_series(1, {count}) AS g(i)"
        recursive = f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {count})"
        return f"({recursive} SELECT i FROM s)"

    seq = series(jobs)
    job_id = f"{hex8} || '-0000-4000-8000-' || {hex12}"
    device = f"'benchdev' || (((i / {specs}) % {DEVICES}) + 10000000)"
    # The k-th occurrence of a spec slot (k = i / specs) runs on device k % 8; 1 in GEMM_EVERY is a gemm job.
    is_gemm = f"((i / {specs}) % {GEMM_EVERY} = 7)"
    models = "CASE (i % {n}) % 3 WHEN 0 THEN 'two_layer_net' WHEN 1 THEN 'mlp' ELSE 'simple_convnet' END"
    datasets = (
        "CASE ((i % {n}) / 3) % 5 WHEN 0 THEN 'mnist5k' WHEN 1 THEN 'mnist' WHEN 2 THEN 'digits' "
        "WHEN 3 THEN 'synthetic' ELSE 'spiral' END"
    )
    model = models.format(n=specs)
    dataset = datasets.format(n=specs)
    batch = f"(1 + (i % {specs}) / 15)"
    status = (
        f"CASE WHEN i <= {results} THEN 'succeeded' WHEN i % 20 < 12 THEN 'failed' "
        "WHEN i % 20 < 16 THEN 'cancelled' WHEN i % 20 < 18 THEN 'queued' ELSE 'running' END"
    )
    spec_json = (
        f"'{{\"kind\": \"' || CASE WHEN {is_gemm} THEN 'gemm' ELSE 'train' END || "
        f'\'", "model": {{"name": "\' || {model} || \'"}}, "dataset": "\' || {dataset} || '
        f'\'", "batch_size": \' || {batch} || \', "dtype": "float32", "steps": 100}}\''
    )
    speed = "(1000.0 + (((i % 1000) * 7919) % 1000))"
    peak = "(1e10 + i)"  # a gemm result's peak FLOP/s: the column and the JSON document agree
    statements = [
        f"""INSERT INTO devices (id, device_class, vendor, name, memory_bytes, software, fingerprint,
            first_seen, last_seen)
            SELECT 'benchdev' || (i + 10000000), 'cpu', CASE i % 2 WHEN 0 THEN 'Intel' ELSE 'AMD' END,
                   'bench cpu ' || i, 1073741824, '{{}}'{as_json}, '{{}}'{as_json}, {now}, {now}
            FROM (SELECT i - 1 AS i FROM {series(DEVICES)}) d""",
        f"""INSERT INTO jobs (id, spec, spec_hash, kind, device, device_class, queue, status, progress,
            cancel_requested, attempts, time_limit_s, worker_name, device_id, created_at, published_at,
            started_at, finished_at, updated_at)
            SELECT {job_id}, ({spec_json}){as_json},
                   CASE WHEN {is_gemm} THEN '{GEMM_SPEC_HASH}' ELSE {spec_hash} END,
                   CASE WHEN {is_gemm} THEN 'gemm' ELSE 'train' END, 'cpu', 'cpu', 'cpu', {status},
                   CASE WHEN i <= {results} THEN 1.0 ELSE 0.0 END, false, 1, 21600.0, 'bench@host',
                   {device}, {ts}, {ts}, {ts}, CASE WHEN i <= {results} THEN {ts_plus} END, {ts_plus}
            FROM {seq}""",
        f"""INSERT INTO results (id, job_id, device_id, spec_hash, kind, model_name, dataset, batch_size,
            dtype, samples_per_s, samples_per_s_ci_low, samples_per_s_ci_high, peak_flops_per_s, trial_count,
            engine_time_s, metrics, statistics, fingerprint, created_at)
            SELECT i, {job_id}, {device},
                   CASE WHEN {is_gemm} THEN '{GEMM_SPEC_HASH}' ELSE {spec_hash} END,
                   CASE WHEN {is_gemm} THEN 'gemm' ELSE 'train' END,
                   CASE WHEN {is_gemm} THEN NULL ELSE {model} END,
                   CASE WHEN {is_gemm} THEN NULL ELSE {dataset} END,
                   CASE WHEN {is_gemm} THEN NULL ELSE {batch} END, 'float32',
                   CASE WHEN {is_gemm} THEN NULL ELSE {speed} END,
                   CASE WHEN {is_gemm} THEN NULL ELSE {speed} - 10 END,
                   CASE WHEN {is_gemm} THEN NULL ELSE {speed} + 10 END,
                   CASE WHEN {is_gemm} THEN {peak} END,
                   CASE WHEN {is_gemm} THEN 0 ELSE {TRIALS_PER_RESULT} END, 0.5,
                   (CASE WHEN {is_gemm} THEN '{{"peak_flops_per_s": ' || {peak} || '}}'
                    ELSE '{{"flops_per_step": 1000000.0, "samples_per_s": ' || {speed} || '}}' END){as_json},
                   '{{}}'{as_json}, '{{}}'{as_json}, {ts_plus}
            FROM {seq} WHERE i <= {results}""",
        f"""INSERT INTO trials (result_id, series, "index", value, samples_per_s)
            SELECT r.id, 'samples_per_s', k.k, r.samples_per_s + k.k - 2, r.samples_per_s + k.k - 2
            FROM results r
            CROSS JOIN (SELECT i - 1 AS k FROM {series(TRIALS_PER_RESULT)}) k
            WHERE r.kind = 'train'
            ORDER BY r.id, k.k""",  # a result's trials side by side, as the worker writes them
    ]
    if pg:
        statements.append(
            "SELECT setval(pg_get_serial_sequence('results', 'id'), (SELECT max(id) FROM results))"
        )
    return statements


def generate(database_url: str, results: int, *, echo: bool = True) -> float:
    """Insert `results` results (and their jobs, trials and 8 devices) into an empty migrated database."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from services.core.db import make_engine
    from services.results.service import refresh_spec_device_stats

    engine = make_engine(database_url)
    t0 = time.perf_counter()
    try:
        with engine.begin() as connection:
            for statement in _sql(engine.dialect.name, results):
                started = time.perf_counter()
                connection.execute(text(statement))
                if echo:
                    first = " ".join(statement.split()[:3])
                    print(f"  {first} ... {time.perf_counter() - started:.1f} s", flush=True)
            # compare's per-spec counts, by the INSERT ... SELECT the service rebuilds them with.
            started = time.perf_counter()
            with Session(bind=connection) as session:
                refresh_spec_device_stats(session)
            if echo:
                print(
                    f"  INSERT INTO spec_device_stats ... {time.perf_counter() - started:.1f} s", flush=True
                )
        # What autovacuum does to a store that has lived a while: statistics, and on PostgreSQL the
        # visibility map that lets index-only scans skip the table.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            started = time.perf_counter()
            connection.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
            if echo:
                print(f"  VACUUM/ANALYZE ... {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        engine.dispose()
    return time.perf_counter() - t0


def main() -> None:
    """`gen_results.py DATABASE_URL N`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("database_url")
    parser.add_argument("results", type=int)
    args = parser.parse_args()
    seconds = generate(args.database_url, args.results)
    print(f"{args.results} results generated in {seconds:.1f} s")


if __name__ == "__main__":
    main()
