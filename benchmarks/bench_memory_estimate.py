"""Each job kind's memory estimate against the peak of a real run: the grid of the memory-estimate test.

Run:

    .venv/bin/python benchmarks/bench_memory_estimate.py              # the test's grid
    .venv/bin/python benchmarks/bench_memory_estimate.py --only spiral --parallel 1

Every job of `harness.memory_peak.memory_grid` (every kind, model, data set and dtype) runs in a fresh
interpreter, which reports its own peak resident set (VmHWM, the interpreter and NumPy included, as the
estimate counts them). Prints one row per job: the estimate, the peak, their ratio, the baseline after
importing the engine, and the estimate's three largest parts. `tests/engine/test_memory_estimate.py`
asserts estimate >= peak and estimate <= 3 x peak + the runtime part on the same grid.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.kinds import estimate_memory
from engine.spec import resolve_spec
from harness.memory_peak import measure_peak, memory_grid, write_idx_set

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--parallel", type=int, default=2, help="jobs measured at once (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        grid = memory_grid(write_idx_set(Path(directory)))
        cases = {
            name: spec for name, spec in grid.items() if not args.only or any(o in name for o in args.only)
        }
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            peaks = dict(zip(cases, pool.map(measure_peak, cases.values()), strict=True))
        seconds = time.perf_counter() - started
        # While the IDX files exist: `mnist` is estimated at the size their headers declare.
        estimates = {name: estimate_memory(resolve_spec(spec)) for name, spec in cases.items()}
    print("| job | estimate MiB | peak MiB | estimate / peak | baseline MiB | largest parts |")
    print("|---|---|---|---|---|---|")
    for name in cases:
        estimate, peak = estimates[name], peaks[name]
        parts = ", ".join(
            f"{part} {value / MIB:.1f}"
            for part, value in sorted(estimate.parts.items(), key=lambda p: -p[1])[:3]
        )
        print(
            f"| {name} | {estimate.total_bytes / MIB:.1f} | {peak.peak_bytes / MIB:.1f} | "
            f"{estimate.total_bytes / peak.peak_bytes:.2f} | {peak.baseline_bytes / MIB:.1f} | {parts} |"
        )
    print(f"\n{len(cases)} jobs in {seconds:.0f} s, {args.parallel} at a time")


if __name__ == "__main__":
    main()
