"""A PostgreSQL database of one's own on a shared server: created with a fresh name, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit


def _postgres_admin(admin_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(statement)


def create_postgres_database(admin_url: str, prefix: str = "bpbench_test") -> str:
    """Create an empty database with a fresh name on the admin URL's server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _postgres_admin(admin_url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    return parts._replace(path=f"/{name}").geturl()


def drop_postgres_database(admin_url: str, url: str) -> None:
    """Drop a database made by `create_postgres_database`, closing any connection still open to it."""
    from services.core.db import dispose_engines

    dispose_engines()
    name = urlsplit(url).path.lstrip("/")
    _postgres_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(admin_url: str, prefix: str = "bpbench_test") -> Iterator[str]:
    """A fresh, empty database for the block (dropped afterwards, connections and all)."""
    url = create_postgres_database(admin_url, prefix)
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, url)
