"""The `bpbench` typer application; each command module registers its commands on `app`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

app = typer.Typer(
    name="bpbench",
    help="Benchmark neural-network training on CPUs and GPUs with a from-scratch backprop engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def installed_version() -> str:
    """bpbench's version as installed (pyproject.toml's `version`)."""
    try:
        return version("bpbench")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"bpbench {installed_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print bpbench's version and exit"
        ),
    ] = False,
) -> None:
    """Benchmark neural-network training on CPUs and GPUs with a from-scratch backprop engine."""
