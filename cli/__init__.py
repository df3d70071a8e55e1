"""The `bpbench` command line: local runs, servers, the embedded stack, API tokens and the API client.

It sits above `services` and `workers` (it starts API, worker and reconciler processes); nothing there
imports it. `app.py` holds the typer app, `api_client.py` the HTTP client, `render.py` what is printed,
and one module per command group registers its commands: `local.py`, `servers.py` (with `stack.py`
behind `bpbench up`), `client.py`, `tokens.py`.
"""

from __future__ import annotations

from cli import client, local, servers, tokens  # noqa: F401  (registers commands)
from cli.app import app


def main() -> None:
    """Entry point of the `bpbench` console script (and of `python -m cli`)."""
    app()
