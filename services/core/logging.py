"""Logging for every bpbench process: one setup, text for people or JSON lines for machines.

`configure_logging("json")` (what `--log-format json` selects) writes one JSON object per line with
`time`, `level`, `logger`, `message` and, on every line logged while a job runs, `job_id`, `worker` and
`device`. Those three come from `job_context(...)`, a context manager the worker wraps around each job: a
`contextvars` variable read by a logging filter, so every logger (ours, the engine's, Celery's) gets them
without being passed anything. In text format the same fields are appended as
`[job=... worker=... device=...]`.

No secret reaches a log line: `RedactSecretsFilter` (on our handler, and on uvicorn's loggers through
`install_redaction()`) replaces bearer tokens, `token=` query values, `bpb_...` tokens and URL passwords
with `***` in every record's message and arguments, whoever logged it (uvicorn's access log prints the
query string, so `/?token=...` would otherwise be written as is).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = ("text", "json")
JOB_FIELDS: tuple[str, ...] = ("job_id", "worker", "device")

_job: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("bpbench_job", default=None)


@contextlib.contextmanager
def job_context(job_id: str, worker: str, device: str) -> Iterator[None]:
    """Tag every log line written inside the block with this job's id, worker and device."""
    token = _job.set({"job_id": job_id, "worker": worker, "device": device})
    try:
        yield
    finally:
        _job.reset(token)


def current_job_fields() -> dict[str, str]:
    """The job fields of the current context (empty outside `job_context`)."""
    return dict(_job.get() or {})


class JobContextFilter(logging.Filter):
    """Copy the current job's id, worker and device onto each record (None outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job.get() or {}
        for name in JOB_FIELDS:
            if not hasattr(record, name) or getattr(record, name) is None:
                setattr(record, name, fields.get(name))
        return True


REDACTED = "***"
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `?token=...`, `&api_token=...`, `password=...` in query strings and key=value text.
    # A %-placeholder (`token=%s` in a format string) is not a value: its argument is redacted on its own.
    (
        re.compile(
            r"(?i)\b((?:api_|access_)?token|password|passwd|secret)="
            r"(?!%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdirfgxXeEc])[^&\s\"',;]+"
        ),
        rf"\1={REDACTED}",
    ),
    # `Authorization: Bearer ...`, and any other bearer value.
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    # bpbench's own tokens, wherever they appear.
    (re.compile(r"\bbpb_[A-Za-z0-9_\-]{4,}"), f"bpb_{REDACTED}"),
    # `scheme://user:password@host`.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
)


# What every pattern above needs somewhere in the text: one scan rules out most lines (an access log line
# per request) instead of one scan per pattern.
_MAY_HOLD_SECRET = re.compile(r"(?i)=|bearer|bpb_|://")


def redact_secrets(text: str) -> str:
    """`text` with tokens, `token=` values and URL passwords replaced by `***`."""
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    return redact_secrets(value) if isinstance(value, str) else value


class RedactSecretsFilter(logging.Filter):
    """Redact secrets in a record's message and arguments (kept as arguments: formatters may unpack them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A record passes this filter on its logger and again on the handler it propagates to: redact once
        # (an access-log line per request made this 3% of the API's CPU).
        if getattr(record, "_bpbench_redacted", False):
            return True
        record._bpbench_redacted = True
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_value(arg) for key, arg in record.args.items()}
        return True


def _add_redaction(filterer: logging.Filterer) -> None:
    if not any(isinstance(f, RedactSecretsFilter) for f in filterer.filters):
        filterer.addFilter(RedactSecretsFilter())


def install_redaction() -> None:
    """Redact secrets in uvicorn's loggers and in every handler present now (idempotent).

    Uvicorn logs its access lines on `uvicorn.access` itself, so a filter on that logger covers them
    whichever handlers uvicorn or we configured; the handlers cover records propagated from other loggers.
    """
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        _add_redaction(logger)
        for handler in logger.handlers:
            _add_redaction(handler)
    for handler in logging.getLogger().handlers:
        _add_redaction(handler)
    if logging.lastResort is not None:
        _add_redaction(logging.lastResort)


class TextFormatter(logging.Formatter):
    """`2026-11-26 21:40:01,123 INFO services.jobs.runner: message [job=... worker=... device=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The message was redacted by the filter; a traceback is only known here.
        text = redact_secrets(super().format(record)) if record.exc_info else super().format(record)
        tags = [f"{key}={getattr(record, name)}" for key, name in _TAGS if getattr(record, name, None)]
        return f"{text} [{' '.join(tags)}]" if tags else text


_TAGS = (("job", "job_id"), ("worker", "worker"), ("device", "device"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, job fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = redact_secrets(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def make_handler(log_format: LogFormat = "text") -> logging.Handler:
    """A stderr handler with the job filter and the formatter of `log_format`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.addFilter(RedactSecretsFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: LogFormat = "text", level: str | int = "INFO") -> None:
    """Make the root logger write `log_format` to stderr (replacing its handlers); others propagate to it."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Python warnings (Celery's "running as root", deprecations) become log lines in the same format.
    logging.captureWarnings(True)
    # Uvicorn's and Celery's own loggers go through the root handler, so every line has one format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
