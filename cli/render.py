"""Everything the command line prints: rich tables, progress bars, JSON and one-line errors.

The commands fetch or compute a document, then hand it to a function here; nothing here talks to a
database. Piped output (logs, tests) gets room for the wide comparison table instead of rich's default
80 columns.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
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
from engine.backends import BackendReport

if TYPE_CHECKING:
    from services.auth.models import ApiToken

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# A terminal, or a pipe with COLUMNS set, gets its width; other pipes room for the widest table.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 200)


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


@dataclass(frozen=True)
class Column:
    """A table column: its header, and how long it stays when the terminal is narrow (0: always)."""

    header: str
    keep: int = 0
    justify: JustifyMethod = "left"


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=1)


def _fill(widths: list[int], targets: Sequence[int], spare: int, rank: Sequence[int] | None = None) -> int:
    """Widen `widths` toward `targets` with at most `spare` cells; the spare left. Without `rank`, the
    smallest needs first, sharing evenly (water-filling, so short cells do not wrap); with it, whole
    needs in `rank` order while they fit."""
    wanting = sorted(range(len(widths)), key=lambda i: (rank[i] if rank else 0, targets[i] - widths[i]))
    for position, i in enumerate(wanting):
        need = targets[i] - widths[i]
        share = spare // (len(wanting) - position)
        given = (need if need <= spare else 0) if rank else max(0, min(need, share))
        widths[i] += given
        spare -= given
    return spare


def _column_widths(
    headers: Sequence[str], rows: Sequence[Sequence[str]], width: int, keep: Sequence[int]
) -> list[int] | None:
    """Content widths of the columns that fit `width` with no word broken, or None when even each
    column's longest word (header or cell) is too much. Room beyond that goes to the cells first, then to
    the headers (which otherwise wrap at their spaces), those of the columns kept longest first."""
    cells = [[header, *(row[i] for row in rows)] for i, header in enumerate(headers)]
    least = [max(_longest_word(cell) for cell in column) for column in cells]
    lines = [
        [cell_len(line) for cell in column[1:] for line in cell.splitlines() or [""]] for column in cells
    ]
    for_cells = [max([least[i], *lines[i]]) for i in range(len(headers))]
    for_headers = [max(for_cells[i], cell_len(header)) for i, header in enumerate(headers)]
    frame = 3 * len(headers) + 1  # a space each side of every cell, a rule between and around them
    spare = width - frame - sum(least)
    if spare < 0:
        return None
    widths = list(least)
    # The always-shown columns' headers count as cells: a key header stays on one line.
    spare = _fill(widths, [for_headers[i] if keep[i] == 0 else for_cells[i] for i in range(len(keep))], spare)
    _fill(widths, for_headers, spare, [-k if k else -100 for k in keep])
    return widths


def fitted_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], *, width: int | None = None
) -> Table:
    """A table that fits `width` (default: the console's) without breaking a word: cells wrap at spaces
    only, and while even that is too wide the column with the lowest `keep` is left out (named in the
    caption). Rich would squeeze columns below their longest word, so the widths are set here."""
    width = width or console.width
    shown = list(range(len(columns)))
    while True:
        headers = [columns[i].header for i in shown]
        kept = [columns[i].keep for i in shown]
        widths = _column_widths(headers, [[row[i] for i in shown] for row in rows], width, kept)
        droppable = [i for i in shown if columns[i].keep > 0]
        if widths is not None or not droppable:
            break
        shown.remove(min(droppable, key=lambda i: (columns[i].keep, -i)))
    table = Table(title=title)
    for position, i in enumerate(shown):
        table.add_column(
            columns[i].header,
            justify=columns[i].justify,
            width=widths[position] if widths else None,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    left_out = [columns[i].header for i in range(len(columns)) if i not in shown]
    if left_out:
        table.caption = f"not shown at {width} columns: {', '.join(left_out)} (--json has all)"
    return table


def short_id(job_id: str) -> str:
    """The first 8 characters of a job id: what `show` and `cancel` accept (a unique prefix)."""
    return str(job_id)[:8]


def _timestamp(value: Any) -> str:
    """`2026-12-03 10:11:55` from an ISO timestamp (seconds, no zone: the API's are UTC)."""
    return str(value).replace("T", " ")[:19] if value else "-"


def log_line_text(line: dict[str, Any]) -> str:
    """`2026-12-03 10:11:55 INFO    #1 message`: time (UTC), level, attempt, message."""
    return f"{_timestamp(line['time'])} {line['level']:<7} #{line['attempt']} {line['message']}"


def print_log_lines(lines: Sequence[dict[str, Any]], *, as_json: bool) -> None:
    """Job log lines on stdout: as text, or one JSON object per line."""
    for line in lines:
        if as_json:
            sys.stdout.write(json.dumps(line, default=str) + "\n")
        else:
            console.print(log_line_text(line), markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()


def blas_threads(device: dict[str, Any] | None) -> str:
    """The BLAS pool's thread count from a device's fingerprint ("-" when it has none)."""
    pools = ((device or {}).get("fingerprint") or {}).get("blas") or []
    counts = sorted(
        {str(p["num_threads"]) for p in pools if p.get("user_api") == "blas" and p.get("num_threads")}
    )
    return ", ".join(counts) or "-"


def jobs_table(jobs: Sequence[dict[str, Any]], title: str = "Jobs") -> Table:
    """A table of jobs: short id, kind, device, status, progress, worker, created, error."""
    columns = [
        Column("id"),
        Column("kind", 5),
        Column("device", 3),
        Column("status"),
        Column("progress", 4, "right"),
        Column("worker", 1),
        Column("created (UTC)", 2),
        Column("error", 6),
    ]
    rows = []
    for job in jobs:
        progress = job.get("progress")
        rows.append(
            [
                short_id(job["id"]),
                str(job.get("kind", "-")),
                str(job.get("target_device_id") or job.get("device") or "-"),
                str(job.get("status", "-")),
                f"{100 * progress:.0f}%" if isinstance(progress, int | float) else "-",
                str(job.get("worker") or "-"),
                _timestamp(job.get("created_at")),
                (job.get("error") or "")[:80],
            ]
        )
    return fitted_table(title, columns, rows)


def results_table(results: Sequence[dict[str, Any]], title: str = "Results") -> Table:
    """Recorded results: job (short id), when, device, what ran, throughput with its 95% CI."""
    columns = [
        Column("job"),
        Column("created (UTC)", 2),
        Column("device id"),
        Column("kind", 4),
        Column("model", 5),
        Column("dataset", 5),
        Column("batch", 3, "right"),
        Column("dtype", 1),
        Column("samples/s", 0, "right"),
        Column("95% CI", 6),
    ]
    rows = [
        [
            short_id(r["job_id"]),
            _timestamp(r.get("created_at")),
            str(r.get("device_id") or "-"),
            str(r.get("kind")),
            str(r.get("model") or "-"),
            str(r.get("dataset") or "-"),
            str(r.get("batch_size") or "-"),
            str(r.get("dtype") or "-"),
            _fmt(r.get("samples_per_s")),
            f"{_fmt(r.get('samples_per_s_ci95_low'))} .. {_fmt(r.get('samples_per_s_ci95_high'))}",
        ]
        for r in results
    ]
    return fitted_table(title, columns, rows)


def comparison_table(
    doc: dict[str, Any], title: str | None = None, devices: Sequence[dict[str, Any]] = ()
) -> Table:
    """The device comparison of one spec, with each device's vendor entry from the seed's timeline;
    `devices` (the API's device documents) add each device's BLAS thread count."""
    metric = doc.get("metric", "samples_per_s")
    spec = doc.get("spec") or {}
    label = (
        title or f"{spec.get('kind', '?')} {spec.get('model', {}).get('name', '')} {spec.get('dataset', '')}"
    )
    by_id = {device["id"]: device for device in devices}
    columns = [
        Column("device"),
        Column("device id"),
        Column("class", 2),
        Column("vendor", 3),
        Column("BLAS threads", 5, "right"),
        Column(f"{metric} median", 0, "right"),
        Column("95% CI", 7),
        Column("runs", 6, "right"),
        Column("ratio", 8, "right"),
        Column("efficiency", 4, "right"),
        Column("gemm peak GFLOP/s", 3, "right"),
        Column("samples/J", 2, "right"),
        Column("platform", 1),
        Column("entered deep learning", 1),
    ]
    rows = []
    for row in doc.get("rows", []):
        value = row.get(metric) or {}
        ci = value.get("ci95") or [None, None]
        timeline = row.get("timeline") or {}
        efficiency = row.get("efficiency")
        rows.append(
            [
                str(row.get("device_name") or row.get("device_id")),
                str(row.get("device_id")),
                str(row.get("device_class") or "-"),
                str(row.get("vendor") or "-"),
                blas_threads(by_id.get(row.get("device_id"))) if by_id else "-",
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
            ]
        )
    heading = f"{label.strip()}  (spec {doc.get('spec_hash')}, baseline {doc.get('baseline_name')})"
    return fitted_table(heading, columns, rows)


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


def yes_no(value: Any) -> str:
    """`yes`, `no`, or `-` when not recorded."""
    return "yes" if value is True else "no" if value is False else "-"


def devices_table(devices: Sequence[dict[str, Any]]) -> Table:
    """Registered devices: id, name, class, vendor, BLAS threads, memory, float64, live, queue, queued."""
    columns = [
        Column("id"),
        Column("name", 6),
        Column("class", 4),
        Column("vendor", 2),
        Column("BLAS threads", 5, "right"),
        Column("memory", 3, "right"),
        Column("float64", 3),
        Column("live"),
        Column("queue", 1),
        Column("queued", 3, "right"),
        Column("last heartbeat (UTC)", 1),
    ]
    rows = []
    for device in devices:
        memory = device.get("memory_bytes")
        rows.append(
            [
                str(device.get("id")),
                str(device.get("name")),
                str(device.get("device_class")),
                str(device.get("vendor") or "-"),
                blas_threads(device),
                f"{memory / 2**30:.1f} GiB" if isinstance(memory, int | float) else "-",
                yes_no(device.get("float64")),
                "yes" if device.get("live") else "no",
                str(device.get("queue")),
                str(device.get("queued_jobs", "-")),
                _timestamp(device.get("last_heartbeat")),
            ]
        )
    return fitted_table("Devices", columns, rows)


def backend_report_lines(reports: Sequence[BackendReport]) -> list[str]:
    """`bpbench worker --list-devices`: each registered backend, then the `--device` of each device it has.

    Plain lines, one fact each, so a script can read them: `<backend>  installed (<library> <version>)` or
    `<backend>  not installed: <what to install>`, and under an installed one
    `  --device <spelling>  <name>  vendor <vendor>  float64 yes|no`.
    """
    lines = []
    width = max((len(r.backend) for r in reports), default=0)
    for report in reports:
        if not report.installed:
            lines.append(f"{report.backend:<{width}}  not installed: {report.install}  ({report.summary})")
            continue
        library = f"{report.library} {report.version or '(version unknown)'}"
        lines.append(f"{report.backend:<{width}}  installed ({library})  ({report.summary})")
        spellings = max((len(d.spelling) for d in report.devices), default=0)
        for device in report.devices:
            lines.append(
                f"  --device {device.spelling:<{spellings}}  {device.name}  vendor {device.vendor}  "
                f"float64 {'yes' if device.float64 else 'no'}"
            )
        if report.note:
            lines.append(f"  ({report.note})")
    return lines


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
        TextColumn("{task.fields[message]}"),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        tasks = {}
        for i, job in enumerate(jobs):
            label = labels[i] if labels else f"{job.get('kind')}"
            description = f"{str(job['id'])[:8]} {label} [{job.get('target_device_id') or job.get('device')}]"
            tasks[job["id"]] = progress.add_task(
                description, total=1.0, status=job.get("status", ""), message=""
            )
        while True:
            pending = [i for i, job in latest.items() if job.get("status") not in FINAL_STATUSES]
            for job_id in pending:
                fresh = client.get(f"/api/v1/jobs/{job_id}")
                # Keep what only the submission knew (the suite entry) on the fresh document.
                fresh["suite_item"] = fresh.get("suite_item") or latest[job_id].get("suite_item")
                latest[job_id] = fresh
            for job_id, job in latest.items():
                # Only a success is 100%: a failed or cancelled job stays where it stopped.
                succeeded = job.get("status") == "succeeded"
                value = 1.0 if succeeded else float(job.get("progress") or 0.0)
                message = job.get("progress_message") or ""  # "step 40/100, loss 2.3026", as `run`
                if job.get("status") == "failed":
                    where = f" at {message}" if message.startswith("step ") else ""
                    message = f"failed{where}: {job.get('error') or 'no error recorded'}"
                progress.update(tasks[job_id], completed=value, status=job.get("status", ""), message=message)
            if all(job.get("status") in FINAL_STATUSES for job in latest.values()):
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"jobs still not finished after {timeout_s:.0f} s: {sorted(pending)}")
            time.sleep(poll_s)
    return [latest[job["id"]] for job in jobs]


def job_table(job: dict[str, Any]) -> Table:
    """A job's state as a two-column table, every figure with its unit: status, where it ran, progress,
    times, error."""
    table = Table(title=f"Job {job['id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    progress = job.get("progress")
    ran_on = job.get("device_id") or "-"
    rows = [
        ("status", str(job.get("status"))),
        ("kind", str(job.get("kind"))),
        ("device", f"{job.get('device')} (target {job['target_device_id']})")
        if job.get("target_device_id")
        else ("device", str(job.get("device"))),
        ("ran on", f"{ran_on}, worker {job['worker']}" if job.get("worker") else ran_on),
        (
            "progress",
            f"{100 * progress:.0f}%" + (f", {job['progress_message']}" if job.get("progress_message") else "")
            if isinstance(progress, int | float)
            else "-",
        ),
        ("attempts", str(job.get("attempts", "-"))),
        ("created (UTC)", _timestamp(job.get("created_at"))),
    ]
    if job.get("started_at"):
        rows.append(("started (UTC)", _timestamp(job["started_at"])))
    if job.get("finished_at"):
        rows.append(("finished (UTC)", _timestamp(job["finished_at"])))
    if isinstance(job.get("duration_s"), int | float):
        rows.append(("duration", _seconds(job["duration_s"])))
    rows.append(("spec", str(job.get("spec_hash"))))
    if job.get("error"):
        rows.append(("error", str(job["error"])))
    for key, value in rows:
        table.add_row(key, value)
    return table


def stored_result_document(job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The result document `summary_table` draws (what `bpbench run` prints), from a job and its stored
    result (`GET /api/v1/jobs/{id}/report`): the engine's metrics and fingerprint, the job's spec."""
    return {
        "kind": job["kind"],
        "spec": job["spec"],
        "metrics": result.get("metrics") or {},
        "fingerprint": result.get("fingerprint") or {},
    }


def show_job(job: dict[str, Any], result: dict[str, Any] | None = None) -> None:
    """A job's state and, once it succeeded and its stored result is given, the table `bpbench run`
    prints for it."""
    console.print(job_table(job))
    if result is not None:
        console.print(summary_table(stored_result_document(job, result)))


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
    timing = result.get("timing")  # a local run's; a stored result keeps its trials instead
    if timing:
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


def _parity_summary(table: Table, result: dict[str, Any]) -> None:
    metrics = result["metrics"]
    table.add_column("preset", min_width=len("simple_convnet"))
    for column in ("parameters", "max rel err", "max abs err", "bound", "pass"):
        table.add_column(column, justify="right")
    for name, p in metrics["presets"].items():
        errors = f"{p['max_relative_error']:.2e}", f"{p['max_abs_error']:.2e}"
        table.add_row(name, str(p["n_parameters"]), *errors, f"<= {p['bound']:.0e}", _mark(p["passed"]))
    table.caption = (
        f"backprop in {metrics['dtype']} against {metrics['reference']}, {metrics['samples']} samples"
    )


# What `bpbench run` prints for each job kind: a new kind adds its filler here.
_SUMMARY_FILLERS: dict[str, Callable[[Table, dict[str, Any]], None]] = {
    "train": _train_summary,
    "gradcheck": _gradcheck_summary,
    "backprop_vs_numerical": _backprop_vs_numerical_summary,
    "gemm": _gemm_summary,
    "parity": _parity_summary,
}


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "n/a (float32)"  # rounding-bound: no pass/fail outside float64
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"
