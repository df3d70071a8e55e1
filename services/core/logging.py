"""Logging for every bpbench process: one setup, text for people or JSON lines for machines.

`configure_logging("json")` (what `--log-format json` selects) writes one JSON object per line with
`time`, `level`, `logger`, `message` and, on every line logged while a job runs, `job_id`, `worker` and
`device`. Those three come from `job_context(...)`, a context manager the worker wraps around each job: a
`contextvars` variable read by a logging filter, so every logger (ours, the engine's, Celery's) gets them
without being passed anything. In text format the same fields are appended as
`[job=... worker=... device=...]`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
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


class TextFormatter(logging.Formatter):
    """`2026-11-26 21:40:01,123 INFO workers.tasks: message [job=... worker=... device=...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
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
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def make_handler(log_format: LogFormat = "text") -> logging.Handler:
    """A stderr handler with the job filter and the formatter of `log_format`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: LogFormat = "text", level: str | int = "INFO") -> None:
    """Make the root logger write `log_format` to stderr (replacing its handlers); others propagate to it."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(make_handler(log_format))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Uvicorn's and Celery's own loggers go through the root handler, so every line has one format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
