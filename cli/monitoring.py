"""`bpbench schedule add|list|remove`, `bpbench alerts` and `bpbench mark`: the history a fleet builds by
itself (suites run on a schedule by Celery beat's minute tick), the alerts it sent, and expected shifts."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.api_client import ApiClient
from cli.app import app
from cli.render import console, one_line_errors, print_json

schedule_app = typer.Typer(
    help="Suites run on a device every so often, so its history builds up (needs `bpbench beat` running).",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")

_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhd])\s*$")
_UNIT_HOURS = {"m": 1 / 60, "h": 1.0, "d": 24.0}


def parse_period(text: str) -> float:
    """`30m`, `6h`, `1.5d` -> hours."""
    match = _PERIOD.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r}: accepted: a number and m, h or d, e.g. 30m, 6h, 1d")
    return float(match.group(1)) * _UNIT_HOURS[match.group(2)]


JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@schedule_app.command("add")
def schedule_add(
    target: Annotated[
        str, typer.Argument(help="device id (see `bpbench devices`) or class: cpu, gpu, gpu:N")
    ],
    every: Annotated[str, typer.Option(help="period: 30m, 6h, 1d ...")] = "24h",
    suite: Annotated[str, typer.Option(help="standard or smoke")] = "standard",
    as_json: JsonOpt = False,
) -> None:
    """Run a suite on a device every period, starting at the next minute tick."""
    hours = parse_period(every)
    with one_line_errors():
        schedule = ApiClient.from_settings().post(
            "/api/v1/schedules", {"suite": suite, "target": target, "every_hours": hours}
        )
    if as_json:
        print_json(schedule)
        return
    console.print(
        f"schedule {schedule['id']}: {schedule['suite']} on {schedule['target']} every {every}, "
        f"next at {schedule['next_run_at'][:16]} UTC"
    )


@schedule_app.command("list")
def schedule_list(as_json: JsonOpt = False) -> None:
    """Every schedule, with its next and last run."""
    with one_line_errors():
        schedules = ApiClient.from_settings().get("/api/v1/schedules")
    if as_json:
        print_json(schedules)
        return
    table = Table(title="Schedules")
    for column in ("id", "suite", "target", "every", "next run (UTC)", "last run (UTC)", "jobs"):
        table.add_column(column, overflow="fold")
    for s in schedules:
        table.add_row(
            s["id"][:8],
            s["suite"],
            s["target"],
            _period(s["every_s"]),
            s["next_run_at"][:16],
            (s["last_run_at"] or "-")[:16],
            str(len(s["last_job_ids"])),
        )
    console.print(table)


def _period(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds / 3600:g}h"


@schedule_app.command("remove")
def schedule_remove(schedule_id: Annotated[str, typer.Argument(help="the schedule's id")]) -> None:
    """Remove a schedule (jobs it already submitted stay)."""
    with one_line_errors():
        ApiClient.from_settings().request("DELETE", f"/api/v1/schedules/{schedule_id}")
    console.print(f"schedule {schedule_id} removed")


@app.command("alerts")
def alerts_command(
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The alert messages sent to the webhooks (BPBENCH_ALERT_WEBHOOK_URLS), newest first."""
    with one_line_errors():
        deliveries: list[dict[str, Any]] = ApiClient.from_settings().get(
            "/api/v1/alerts", status=status, limit=limit
        )
    if as_json:
        print_json(deliveries)
        return
    table = Table(title="Alerts")
    for column in ("when (UTC)", "kind", "message", "webhook", "delivery"):
        table.add_column(column, overflow="fold")
    for d in deliveries:
        outcome = d["status"] if d["status"] == "delivered" else f"{d['status']} ({d['attempts']} tries)"
        table.add_row(d["created_at"][:16], d["kind"], escape(d["text"]), d["webhook"], outcome)
    console.print(table)


@app.command("mark")
def mark_command(
    device_id: Annotated[str, typer.Argument(help="the device (see `bpbench devices`)")],
    note: Annotated[str, typer.Option(help="what changed, e.g. 'driver 580 installed'")],
    spec_hash: Annotated[str | None, typer.Option(help="only this spec's history (default: all)")] = None,
) -> None:
    """Mark an expected shift on a device now: its histories restart here (no change point across it)."""
    with one_line_errors():
        mark = ApiClient.from_settings().post(
            f"/api/v1/devices/{device_id}/marks", {"note": note, "spec_hash": spec_hash}
        )
    console.print(f"marked {device_id} at {mark['at'][:16]} UTC: {mark['note']}")


@app.command("history")
def history_command(
    device_id: Annotated[str, typer.Argument(help="the device (see `bpbench devices`)")],
    spec_hash: Annotated[str, typer.Option(help="the spec (see `bpbench compare` or `bpbench jobs`)")],
    limit: Annotated[int, typer.Option(min=2, max=1000)] = 30,
    as_json: JsonOpt = False,
) -> None:
    """A device's results of one spec over time: where the series was cut and where it shifted."""
    with one_line_errors():
        history = ApiClient.from_settings().get(
            f"/api/v1/devices/{device_id}/history", spec_hash=spec_hash, limit=limit
        )
    if as_json:
        print_json(history)
        return
    cuts = {c["index"]: c["reason"] for c in history["cuts"]}
    shifts = {c["index"]: c for c in history["change_points"]}
    table = Table(title=f"History of {device_id} on spec {spec_hash}")
    for column in ("#", "when (UTC)", "samples/s", "job", "note"):
        table.add_column(column, overflow="fold")
    for index, point in enumerate(history["points"]):
        notes = []
        if index in cuts:
            notes.append(f"cut: {cuts[index]}")
        if index in shifts:
            shift = shifts[index]
            notes.append(f"change point {shift['change']:+.1%} (p {shift['p_value']:.3g})")
        table.add_row(
            str(index),
            point["created_at"][:16],
            f"{point['samples_per_s']:,.1f}",
            point["job_id"][:8],
            escape("; ".join(notes)),
        )
    console.print(table)
