"""The one SQLAlchemy layer for SQLite (the default) and PostgreSQL (production).

SQLite is opened the way Prefect's server does it: WAL journal (readers do not block the writer), foreign
keys on, and a busy timeout so concurrent writers (API, workers) wait instead of failing. PostgreSQL
connections are checked before use (`pool_pre_ping`) so a restarted server is survived without a restart.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from services.core.config import Settings, get_settings, normalize_database_url
from services.core.data_dir import PRIVATE_DIR_MODE, ensure_private_file

# Explicit constraint names: Alembic batch mode on SQLite and `alembic check` need them stable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp column holds UTC)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; bpbench stores timezone-aware UTC timestamps")
        value = value.astimezone(UTC)
        # SQLite keeps text; store it without the offset so string comparisons order correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of every bpbench table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
        list[Any]: JSON(),
    }


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


# Connections are opened lazily, kept, and never closed on return: with overflow connections an API under
# load opened and closed one every few requests (a PostgreSQL backend start each).
# 20 covers the requests that run at once in one API process (more wait for a connection, cheaply).
POSTGRES_POOL_SIZE = 20


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> Engine:
    """An Engine for a database URL as a person writes it (see `normalize_database_url`).

    For a SQLite file the parent directory is created and the file made 0600; every connection gets WAL,
    foreign keys and the busy timeout. PostgreSQL gets `pool_pre_ping` so connections dropped by a server
    restart are replaced.
    """
    sa_url = make_url(normalize_database_url(url))
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:" and not sa_url.database.startswith("file:"):
            database_file = Path(sa_url.database).expanduser()
            database_file.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            # SQLite gives its -wal and -shm files the database file's mode: 0600 keeps all three private.
            ensure_private_file(database_file)
        engine = create_engine(
            sa_url,
            echo=echo,
            # Sessions are used from the heartbeat thread and the task thread of one worker.
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        )
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        return engine
    return create_engine(sa_url, echo=echo, pool_pre_ping=True, pool_size=POSTGRES_POOL_SIZE, max_overflow=0)


_factories: dict[tuple[int, str], sessionmaker[Session]] = {}
_factories_lock = threading.Lock()


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """The sessionmaker of the settings' database, one per process (a forked worker child gets its own)."""
    settings = settings or get_settings()
    key = (os.getpid(), settings.database_url)
    with _factories_lock:
        factory = _factories.get(key)
        if factory is None:
            engine = make_engine(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
            factory = sessionmaker(bind=engine, expire_on_commit=False)
            _factories[key] = factory
        return factory


def dispose_engines() -> None:
    """Close every pooled connection of this process (at shutdown, and in tests between databases)."""
    with _factories_lock:
        for (pid, _), factory in list(_factories.items()):
            if pid == os.getpid() and factory.kw.get("bind") is not None:
                factory.kw["bind"].dispose()
        _factories.clear()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back on an exception."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(session: Session) -> None:
    """One round trip to the database (`SELECT 1`), then the transaction it opened is ended; raises what
    the driver raised when the database does not answer."""
    session.execute(text("SELECT 1"))
    session.rollback()
