"""Everything the command line prints: rich tables, progress bars, JSON and one-line errors.

The commands fetch or compute a document, then hand it to a function here; nothing here talks to a
database. Piped output (logs, tests) gets room for the wide comparison table instead of rich's default
80 columns.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cli.api_client import ApiClient, ClientError

if TYPE_CHECKING:
    from services.auth.models import ApiToken

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a `ClientError` into one line on stderr and exit status 1."""
    try:
        yield
    except ClientError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def print_json(doc: Any) -> None:
    """JSON on stdout, for scripts."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _years(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return str(entry.get("years") or entry.get("entered") or "-")


# --- the API's documents, shared by the client commands and `bpbench up` -----------------------------


def jobs_table(jobs: Sequence[dict[str, Any]], title: str = "Jobs") -> Table:
    """A table of jobs: id, kind, device, status, progress, error."""
    table = Table(title=title)
    for column in ("id", "kind", "device", "status", "progress", "worker", "created", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        progress = job.get("progress")
        table.add_row(
            str(job["id"]),
            str(job.get("kind", "-")),
            str(job.get("target_device_id") or job.get("device") or "-"),
            str(job.get("status", "-")),
            f"{100 * progress:.0f}%" if isinstance(progress, int | float) else "-",
            str(job.get("worker") or "-"),
            str(job.get("created_at") or "-")[:19],
            (job.get("error") or "")[:80],
        )
    return table


def comparison_table(doc: dict[str, Any], title: str | None = None) -> Table:
    """The device comparison of one spec, with each device's vendor entry from the seed's timeline."""
    metric = doc.get("metric", "samples_per_s")
    spec = doc.get("spec") or {}
    label = (
        title or f"{spec.get('kind', '?')} {spec.get('model', {}).get('name', '')} {spec.get('dataset', '')}"
    )
    table = Table(
        title=f"{label.strip()}  (spec {doc.get('spec_hash')}, baseline {doc.get('baseline_name')})"
    )
    for column in (
        "device",
        "class",
        "vendor",
        f"{metric} median",
        "95% CI",
        "runs",
        "ratio",
        "efficiency",
        "gemm peak GFLOP/s",
        "samples/J",
        "platform",
        "entered deep learning",
    ):
        table.add_column(column, overflow="fold")
    for row in doc.get("rows", []):
        value = row.get(metric) or {}
        ci = value.get("ci95") or [None, None]
        timeline = row.get("timeline") or {}
        efficiency = row.get("efficiency")
        table.add_row(
            str(row.get("device_name") or row.get("device_id")),
            str(row.get("device_class") or "-"),
            str(row.get("vendor") or "-"),
            _fmt(value.get("median")),
            f"{_fmt(ci[0])} .. {_fmt(ci[1])}",
            str(row.get("runs", "-")),
            f"{row['ratio']:.2f}x" if isinstance(row.get("ratio"), int | float) else "-",
            "recalibrate!"
            if row.get("efficiency_flag")
            else f"{100 * efficiency:.1f}%"
            if isinstance(efficiency, int | float)
            else "-",
            _fmt(row["gemm_peak_flops_per_s"] / 1e9) if row.get("gemm_peak_flops_per_s") else "-",
            _fmt(row["samples_per_j"]) if isinstance(row.get("samples_per_j"), int | float) else "-",
            str(timeline.get("platform") or "-"),
            _years(timeline),
        )
    return table


def comparison_notes(doc: dict[str, Any]) -> list[str]:
    """What a reader of the comparison must know: flagged efficiencies, energy not measured, a loaded
    host beside quiet ones, and the stack fields that differ between the devices."""
    notes = []
    for row in doc.get("rows", []):
        name = row.get("device_name") or row.get("device_id")
        if row.get("efficiency_flag"):
            notes.append(f"{name}: {row['efficiency_flag']}")
        elif row.get("calibration_note") and row.get("efficiency") is None:
            notes.append(f"{name}: {row['calibration_note']}")
        if row.get("samples_per_j") is None and row.get("energy_note"):
            notes.append(f"{name}: energy not measured ({row['energy_note']})")
    if doc.get("load_warning"):
        notes.append(str(doc["load_warning"]))
    names = {row["device_id"]: row.get("device_name") or row["device_id"] for row in doc.get("rows", [])}
    for field, values in (doc.get("stack_differences") or {}).items():
        listed = ", ".join(f"{names.get(device, device)} {value}" for device, value in values.items())
        notes.append(f"{field} differs: {listed}")
    return notes


def checks_table(jobs: Sequence[dict[str, Any]]) -> Table:
    """The headline of each non-training job: GEMM peak, gradient check, backprop against numerical."""
    table = Table(title="Calibration and gradient checks")
    for column in ("benchmark", "device", "result"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        metrics = (job.get("result") or {}).get("metrics") or {}
        kind = job.get("kind")
        if kind == "gemm":
            peak = (metrics.get("peak_flops_per_s") or 0) / 1e9
            text = f"peak {_fmt(peak)} GFLOP/s at n={metrics.get('peak_size')}"
        elif kind == "gradcheck":
            verdict = "passed" if metrics.get("passed") else "FAILED"
            error = _fmt(metrics.get("max_relative_error"))
            text = f"{verdict}: max relative error {error} ({metrics.get('dtype')})"
        elif kind == "backprop_vs_numerical":
            sizes = metrics.get("sizes") or [{}]
            first, last = sizes[0], sizes[-1]
            text = (
                f"numerical gradient / backprop time: {_fmt(first.get('time_ratio'))}x at "
                f"{first.get('parameters')} parameters, {_fmt(last.get('time_ratio'))}x at "
                f"{last.get('parameters')}"
            )
        else:
            text = "-"
        table.add_row(
            str(job.get("suite_item") or kind), str(job.get("device_id") or job.get("device")), text
        )
    return table


def timeline_tables(doc: dict[str, Any]) -> list[Table]:
    """The seed's vendor table and its milestones."""
    vendors = Table(title=f"GPU vendors entering deep learning (source: {doc.get('source', 'the seed')})")
    for column in ("vendor", "platform", "entered deep learning", "note"):
        vendors.add_column(column, overflow="fold")
    for entry in doc.get("vendors", []):
        vendors.add_row(
            str(entry.get("vendor")), str(entry.get("platform")), _years(entry), str(entry.get("note"))
        )
    milestones = Table(title="Milestones")
    milestones.add_column("year")
    milestones.add_column("event", overflow="fold")
    milestones.add_column("note", overflow="fold")
    for item in doc.get("milestones", []):
        milestones.add_row(str(item.get("year")), str(item.get("event")), str(item.get("note") or ""))
    return [vendors, milestones]


def devices_table(devices: Sequence[dict[str, Any]]) -> Table:
    """Registered devices: id, name, class, vendor, live, queue, queued jobs."""
    table = Table(title="Devices")
    for column in ("id", "name", "class", "vendor", "memory", "live", "queue", "queued", "last heartbeat"):
        table.add_column(column, overflow="fold")
    for device in devices:
        memory = device.get("memory_bytes")
        table.add_row(
            str(device.get("id")),
            str(device.get("name")),
            str(device.get("device_class")),
            str(device.get("vendor") or "-"),
            f"{memory / 2**30:.1f} GiB" if isinstance(memory, int | float) else "-",
            "yes" if device.get("live") else "no",
            str(device.get("queue")),
            str(device.get("queued_jobs", "-")),
            str(device.get("last_heartbeat") or "-")[:19],
        )
    return table


def wait_for_jobs(
    client: ApiClient,
    jobs: Sequence[dict[str, Any]],
    *,
    labels: Sequence[str] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    out: Console | None = None,
) -> list[dict[str, Any]]:
    """Show one progress bar per job until every job is final; the final job documents, in order."""
    out = out or console
    latest = {job["id"]: job for job in jobs}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        tasks = {}
        for i, job in enumerate(jobs):
            label = labels[i] if labels else f"{job.get('kind')}"
            description = f"{str(job['id'])[:8]} {label} [{job.get('target_device_id') or job.get('device')}]"
            tasks[job["id"]] = progress.add_task(description, total=1.0, status=job.get("status", ""))
        while True:
            pending = [i for i, job in latest.items() if job.get("status") not in FINAL_STATUSES]
            for job_id in pending:
                fresh = client.get(f"/api/v1/jobs/{job_id}")
                # Keep what only the submission knew (the suite entry) on the fresh document.
                fresh["suite_item"] = fresh.get("suite_item") or latest[job_id].get("suite_item")
                latest[job_id] = fresh
            for job_id, job in latest.items():
                done = job.get("status") in FINAL_STATUSES
                value = 1.0 if done else float(job.get("progress") or 0.0)
                progress.update(tasks[job_id], completed=value, status=job.get("status", ""))
            if all(job.get("status") in FINAL_STATUSES for job in latest.values()):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"jobs still not finished after {timeout_s:.0f} s: {sorted(pending)}")
            time.sleep(poll_s)
    return [latest[job["id"]] for job in jobs]


def show_job(job: dict[str, Any]) -> None:
    """A job's status, progress, result summary and error, as a two-column table."""
    table = Table(title=f"Job {job['id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "status",
        "kind",
        "device",
        "target_device_id",
        "device_id",
        "worker",
        "progress",
        "attempts",
    ):
        table.add_row(key, _fmt(job.get(key)))
    for key in ("spec_hash", "created_at", "started_at", "finished_at", "error"):
        if job.get(key):
            table.add_row(key, str(job[key]))
    summary = job.get("result") or {}
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if not isinstance(v, dict | list))
        table.add_row(f"result.{key}", _fmt(value))
    console.print(table)


def print_regression_flags(flags: Sequence[dict[str, Any]]) -> None:
    """One coloured line per flagged result: regression or improvement, the change and its history."""
    for flag in flags:
        colour = "red" if flag["flag"] == "regression" else "green"
        console.print(
            f"[{colour}]{flag['flag']}[/{colour}] on {flag['device_name'] or flag['device_id']}: "
            f"{flag['change_pct']:+.1f}% ({_fmt(flag['samples_per_s'])} samples/s against a median of "
            f"{_fmt(flag['baseline_samples_per_s'])} over {flag['history_runs']} earlier runs; "
            f"job {flag['job_id']})",
            highlight=False,
        )


# --- API tokens (read from the database by `bpbench token`) ------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def token_documents(rows: Sequence[ApiToken]) -> list[dict[str, Any]]:
    """The tokens as JSON documents (never the token itself: only its hash is stored)."""
    return [
        {
            "id": row.id,
            "name": row.name,
            "scopes": row.scopes,
            "prefix": row.prefix,
            "created_at": row.created_at.isoformat(),
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
            "revoked": row.revoked,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
        for row in rows
    ]


def tokens_table(rows: Sequence[ApiToken]) -> Table:
    """Every token: name, scopes, prefix, created, last used, revoked."""
    table = Table(title=f"API tokens ({len(rows)})")
    for column in ("name", "scopes", "prefix", "created (UTC)", "last used (UTC)", "revoked"):
        table.add_column(column)
    for row in rows:
        revoked = f"yes, {_when(row.revoked_at)}" if row.revoked else "no"
        table.add_row(
            row.name,
            ",".join(row.scopes),
            row.prefix,
            _when(row.created_at),
            _when(row.last_used_at),
            revoked,
        )
    return table


# --- the result document of a local run -------------------------------------------------------------


@contextmanager
def progress_bar(
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
    """A rich table of the headline figures of a result document (one filler per job kind)."""
    spec = result["spec"]
    table = Table(
        title=f"bpbench {result['kind']} on {result['fingerprint'].get('device', spec['device'])}",
        show_lines=False,
    )
    fill = _SUMMARY_FILLERS.get(result["kind"])
    if fill is not None:
        fill(table, result)
    return table


def _train_summary(table: Table, result: dict[str, Any]) -> None:
    metrics, spec = result["metrics"], result["spec"]
    model = spec["model"]
    table.add_column("metric")
    table.add_column("value")
    layers = "-".join(str(w) for w in [*metrics["input_shape"], *model["layers"][1:-1], metrics["n_classes"]])
    table.add_row("model", f"{model['name']} {layers} ({metrics['parameters']} parameters), {spec['dtype']}")
    table.add_row(
        "dataset", f"{spec['dataset']} ({metrics['train_samples']} train / {metrics['test_samples']} test)"
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
    table.add_row(f"peak memory ({metrics['peak_memory_source']})", _si(metrics["peak_memory_bytes"], "B"))
    timing = result["timing"]
    table.add_row(
        "timing",
        f"{timing['windows']} windows of {timing['window_steps']} steps after {timing['warmup_steps']} "
        f"warm-up ({timing['stop_reason']})",
    )


def _gradcheck_summary(table: Table, result: dict[str, Any]) -> None:
    metrics = result["metrics"]
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


def _backprop_vs_numerical_summary(table: Table, result: dict[str, Any]) -> None:
    metrics = result["metrics"]
    for column in ("hidden", "parameters", "backprop", "numerical", "time ratio", "forward evals (num/bp)"):
        table.add_column(column, justify="right")
    for row in metrics["sizes"]:
        cells = [str(row["width"]), str(row["parameters"])]
        cells += [_seconds(row["backprop_s"]), _seconds(row["numerical_s"]), f"{row['time_ratio']:.0f}x"]
        table.add_row(*cells, f"{row['numerical_forward_evaluations']} / 1")
    table.caption = (
        f"MLP {metrics['input_width']}-h-{metrics['n_classes']}, {metrics['samples']} samples, medians"
    )


def _gemm_summary(table: Table, result: dict[str, Any]) -> None:
    metrics = result["metrics"]
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


# What `bpbench run` prints for each job kind: a new kind adds its filler here.
_SUMMARY_FILLERS: dict[str, Callable[[Table, dict[str, Any]], None]] = {
    "train": _train_summary,
    "gradcheck": _gradcheck_summary,
    "backprop_vs_numerical": _backprop_vs_numerical_summary,
    "gemm": _gemm_summary,
}


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "n/a (float32)"  # rounding-bound: no pass/fail outside float64
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"
