"""The `bpbench` command line: local runs, servers, and the API client."""

from __future__ import annotations

from cli import client, local, servers, stack, tokens  # noqa: F401  (registers commands)
from cli.app import app


def main() -> None:
    """Entry point of the `bpbench` console script."""
    app()
