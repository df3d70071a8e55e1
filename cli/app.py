"""The `bpbench` typer application; each command module registers its commands on `app`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="bpbench",
    help="Benchmark neural-network training on CPUs and GPUs with a from-scratch backprop engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
