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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from services.cli.app import app
from services.cli.spec_options import (
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
        with _progress_bar(stderr, enabled=not quiet and stderr.is_terminal, title=spec.kind) as progress:
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


@contextmanager
def _progress_bar(
    console: Console, *, enabled: bool, title: str
) -> Iterator[Callable[[float, str], None] | None]:
    """A rich progress bar on stderr; yields the callback for `run_job` (None when disabled)."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.fields[title]}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=1.0, title=title)

        def update(fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=message)

        yield update


# --- the summary table ------------------------------------------------------------------------------


def _si(value: float | None, unit: str = "") -> str:
    """1.23 G, 45.6 k ... (three significant digits)."""
    if value is None:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def _rate_row(stats: dict[str, Any], unit: str) -> str:
    lo, hi = stats["ci95"] if stats.get("ci95") else (None, None)
    cv = stats.get("cv")
    return (
        f"{_si(stats['median'], unit)}  (95% CI {_si(lo)} - {_si(hi)}, IQR {_si(stats['iqr'])}, "
        f"CV {cv * 100 if cv is not None else float('nan'):.1f}%, n={stats['n']})"
    )


def summary_table(result: dict[str, Any]) -> Table:
    """A rich table of the headline figures of a result document."""
    kind = result["kind"]
    metrics = result["metrics"]
    spec = result["spec"]
    model = spec["model"]
    table = Table(
        title=f"bpbench {kind} on {result['fingerprint'].get('device', spec['device'])}", show_lines=False
    )
    if kind == "train":
        table.add_column("metric")
        table.add_column("value")
        layers = "-".join(
            str(w) for w in [*metrics["input_shape"], *model["layers"][1:-1], metrics["n_classes"]]
        )
        table.add_row(
            "model", f"{model['name']} {layers} ({metrics['parameters']} parameters), {spec['dtype']}"
        )
        table.add_row(
            "dataset",
            f"{spec['dataset']} ({metrics['train_samples']} train / {metrics['test_samples']} test)",
        )
        table.add_row(
            "steps x batch", f"{metrics['steps']} x {metrics['batch_size']}, {spec['optimizer']['name']}"
        )
        table.add_row("samples/s", _rate_row(metrics["samples_per_s"], ""))
        table.add_row("step time (median)", _seconds(metrics["step_time_s"]["median"]))
        table.add_row("train accuracy", f"{metrics['train_accuracy']:.4f}")
        table.add_row("test accuracy", f"{metrics['test_accuracy']:.4f}")
        table.add_row("final loss", f"{metrics['final_loss']:.4f}")
        if metrics.get("target_accuracy") is not None:
            reached = metrics["steps_to_target"]
            table.add_row(
                f"time to {metrics['target_accuracy']}",
                f"{_seconds(metrics['time_to_target_s'])} ({reached} steps)" if reached else "not reached",
            )
        table.add_row("FLOPs/step", _si(metrics["flops_per_step"]))
        table.add_row("achieved FLOP/s", _si(metrics["flops_per_s"], "FLOP/s"))
        table.add_row(
            f"peak memory ({metrics['peak_memory_source']})", _si(metrics["peak_memory_bytes"], "B")
        )
        timing = result["timing"]
        table.add_row(
            "timing",
            f"{timing['windows']} windows of {timing['window_steps']} steps after {timing['warmup_steps']} "
            f"warm-up ({timing['stop_reason']})",
        )
    elif kind == "gradcheck":
        for column in ("parameter", "max abs error", "max rel error", "checked", "h", "pass"):
            table.add_column(column)
        for name, p in metrics["parameters"].items():
            errors = f"{p['max_abs']:.2e}", f"{p['max_rel']:.2e}"
            table.add_row(name, *errors, str(p["checked"]), f"{p['h']:g}", _mark(p["passed"]))
        limit = "-" if metrics["threshold"] is None else f"<= {metrics['threshold']:.0e}"
        errors = f"{metrics['max_abs_error']:.2e}", f"{metrics['max_relative_error']:.2e}"
        table.add_row("all", *errors, limit, "", _mark(metrics["passed"]))
        table.caption = (
            f"{metrics['network']}, {metrics['samples']} random samples; central differences with "
            "Richardson extrapolation, the better of the steps h per parameter"
        )
    elif kind == "backprop_vs_numerical":
        for column in (
            "hidden",
            "parameters",
            "backprop",
            "numerical",
            "time ratio",
            "forward evals (num/bp)",
        ):
            table.add_column(column, justify="right")
        for row in metrics["sizes"]:
            cells = [str(row["width"]), str(row["parameters"])]
            cells += [_seconds(row["backprop_s"]), _seconds(row["numerical_s"]), f"{row['time_ratio']:.0f}x"]
            table.add_row(*cells, f"{row['numerical_forward_evaluations']} / 1")
        table.caption = (
            f"MLP {metrics['input_width']}-h-{metrics['n_classes']}, {metrics['samples']} samples, medians"
        )
    elif kind == "gemm":
        for column in ("n", "FLOP/s (median)", "95% CI", "CV", "time/matmul"):
            table.add_column(column, justify="right")
        for row in metrics["sizes"]:
            stats = row["flops_per_s"]
            low, high = stats["ci95"]
            cv = f"{stats['cv'] * 100:.1f}%" if stats["cv"] is not None else "-"
            rate, interval = _si(stats["median"], "FLOP/s"), f"{_si(low)} - {_si(high)}"
            table.add_row(str(row["n"]), rate, interval, cv, _seconds(row["seconds_per_matmul"]))
        peak = _si(metrics["peak_flops_per_s"], "FLOP/s")
        table.caption = f"peak {peak} at n={metrics['peak_size']}, {metrics['dtype']}"
    return table


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "n/a (float32)"  # rounding-bound: no pass/fail outside float64
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"
