"""Server commands `bpbench worker`, `bpbench migrate` and `bpbench reconciler` (`api` and `up`: stack.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import app


@app.command("worker")
def worker_command(
    device: Annotated[str, typer.Option(help="the device to serve: cpu, gpu or gpu:N")] = "cpu",
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
) -> None:
    """Serve one device: register its fingerprint, send heartbeats, run the jobs of its queues."""
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
    from services.core.config import get_settings, redact_url
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
