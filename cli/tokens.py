"""`bpbench token create|list|revoke`: the administrator's local commands for API tokens.

They talk to the database directly (`BPBENCH_DATABASE_URL`), not to the API, so the first tokens can be
made before any token exists and a leaked admin token can be revoked without using it. A new token is
printed once, alone on stdout (`TOKEN=$(bpbench token create --name ci --scope submit)`); only its SHA-256
and its first characters (the prefix that names it in lists) are stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from cli.app import app
from cli.render import console, err_console, token_documents, tokens_table
from services.core.config import MAX_TOKEN_NAME_CHARS, get_settings, redact_url

if TYPE_CHECKING:  # the database layer is imported when a token command runs, not at every CLI start
    from sqlalchemy.orm import Session


token_app = typer.Typer(
    help="API tokens with scopes read, submit, admin (talks to BPBENCH_DATABASE_URL directly).",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")

# Shortest prefix `revoke` accepts, so that a typo does not match many tokens.
MIN_PREFIX = 5


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _database() -> Iterator[Session]:
    """A session on the configured database; a database error becomes one line and exit status 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from services.core.db import session_factory

    settings = get_settings()
    try:
        with session_factory(settings)() as session:
            yield session
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _fail(
            f"database {redact_url(settings.database_url)}: {reason} (run `bpbench migrate` first?)"
        ) from None


def parse_scopes(text: str) -> list[str]:
    """`read,submit` -> ['read', 'submit']; an unknown scope names what is accepted."""
    from services.auth.models import TOKEN_SCOPES

    scopes = sorted({part.strip() for part in text.split(",") if part.strip()})
    unknown = [scope for scope in scopes if scope not in TOKEN_SCOPES]
    if unknown or not scopes:
        raise _fail(f"--scope {text!r}: accepted: one or more of {', '.join(TOKEN_SCOPES)}", 2)
    return scopes


@token_app.command("create")
def create_command(
    name: Annotated[str, typer.Option(help="who or what the token is for (shown in lists)")],
    scope: Annotated[
        str, typer.Option(help="comma-separated scopes: read, submit (implies read), admin (everything)")
    ] = "read",
) -> None:
    """Make a token and print it once (stdout); only its hash is kept."""
    from services.auth.service import active_token_named, create_token

    scopes = parse_scopes(scope)
    name = name.strip()
    if not name or len(name) > MAX_TOKEN_NAME_CHARS:
        raise _fail(f"--name {name!r}: accepted: 1 to {MAX_TOKEN_NAME_CHARS} characters", 2)
    with _database() as session:
        taken = active_token_named(session, name)
        if taken is not None:
            raise _fail(
                f"a token named {name!r} exists (prefix {taken.prefix}); revoke it or pick another name"
            )
        token, row = create_token(session, name=name, scopes=scopes)
        session.commit()
        err_console.print(
            f"Token {name!r} (scopes {', '.join(row.scopes)}, prefix {row.prefix}); "
            "store it now, it is not shown again:",
            highlight=False,
        )
    typer.echo(token)


@token_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout, for scripts")] = False,
) -> None:
    """Every token: name, scopes, prefix, created, last used, revoked (never the token itself)."""
    from services.auth.service import list_tokens

    with _database() as session:
        rows = list_tokens(session)
    if as_json:
        typer.echo(json.dumps(token_documents(rows), indent=2))
        return
    console.print(tokens_table(rows))


@token_app.command("revoke")
def revoke_command(
    name_or_prefix: Annotated[
        str, typer.Argument(help=f"the token's name, or its prefix (at least {MIN_PREFIX} characters)")
    ],
) -> None:
    """Revoke one token by name or prefix: API servers refuse it within BPBENCH_TOKEN_CACHE_TTL_S (the
    time they remember a valid token; 0 turns that off); the row is kept, marked revoked."""
    from services.auth.service import find_active_tokens, revoke_token

    with _database() as session:
        matches = find_active_tokens(session, name_or_prefix, min_prefix=MIN_PREFIX)
        if not matches:
            raise _fail(
                f"no unrevoked token has the name or prefix {name_or_prefix!r} (see `bpbench token list`)"
            )
        if len(matches) > 1:
            listed = ", ".join(f"{row.name!r} ({row.prefix})" for row in matches)
            raise _fail(f"{name_or_prefix!r} matches {len(matches)} tokens: {listed}; give a prefix")
        row = revoke_token(session, matches[0].id)
        session.commit()
        assert row is not None
        console.print(f"Revoked token {row.name!r} (prefix {row.prefix}, scopes {', '.join(row.scopes)})")
