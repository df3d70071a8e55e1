"""The API client commands: `bpbench submit`, `jobs`, `show`, `cancel`, `compare`, `timeline`, `devices`.

They speak HTTP to a running API (`BPBENCH_API_URL`, default http://127.0.0.1:8000) with the token from
`BPBENCH_API_TOKEN` or `DATA_DIR/api-token`. Output is rich tables by default and JSON with `--json`.
A refused connection or an HTTP error is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.spec import KINDS
from services.cli.app import app
from services.cli.spec_options import OneLineErrorCommand, SpecFileArg, spec_or_exit, with_spec_options
from services.core.config import Settings, get_settings

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# Piped output (logs, tests) gets room for the wide comparison table instead of rich's default 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class ClientError(Exception):
    """A failure talking to the API, already worded for a person (one line)."""


def read_token(settings: Settings) -> str | None:
    """The API token: `BPBENCH_API_TOKEN`, else the file `bpbench up` wrote in the data directory."""
    if settings.api_token:
        return settings.api_token
    path = settings.api_token_file
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _http_error_message(response: httpx.Response) -> str:
    """`HTTP 422: steps: ...` from an error response, whatever its body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail: Any = None
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail")
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("message", d) if isinstance(d, dict) else d) for d in detail)
    if detail is None:
        detail = response.text.strip()[:300] or response.reason_phrase
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}: {detail}"


class ApiClient:
    """A small synchronous client of the bpbench API; every failure is a `ClientError`."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ApiClient:
        """A client for `BPBENCH_API_URL` with the token from the environment or the data directory."""
        settings = settings or get_settings()
        return cls(settings.api_url, read_token(settings))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # A 429 is waited out (its Retry-After, at most this long) this many times before it is an error.
    RATE_LIMIT_RETRIES = 3
    RATE_LIMIT_MAX_WAIT_S = 10.0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise `ClientError` on a connection failure or a non-2xx answer.

        A 429 (rate limited) is retried after its `Retry-After`, up to `RATE_LIMIT_RETRIES` times."""
        for _ in range(self.RATE_LIMIT_RETRIES):
            response = self._send(method, path, **kwargs)
            if response.status_code != 429:
                break
            try:
                wait_s = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                wait_s = 1.0
            time.sleep(min(max(wait_s, 0.1), self.RATE_LIMIT_MAX_WAIT_S))
        else:
            response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise ClientError(_http_error_message(response))
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ClientError(
                f"cannot reach the bpbench API at {self.base_url} (connection refused); "
                "start it with `bpbench up` or `bpbench api`, or set BPBENCH_API_URL"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(f"the bpbench API at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"request to {self.base_url}{path} failed: {exc}") from None

    def get(self, path: str, **params: Any) -> Any:
        """GET `path` with the query parameters that are not None; the decoded JSON."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body; the decoded JSON."""
        return self.request("POST", path, json=body).json()


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


# --- rendering, shared with `bpbench up` -------------------------------------------------------------


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
            f"{100 * efficiency:.1f}%" if isinstance(efficiency, int | float) else "-",
            _fmt(row["gemm_peak_flops_per_s"] / 1e9) if row.get("gemm_peak_flops_per_s") else "-",
            str(timeline.get("platform") or "-"),
            _years(timeline),
        )
    return table


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


# --- commands ------------------------------------------------------------------------------------------

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
        if wait:
            (job,) = wait_for_jobs(client, [job], out=err_console if as_json else console)
    if as_json:
        print_json(job)
    elif wait:
        show_job(job)
    else:
        console.print(
            f"submitted job {job['id']} ({job['status']}); follow it with `bpbench show {job['id']}`"
        )
    if wait and job.get("status") != "succeeded":
        raise typer.Exit(1)


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


@app.command("show")
def show_command(job_id: Annotated[str, typer.Argument(help="job id")], as_json: JsonOpt = False) -> None:
    """Show one job: status, progress, result summary, error."""
    with one_line_errors():
        job = ApiClient.from_settings().get(f"/api/v1/jobs/{job_id}")
    if as_json:
        print_json(job)
    else:
        show_job(job)


@app.command("cancel")
def cancel_command(job_id: Annotated[str, typer.Argument(help="job id")], as_json: JsonOpt = False) -> None:
    """Cancel a job (a queued job at once; a running one between two steps)."""
    with one_line_errors():
        job = ApiClient.from_settings().post(f"/api/v1/jobs/{job_id}/cancel")
    if as_json:
        print_json(job)
    else:
        console.print(f"job {job['id']}: {job['status']}")


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
        doc = ApiClient.from_settings().get(
            "/api/v1/compare",
            kind=kind,
            model=model,
            dataset=dataset,
            batch_size=batch_size,
            dtype=dtype,
            spec_hash=spec_hash,
            baseline=baseline,
        )
        # issue 5: each device's newest result on this spec, flagged when outside its history's noise.
        flags = ApiClient.from_settings().get("/api/v1/regressions", spec_hash=doc["spec_hash"])["items"]
    if as_json:
        print_json({**doc, "regressions": flags})
        return
    console.print(comparison_table(doc))
    if doc.get("note"):
        console.print(f"[dim]{doc['note']}[/dim]")
    for flag in flags:
        colour = "red" if flag["flag"] == "regression" else "green"
        console.print(
            f"[{colour}]{flag['flag']}[/{colour}] on {flag['device_name'] or flag['device_id']}: "
            f"{flag['change_pct']:+.1f}% ({_fmt(flag['samples_per_s'])} samples/s against a median of "
            f"{_fmt(flag['baseline_samples_per_s'])} over {flag['history_runs']} earlier runs; "
            f"job {flag['job_id']})",
            highlight=False,
        )


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
