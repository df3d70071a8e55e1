"""The server commands: `bpbench api`, `worker`, `migrate`, `reconciler`, and `up` (the stack: stack.py).

Each one parses its options and hands over to the module that serves: uvicorn with the API app, the
worker's Celery consumer, Alembic, the reconciler's loop, or the embedded stack's supervisor."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.app import app
from cli.render import err_console
from engine.spec import DEVICE_ACCEPTED
from services.core.config import get_settings


@app.command("worker")
def worker_command(
    device: Annotated[str, typer.Option(help=f"the device to serve: {DEVICE_ACCEPTED}")] = "cpu",
    name: Annotated[
        str | None, typer.Option(help="worker name, unique per worker (default <device>@<hostname>)")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="jobs at once; CPU only (default 1, so timings do not collide)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="BLAS threads; part of the device's identity (default: all)")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="text for people, json for machines (one object per line)")
    ] = "text",
    list_devices: Annotated[
        bool,
        typer.Option(
            "--list-devices",
            help="print every backend (installed or not) and this host's devices with the --device to use; "
            "serve nothing",
        ),
    ] = False,
) -> None:
    """Serve one device: register its fingerprint, send heartbeats, run the jobs of its queues."""
    if list_devices:
        from cli.render import backend_report_lines
        from engine.backends import host_report

        for line in backend_report_lines(host_report()):
            typer.echo(line)
        raise typer.Exit(0)
    from workers.main import WorkerConfigError, run_worker

    try:
        code = run_worker(
            device,
            name=name,
            concurrency=concurrency,
            threads=threads,
            loglevel=loglevel,
            log_format=log_format,
        )
    except WorkerConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command("migrate")
def migrate_command(
    database_url: Annotated[
        str | None,
        typer.Option(help="database to migrate (default: BPBENCH_DATABASE_URL)"),
    ] = None,
) -> None:
    """Upgrade the database schema to the newest revision (safe to run again)."""
    from services.core.config import redact_url
    from services.core.migrate import upgrade_to_head

    url = database_url or get_settings().database_url
    revision = upgrade_to_head(url)
    typer.echo(f"database {redact_url(url)} is at revision {revision} (head)")


@app.command("reconciler")
def reconciler_command(
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Requeue jobs whose worker died and publish jobs the broker lost (safe to run in several places)."""
    from services.core.logging import configure_logging
    from services.jobs.reconciler import run_reconciler

    configure_logging("text", loglevel.upper())
    raise typer.Exit(run_reconciler())


@app.command("beat")
def beat_command(
    loglevel: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Send the tick (run due schedules, send alerts) every BPBENCH_TICK_INTERVAL_S: Celery beat. Run one
    per deployment; any worker executes the ticks."""
    from celery.apps.beat import Beat

    from services.core.logging import configure_logging
    from services.core.queue import get_celery_app

    configure_logging("text", loglevel.upper())
    app = get_celery_app()
    Path(app.conf.beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)
    Beat(app=app, loglevel=loglevel.upper(), quiet=True).run()


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


# More API processes than this gain nothing on one host: the database and the broker are shared.
MAX_DEFAULT_API_WORKERS = 8
HTTP_IMPLEMENTATIONS = ("auto", "httptools", "h11")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def default_api_workers() -> int:
    """API processes by default: one per CPU this process may run on, at most `MAX_DEFAULT_API_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_API_WORKERS))


@app.command("api")
def api_command(
    host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 unless told otherwise")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    log_format: Annotated[
        str, typer.Option(help="text for people, json for machines (one object per line)")
    ] = "text",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help=f"API processes sharing the port (uvicorn --workers); default: BPBENCH_API_WORKERS, else "
            f"one per CPU, at most {MAX_DEFAULT_API_WORKERS}",
        ),
    ] = None,
    http: Annotated[
        str, typer.Option(help="uvicorn's HTTP parser: auto (httptools when installed), httptools, h11")
    ] = "auto",
    loop: Annotated[
        str, typer.Option(help="uvicorn's event loop: auto (uvloop when installed), uvloop, asyncio")
    ] = "auto",
    shared_socket: Annotated[
        bool,
        typer.Option(
            "--shared-socket",
            help="with several processes, one listening socket for all (uvicorn --workers) instead of "
            "one each on the same port (SO_REUSEPORT), which spreads connections evenly",
        ),
    ] = False,
) -> None:
    """Serve the API (migrates the database first); BPBENCH_API_TOKEN becomes its first admin token."""
    import uvicorn

    from services.api.main import LOG_FORMAT_VARIABLE, bootstrap_token, create_app, tune_gc_for_serving
    from services.api.serving import reuse_port_supported, serve_processes
    from services.core.logging import LOG_FORMATS, configure_logging
    from services.core.migrate import upgrade_to_head

    for name, value, accepted in (
        ("--log-format", log_format, LOG_FORMATS),
        ("--http", http, HTTP_IMPLEMENTATIONS),
        ("--loop", loop, EVENT_LOOPS),
    ):
        if value not in accepted:
            err_console.print(f"[red]error:[/red] {name} {value!r}: accepted: {', '.join(accepted)}")
            raise typer.Exit(2)
    configure_logging("json" if log_format == "json" else "text")
    settings = get_settings()
    upgrade_to_head(settings.database_url)
    processes = workers or settings.api_workers or default_api_workers()
    # log_config=None: uvicorn's loggers propagate to the handler configured above (text or JSON).
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "log_config": None,
        "http": http,
        "loop": loop,
    }
    if processes == 1:
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to the handler it found:
        # with this one the process exits 0 (`docker compose stop` sees a clean exit, not 143).
        signal.signal(signal.SIGTERM, _exit_cleanly)
        application = create_app(settings)
        tune_gc_for_serving()
        uvicorn.run(application, **options)
        return
    # Once here, before the processes start, so they do not race to store it.
    bootstrap_token(settings)
    # Each process is a fresh interpreter (spawned) that builds its app from the environment; the parent
    # supervises them, restarts one that dies, and on SIGTERM stops them all and exits 0.
    os.environ[LOG_FORMAT_VARIABLE] = log_format
    if shared_socket or not reuse_port_supported():
        uvicorn.run("services.api.main:served_app", factory=True, workers=processes, **options)
        return
    try:
        code = serve_processes(options, processes)
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command("up")
def up_command(
    data_dir: Annotated[
        Path | None, typer.Option(help="where the SQLite file, broker and token live")
    ] = None,
    host: Annotated[str, typer.Option(help="address the API binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    suite: Annotated[
        str | None, typer.Option(help="standard or none; default: standard on a fresh data dir, else none")
    ] = None,
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="stop everything once no job is queued or running")
    ] = False,
    stack: Annotated[
        list[str] | None,
        typer.Option(
            help="also start a worker per device of this installed stack (a backend of `bpbench worker "
            "--list-devices`, e.g. xla, oneapi, rocm; `all`: every installed one); repeatable"
        ),
    ] = None,
) -> None:
    """Start the stack here (SQLite, embedded broker, API, a worker per device); run the standard suite."""
    from cli.stack import StackError, run_stack, stack_workers

    if suite not in (None, "standard", "none"):
        err_console.print(f"[red]error:[/red] --suite {suite!r}: accepted: standard, none", highlight=False)
        raise typer.Exit(2)
    try:
        extra_workers = stack_workers(stack or [])
    except StackError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    run_stack(data_dir, host, port, suite, exit_when_done, extra_workers)
