"""Alembic environment: every bpbench model's metadata, one history for SQLite and PostgreSQL.

The URL is taken, in order, from `config.attributes["database_url"]` (set by `services.core.migrate`),
`-x database_url=...` on the alembic command line, then the settings (`BPBENCH_DATABASE_URL`).
SQLite runs in batch mode, since it cannot ALTER most things in place, and with foreign-key enforcement off
while it migrates (batch mode drops and re-creates tables; see `sqlite_foreign_keys_deferred`).
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import Connection

# Every model module, so that Base.metadata knows every table (autogenerate and `alembic check` compare it).
import services.alerts.models
import services.auth.models
import services.devices.models
import services.joblogs.models
import services.jobs.models
import services.results.models
import services.schedules.models
import services.timeline.models  # noqa: F401
from services.core.config import get_settings
from services.core.db import Base, make_engine
from services.core.migrate import sqlite_foreign_keys_deferred

metadata = Base.metadata

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url")
    url = url or context.get_x_argument(as_dictionary=True).get("database_url")
    return str(url or get_settings().database_url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=False,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=_database_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=_database_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection (one given by the caller, or a new engine)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_database_url())
    try:
        with engine.connect() as connection, sqlite_foreign_keys_deferred(connection):
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
