"""`bpbench run` and `bpbench gradcheck`: one job on this machine, no queue, no database.

Progress goes to stderr, so `--json` leaves stdout holding only the result document. Exit codes:
0 done (and, for a gradient check, passed); 1 the job ran but diverged, was stopped, or the gradient
check failed; 2 the job could not start (bad option, bad spec file, missing dataset file, no GPU);
130 interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cli.app import app
from cli.render import progress_bar, summary_table
from cli.spec_options import (
    OneLineErrorCommand,
    SpecFileArg,
    fail,
    spec_or_exit,
    with_spec_options,
)
from services.jobs.spec import JobSpec

JsonOpt = Annotated[
    bool, typer.Option("--json", help="print the result document (JSON) on stdout instead of a table")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="also write the result document to this file")
]


@app.command("run", cls=OneLineErrorCommand)
@with_spec_options
def run_command(
    spec_file: SpecFileArg = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    out: OutOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Run one job locally: train, gradcheck, backprop_vs_numerical or gemm (options override SPEC_FILE)."""
    spec = spec_or_exit(spec_file, overrides)
    _run_and_report(spec, json_output=json_output, quiet=quiet, out=out)


@app.command("gradcheck", cls=OneLineErrorCommand)
@with_spec_options
def gradcheck_command(
    spec_file: SpecFileArg = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    out: OutOpt = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Check backprop against numerical gradients: `bpbench run --kind gradcheck --dtype float64`."""
    spec = spec_or_exit(spec_file, overrides, presets={"dtype": "float64"}, forced={"kind": "gradcheck"})
    _run_and_report(spec, json_output=json_output, quiet=quiet, out=out)


def _run_and_report(spec: JobSpec, *, json_output: bool, quiet: bool, out: Path | None) -> None:
    """Run the job with a progress bar on stderr; print the table or the JSON; exit with the job's status."""
    # Imported here so that `bpbench --help` and the other commands do not pay for NumPy.
    from engine.jobs import JobCancelled, JobDiverged, JobError, run_job
    from services.core.config import get_settings
    from services.jobs.resources import JobTooLarge, check_memory_cap

    try:  # the cap the API applies at submission, so a local run refuses what a server would
        check_memory_cap(spec, get_settings().max_job_memory_bytes, who="bpbench run")
    except JobTooLarge as exc:
        fail(f"{exc}; the cap is BPBENCH_MAX_JOB_MEMORY_BYTES")
    stderr = Console(stderr=True)
    should_stop = _deadline(spec.time_limit_s)
    try:
        # A bar only on a terminal: redirected to a file or a pipe it would be noise.
        with progress_bar(stderr, enabled=not quiet and stderr.is_terminal, title=spec.kind) as progress:
            result = run_job(spec.engine_dict(), progress=progress, should_stop=should_stop)
    except JobError as exc:
        fail(str(exc))
    except JobDiverged as exc:
        fail(f"{exc} (loss became NaN or infinite; try a smaller --lr)", exit_code=1)
    except JobCancelled:
        fail(f"stopped: the time limit of {spec.time_limit_s} s was reached", exit_code=1)
    except MemoryError:
        fail("out of memory: try a smaller --batch-size or narrower --layers", exit_code=1)
    except KeyboardInterrupt:
        fail("interrupted", exit_code=130)
    document = json.dumps(result, indent=2)
    if out is not None:
        try:
            out.write_text(document + "\n", encoding="utf-8")
        except OSError as exc:
            fail(f"--out {out}: cannot write ({exc.strerror})")
    if json_output:
        sys.stdout.write(document + "\n")
    else:
        Console().print(summary_table(result))
    if result["kind"] == "gradcheck" and result["metrics"]["passed"] is False:
        raise typer.Exit(1)


def _deadline(limit_s: float | None) -> Callable[[], bool] | None:
    if limit_s is None:
        return None
    deadline = time.monotonic() + limit_s
    return lambda: time.monotonic() > deadline
