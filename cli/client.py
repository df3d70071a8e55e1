"""The API client commands: `bpbench submit`, `jobs`, `show`, `cancel`, `logs`, `compare`, `timeline`,
`devices`, `results`.

They speak HTTP to a running API (`cli/api_client.py`: `BPBENCH_API_URL`, default http://127.0.0.1:8000,
with the token from `BPBENCH_API_TOKEN` or `DATA_DIR/api-token`) and print with `cli/render.py`: rich
tables by default, JSON with `--json`. A refused connection or an HTTP error is one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.api_client import ApiClient
from cli.app import app
from cli.render import (
    FINAL_STATUSES,
    comparison_notes,
    comparison_table,
    console,
    devices_table,
    err_console,
    jobs_table,
    one_line_errors,
    print_json,
    print_log_lines,
    print_regression_flags,
    results_table,
    show_job,
    timeline_tables,
    wait_for_jobs,
)
from cli.spec_options import OneLineErrorCommand, SpecFileArg, spec_or_exit, with_spec_options
from engine.spec import KINDS

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.command("submit", cls=OneLineErrorCommand)
@with_spec_options
def submit_command(
    spec_file: SpecFileArg = None,
    *,
    target: Annotated[
        str | None, typer.Option(help="exact device id to run on (see `bpbench devices`)")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="show a progress bar until the job ends")] = False,
    as_json: JsonOpt = False,
    overrides: dict[str, Any],
) -> None:
    """Submit a benchmark job to the API: the same spec and options as `bpbench run`."""
    spec = spec_or_exit(spec_file, overrides)
    body = spec.model_dump(mode="json", exclude_unset=False)
    if target:
        body["target"] = target
    with one_line_errors():
        client = ApiClient.from_settings()
        job = client.post("/api/v1/jobs", body)
        warning = no_worker_warning(job, client.get("/api/v1/devices")["items"])
        if warning:
            err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
        result = None
        if wait:
            (job,) = wait_for_jobs(client, [job], out=err_console if as_json else console)
            if job["status"] == "succeeded" and not as_json:
                result = client.get(f"/api/v1/jobs/{job['id']}/report")["result"]
    if as_json:
        print_json(job)
    elif wait:
        show_job(job, result)
    else:
        console.print(
            f"submitted job {job['id']} ({job['status']}); follow it with `bpbench show {job['id']}`"
        )
    if wait and job.get("status") != "succeeded":
        raise typer.Exit(1)


def no_worker_warning(job: dict[str, Any], devices: list[dict[str, Any]]) -> str | None:
    """Why nothing will run the job now, when no live worker serves its queue (None when one does)."""
    target = job.get("target_device_id")
    if target:
        serving = [d for d in devices if d["id"] == target and d.get("live")]
    else:
        # A class queue is served by the live workers that consume it (a GPU worker serves `gpu` and `cuda`).
        queue = job.get("queue")
        serving = [
            d
            for d in devices
            if any(w.get("live") and queue in (w.get("queues") or []) for w in d.get("workers") or [])
        ]
    if serving:
        return None
    wanted = f"device {target}" if target else f"a {job.get('device_class')} device"
    return (
        f"no live worker serves queue {job.get('queue')!r} ({wanted}): job {job['id'][:8]} waits until one "
        f"starts (`bpbench worker --device {job.get('device')}`; see `bpbench devices`)"
    )


@app.command("jobs")
def jobs_command(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    kind: Annotated[str | None, typer.Option(help=", ".join(KINDS))] = None,
    device: Annotated[str | None, typer.Option(help="requested device class or exact device id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""
    with one_line_errors():
        page = ApiClient.from_settings().get(
            "/api/v1/jobs", status=status, kind=kind, device=device, limit=limit, offset=offset
        )
    if as_json:
        print_json(page)
        return
    # `total_exact` false: more than `total` match (the API counts exactly up to 10,000).
    total = f"{page['total']}{'' if page.get('total_exact', True) else '+'}"
    console.print(
        jobs_table(page["items"], title=f"Jobs {offset + 1}-{offset + len(page['items'])} of {total}")
    )


JobIdArg = Annotated[str, typer.Argument(help="job id, or its first characters (as `bpbench jobs` prints)")]


@app.command("show")
def show_command(job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """Show one job: status, progress, result summary, error."""
    with one_line_errors():
        client = ApiClient.from_settings()
        job = client.get(f"/api/v1/jobs/{client.resolve_job_id(job_id)}")
        result = None
        if not as_json and job["status"] == "succeeded":
            result = client.get(f"/api/v1/jobs/{job['id']}/report")["result"]
    if as_json:
        print_json(job)
    else:
        show_job(job, result)


def cancel_outcome(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What a cancel did, in words: from the job before the request and the answer to it."""
    if before["status"] in FINAL_STATUSES:
        return f"job {before['id']} had already finished ({before['status']}); nothing to cancel"
    if after["status"] == "cancelled":
        return f"job {after['id']} cancelled (it had not started)"
    if after["status"] == "running" and after.get("cancel_requested"):
        return f"job {after['id']}: cancel requested; it stops between two steps (`bpbench show` follows it)"
    return f"job {after['id']} finished ({after['status']}) before the cancel reached it"


@app.command("cancel")
def cancel_command(job_id: JobIdArg, as_json: JsonOpt = False) -> None:
    """Cancel a job (a queued job at once; a running one between two steps)."""
    with one_line_errors():
        client = ApiClient.from_settings()
        full_id = client.resolve_job_id(job_id)
        before = client.get(f"/api/v1/jobs/{full_id}")
        job = before
        if before["status"] not in FINAL_STATUSES:
            job = client.post(f"/api/v1/jobs/{full_id}/cancel")
    if as_json:
        print_json(job)
    else:
        console.print(cancel_outcome(before, job), highlight=False)


LOG_POLL_S = 1.0
LOG_PAGE_LINES = 1000  # the API's largest page


def read_log_pages(client: ApiClient, job_id: str, after: int = 0) -> dict[str, Any]:
    """Every stored line of the job after `after` (as many pages as it takes), as one page document."""
    items: list[dict[str, Any]] = []
    while True:
        page: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}/logs", after=after, limit=LOG_PAGE_LINES)
        items += page["items"]
        after = page["last_seq"]
        if len(page["items"]) < LOG_PAGE_LINES:
            return {**page, "items": items}


@app.command("logs")
def logs_command(
    job_id: JobIdArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new lines until the job has ended")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON (with --follow: one object per line)")
    ] = False,
) -> None:
    """Show the log lines the job's workers stored, oldest first, each with its attempt (#1, #2, ...)."""
    with one_line_errors():
        client = ApiClient.from_settings()
        full_id = client.resolve_job_id(job_id)
        page = read_log_pages(client, full_id)
        if as_json and not follow:
            print_json(page)
            return
        print_log_lines(page["items"], as_json=as_json)
        seen = len(page["items"])
        try:
            while follow and not page["complete"]:
                time.sleep(LOG_POLL_S)
                page = read_log_pages(client, full_id, after=page["last_seq"])
                print_log_lines(page["items"], as_json=as_json)
                seen += len(page["items"])
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    if not as_json:
        err_console.print(f"job {full_id}: {page['status']}, {seen} line(s)", highlight=False)


@app.command("compare")
def compare_command(
    kind: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option()] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    dtype: Annotated[str | None, typer.Option()] = None,
    spec_hash: Annotated[str | None, typer.Option(help="compare exactly this spec")] = None,
    baseline: Annotated[str | None, typer.Option(help="device id or name; default the slowest")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare devices on one spec: median throughput with CI, ratio, efficiency, vendor timeline."""
    with one_line_errors():
        client = ApiClient.from_settings()
        doc = client.get(
            "/api/v1/compare",
            kind=kind,
            model=model,
            dataset=dataset,
            batch_size=batch_size,
            dtype=dtype,
            spec_hash=spec_hash,
            baseline=baseline,
        )
        # Each device's newest result on this spec, flagged when outside its history's noise.
        flags = client.get("/api/v1/regressions", spec_hash=doc["spec_hash"])["items"]
        if not as_json:
            devices = client.get("/api/v1/devices")["items"]  # their BLAS thread counts
    if as_json:
        print_json({**doc, "regressions": flags})
        return
    console.print(comparison_table(doc, devices=devices))
    if doc.get("note"):
        console.print(f"[dim]{doc['note']}[/dim]")
    for note in comparison_notes(doc):
        console.print(f"[yellow]{escape(note)}[/yellow]")
    print_regression_flags(flags)


@app.command("timeline")
def timeline_command(as_json: JsonOpt = False) -> None:
    """The seed's timeline: when each vendor entered deep learning, and the milestones 1986-2012."""
    with one_line_errors():
        doc = ApiClient.from_settings().get("/api/v1/timeline")
    if as_json:
        print_json(doc)
        return
    for table in timeline_tables(doc):
        console.print(table)


@app.command("devices")
def devices_command(as_json: JsonOpt = False) -> None:
    """Registered devices: fingerprint summary, live or not, queue."""
    with one_line_errors():
        doc = ApiClient.from_settings().get("/api/v1/devices")
    if as_json:
        print_json(doc)
        return
    console.print(devices_table(doc["items"]))


@app.command("results")
def results_command(
    kind: Annotated[str | None, typer.Option(help=", ".join(KINDS))] = None,
    model: Annotated[str | None, typer.Option()] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    dtype: Annotated[str | None, typer.Option()] = None,
    spec_hash: Annotated[str | None, typer.Option(help="results of exactly this spec")] = None,
    device: Annotated[str | None, typer.Option(help="device id (see `bpbench devices`)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_csv: Annotated[bool, typer.Option("--csv", help="the API's CSV on stdout, for spreadsheets")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recorded results, newest first, filtered as `GET /api/v1/results`: a table, JSON or CSV."""
    if as_csv and as_json:
        err_console.print("[red]error:[/red] give --csv or --json, not both", highlight=False)
        raise typer.Exit(2)
    filters: dict[str, Any] = {
        "kind": kind,
        "model": model,
        "dataset": dataset,
        "batch_size": batch_size,
        "dtype": dtype,
        "spec_hash": spec_hash,
        "device": device,
        "limit": limit,
        "offset": offset,
    }
    with one_line_errors():
        client = ApiClient.from_settings()
        if as_csv:
            clean = {k: v for k, v in filters.items() if v is not None}
            sys.stdout.write(client.request("GET", "/api/v1/results", params={**clean, "format": "csv"}).text)
            return
        page = client.get("/api/v1/results", **filters)
    if as_json:
        print_json(page)
        return
    console.print(results_table(page["items"], title=f"Results {offset + 1}-{offset + len(page['items'])}"))
