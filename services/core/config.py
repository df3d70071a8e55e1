"""The one settings object of bpbench (pydantic-settings, environment prefix `BPBENCH_`).

Every process (API, worker, reconciler, CLI client, `bpbench up`) reads its configuration here, so a
variable means the same thing everywhere. URLs are accepted as people write them and normalised once:
`postgresql://user@host/db` gets the project's driver (psycopg 3), `sqlite:///path` is used as written,
and the default broker is the embedded Redis-compatible server on a unix socket in the data directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DATABASE_FILE = "bpbench.db"
BROKER_SOCKET = "broker.sock"
API_TOKEN_FILE = "api-token"
DEFAULT_API_TOKEN_NAME = "BPBENCH_API_TOKEN"
MAX_TOKEN_NAME_CHARS = 100  # the width of `api_tokens.name`

# A job's time limit is enforced in three layers, each a margin behind the one before, so the gentlest one
# acts first: the worker stops the job between steps at its limit; Celery's hard limit kills a pool child
# stuck inside a step HARD_LIMIT_MARGIN_S later; the reconciler fails a job still beating OVERDUE_GRACE_S
# past its limit (a solo-pool GPU worker has no hard limit); and Redis redelivers an unacknowledged message
# only VISIBILITY_MARGIN_S past the longest limit a job may have, so a long job is never run twice.
HARD_LIMIT_MARGIN_S = 60.0
OVERDUE_GRACE_S = 2 * HARD_LIMIT_MARGIN_S
VISIBILITY_MARGIN_S = 3600.0


def hard_time_limit_s(time_limit_s: float) -> float:
    """Celery's hard limit for a job of this time limit (the prefork pool kills the child past it)."""
    return time_limit_s + HARD_LIMIT_MARGIN_S


_POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
_BROKER_SCHEMES = (
    "redis://",
    "rediss://",
    "redis+socket://",
    "amqp://",
    "amqps://",
    "pyamqp://",
    "memory://",
)


def normalize_database_url(url: str) -> str:
    """The SQLAlchemy URL for a database URL as a person writes it.

    `postgresql://`, `postgres://` (Heroku style) and `postgresql+psycopg2://` become
    `postgresql+psycopg://` (psycopg 3 is the driver this project installs); `sqlite:///path` and any URL
    that already names a driver are returned unchanged.
    """
    url = url.strip()
    for prefix in _POSTGRES_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith(("sqlite:", "postgresql+")):
        return url
    raise ValueError(
        f"BPBENCH_DATABASE_URL must be a postgresql:// or sqlite:/// URL, got {redact_url(url)!r}"
    )


def normalize_broker_url(url: str) -> str:
    """The broker URL checked: `redis://`, `rediss://`, `redis+socket://` and `amqp://` are accepted."""
    url = url.strip()
    if not url.startswith(_BROKER_SCHEMES):
        accepted = ", ".join(_BROKER_SCHEMES)
        raise ValueError(f"BPBENCH_BROKER_URL must start with one of {accepted}; got {redact_url(url)!r}")
    return url


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


class Settings(BaseSettings):
    """bpbench configuration; each field is read from `BPBENCH_<FIELD>` (case-insensitive) or `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="BPBENCH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A refused URL or token must not be echoed back with its password in the error.
        hide_input_in_errors=True,
    )

    data_dir: Path = Field(
        default=Path("./bpbench-data"), description="SQLite file, broker socket, API token file"
    )
    database_url: str = Field(default="", description="default: sqlite:///<data_dir>/bpbench.db")
    broker_url: str = Field(
        default="", description="default: the embedded broker, redis+socket://<data_dir>/broker.sock"
    )

    api_url: str = "http://127.0.0.1:8000"
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="processes `bpbench api` serves with (uvicorn --workers); 0: one per CPU, at most 8",
    )
    # Never printed: excluded from repr so a logged Settings shows no secret.
    api_token: str | None = Field(default=None, repr=False)
    api_token_name: str = Field(
        default=DEFAULT_API_TOKEN_NAME,
        min_length=1,
        max_length=MAX_TOKEN_NAME_CHARS,
        description="the name BPBENCH_API_TOKEN is stored under (token lists, the dashboard's `signed in "
        "as`); `bpbench up` names the token it made after the file it keeps it in",
    )
    public_read: bool = False
    # --- request limits and CORS: what a client may send, and from which origins ---
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=64 * 1024**2,
        description="largest request body the API reads; a bigger one is refused with 413",
    )
    rate_limit_per_s: float = Field(
        default=50.0,
        ge=0,
        description="requests per second per token (per client address without one); 0 turns it off",
    )
    rate_limit_burst: int = Field(
        default=200, ge=1, le=1_000_000, description="requests a token may send at once before 429s"
    )
    tick_interval_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="how often `bpbench beat` sends the tick that runs due schedules and sends alerts",
    )
    alert_webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated webhook URLs that get a JSON message (Slack-compatible `text`) about "
        "each regression, change point and scheduled device gone quiet; empty (the default): no alerts",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated origins allowed by CORS; empty (the default): no CORS at all",
    )
    # Comma-separated, as people write it; each directory absolute, so every process checks the same path.
    dataset_dirs: Annotated[
        list[Path],
        NoDecode,
        BeforeValidator(
            lambda value: (
                [Path(p.strip()).expanduser().absolute() for p in value.split(",") if p.strip()]
                if isinstance(value, str)
                else value
            )
        ),
    ] = Field(
        default_factory=list,
        description="comma-separated directories a job's `dataset_path` may name (a path inside one of "
        "them); empty (the default): the API refuses every `dataset_path` (`bpbench run` reads any "
        "path locally)",
    )
    submit_batch_max: int = Field(
        default=256,
        ge=1,
        le=1000,
        description="most jobs one group commit of POST /api/v1/jobs writes at once; 1: one commit per job",
    )
    # A request with a token seen within this time needs no SELECT; a revocation waits this long.
    token_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="seconds an API process remembers a valid token; a revoked token is refused within "
        "this time; 0: every request looks its token up",
    )

    # A dead worker's job runs again within heartbeat-free time + one reconcile tick:
    # worker_dead_after_s + reconcile_interval_s = 15 + 5 = 20 s (< 30 s), plus the pick-up by an idle worker.
    heartbeat_interval_s: float = Field(
        default=3.0,
        gt=0,
        le=300,
        description="how often a worker (and each running job) writes its heartbeat",
    )
    worker_dead_after_s: float = Field(
        default=15.0,
        gt=0,
        description="a worker or running job with no heartbeat for this long is dead; its job is requeued",
    )
    reconcile_interval_s: float = Field(
        default=5.0, gt=0, description="how often the reconciler looks for lost jobs"
    )
    queued_republish_after_s: float = Field(
        default=60.0,
        gt=0,
        description="a job published this long ago and still queued, on a queue nobody took a job from "
        "in that time, is published again by the reconciler",
    )
    reconcile_batch: int = Field(
        default=500, ge=1, le=100_000, description="most jobs the reconciler handles per kind per tick"
    )
    max_job_memory_bytes: int = Field(
        default=32 * 1024**3,
        ge=1024**2,
        description="server cap on a job's estimated memory; a bigger job is refused at submission (422)",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="runs of one job before it is marked failed"
    )
    max_job_time_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        le=7 * 24 * 3600,
        description="server cap on a job's run time (spec time_limit_s is capped)",
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, description="least time between two progress writes of a job"
    )
    cancel_poll_interval_s: float = Field(
        default=0.25, gt=0, description="least time between two cancellation checks"
    )
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)

    @field_validator("database_url")
    @classmethod
    def _database_url_known(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_known(cls, value: str) -> str:
        return normalize_broker_url(value) if value else value

    @field_validator("alert_webhook_urls", mode="before")
    @classmethod
    def _webhooks_split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("alert_webhook_urls")
    @classmethod
    def _webhooks_are_http(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"BPBENCH_ALERT_WEBHOOK_URLS: {redact_url(url)!r} is not an http(s) URL")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins_split(cls, value: Any) -> Any:
        # `BPBENCH_CORS_ORIGINS=https://a.example,https://b.example`, as people write it.
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _defaults_in_data_dir(self) -> Settings:
        # Defaults depend on data_dir, so they are filled in after it is known (as an absolute path,
        # so a worker started from another directory finds the same files).
        self.data_dir = self.data_dir.expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / DATABASE_FILE}"
        if not self.broker_url:
            self.broker_url = f"redis+socket://{self.data_dir / BROKER_SOCKET}"
        return self

    @property
    def broker_socket_path(self) -> Path | None:
        """The unix socket of a `redis+socket://` broker (the embedded one by default), else None."""
        if self.broker_url.startswith("redis+socket://"):
            return Path(self.broker_url[len("redis+socket://") :].split("?", 1)[0])
        return None

    @property
    def uses_embedded_broker(self) -> bool:
        """True when the broker is the default embedded server in the data directory."""
        return self.broker_socket_path == self.data_dir / BROKER_SOCKET

    @property
    def api_token_file(self) -> Path:
        """Where `bpbench up` writes its first token and where the CLI looks for one."""
        return self.data_dir / API_TOKEN_FILE

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Redis redelivers an unacknowledged message after this long: kept above any job's time limit."""
        return int(self.max_job_time_s + VISIBILITY_MARGIN_S)

    def overdue_after_s(self, time_limit_s: float) -> float:
        """Run time past which the reconciler fails a job of this limit even while its heartbeat beats."""
        return time_limit_s + OVERDUE_GRACE_S

    def job_time_limit_s(self, requested: float | None) -> float:
        """A job's time limit: the spec's `time_limit_s` capped by the server's `max_job_time_s`."""
        return min(requested, self.max_job_time_s) if requested else self.max_job_time_s

    def safe_dict(self) -> dict[str, Any]:
        """The settings for display, with passwords and the token left out."""
        doc = self.model_dump(mode="json", exclude={"api_token"})
        doc["database_url"] = redact_url(self.database_url)
        doc["broker_url"] = redact_url(self.broker_url)
        doc["api_token"] = "set" if self.api_token else None
        return doc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment (call `get_settings.cache_clear()` in tests)."""
    return Settings()
