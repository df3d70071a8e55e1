"""The Celery app, client side: configuration as data, built lazily, and `publish_job`.

The API (and the reconciler) reach the broker only through `publish_job` (or `publish_jobs`, a batch over
one producer), which sends the task `bpbench.run_job` *by name* with the job's id as its only argument and
as its task id: the committed job row is the source of truth, the message only says "look at job X". The
task itself is registered by `workers.tasks`.

Importing this module reads no settings and no environment: the app is built on first use
(`get_celery_app()`, from `get_settings()`), or by `configure(settings)` for other settings. Other settings
get a new app with pools of its own; the previous one is closed through Celery's public `close()`, so no
process-global connection pool is reset behind Celery's back.

Delivery is at-least-once (`acks_late`, reject on worker lost); a second delivery of the same id is a
no-op because the worker's claim is a conditional `queued -> running` update.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu import Queue

from engine.spec import DEVICE_CLASSES
from services.core.config import Settings, get_settings, hard_time_limit_s

if TYPE_CHECKING:
    from services.jobs.spec import JobSpec

RUN_JOB_TASK = "bpbench.run_job"
TICK_TASK = "bpbench.tick"
# Every worker consumes this queue besides its device's: the minute tick runs on whichever worker is free,
# on a GPU-only fleet too.
CONTROL_QUEUE = "bpbench.control"
# The class queues: `cpu`, `gpu`, then one per backend's own word (`cuda`, `rocm`, `xla`, ...), from the
# engine's registry; a job spelled `xla:cpu:0` waits on `xla`, which only XLA workers serve.
CLASS_QUEUES: tuple[str, ...] = DEVICE_CLASSES
DEVICE_QUEUE_PREFIX = "device."


def device_queue(device_id: str) -> str:
    """The queue of jobs aimed at exactly one device."""
    return f"{DEVICE_QUEUE_PREFIX}{device_id}"


def queue_for(spec: JobSpec, target_device_id: str | None = None) -> str:
    """Where a job goes: `device.<id>` when aimed at one device, else its class queue (`cpu`, `gpu`, or
    its backend's own: `xla`)."""
    if target_device_id:
        return device_queue(target_device_id)
    return spec.device_class


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings (plain data, as in Celery's `proj/celery.py`)."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Redis redelivers unacknowledged messages after the visibility timeout: keep it above any job's limit
        # so a long job is not run twice.
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            # Not `retry_on_timeout`: with it kombu will not pipeline a batch of publishes (a replayed
            # pipeline may duplicate messages); a timed-out command fails, and the publisher's retry policy,
            # the worker's reconnect and the reconciler take over.
            "health_check_interval": 25,
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Results live in the database; Celery keeps none.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # A running job's message stays unacknowledged until it ends; on a broker reconnect the job goes on
        # and any redelivery finds the row `running` and does nothing (the reconciler handles dead workers).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_queues": [Queue(name, routing_key=name) for name in CLASS_QUEUES],
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
        "task_track_started": False,
        # Task events (the worker's `-E`) so that Flower and `celery events` show each job received, started,
        # and succeeded or failed. Not `task-sent` from publishers: it is a second publish per submitted job
        # (it halved the submission rate, measured), and the job row already says a job is queued.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "timezone": "UTC",
        "enable_utc": True,
        # `bpbench beat` sends the tick (due schedules, alerts); a tick no worker took within its period is
        # dropped, so ticks do not pile up while no worker runs.
        "beat_schedule": {
            "bpbench-tick": {
                "task": TICK_TASK,
                "schedule": settings.tick_interval_s,
                "options": {"queue": CONTROL_QUEUE, "expires": settings.tick_interval_s},
            }
        },
        "beat_schedule_filename": str(Path(settings.data_dir) / "celerybeat-schedule"),
    }


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app configured from the settings (the worker and the client use the same configuration)."""
    app = Celery("bpbench")
    app.conf.update(celery_config(settings or get_settings()))
    return app


_app: Celery | None = None
_app_config: dict[str, Any] | None = None
_app_lock = threading.Lock()


def get_celery_app() -> Celery:
    """This process's Celery app: the one `configure` built, else one built now from `get_settings()`."""
    with _app_lock:
        if _app is not None:
            return _app
    return configure(get_settings())


def configure(settings: Settings) -> Celery:
    """Use these settings from now on (tests, `bpbench up` with another data dir); returns the app.

    The same configuration keeps the app (and its open connections); another one gets a new app, and the
    previous app is closed (its connection and producer pools released) once nothing can take it any more.
    """
    global _app, _app_config
    config = celery_config(settings)
    with _app_lock:
        if _app is not None and config == _app_config:
            return _app
        previous, _app, _app_config = _app, make_celery(settings), config
        app = _app
    if previous is not None:
        previous.close()
    return app


def _send_options(queue: str, time_limit_s: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"queue": queue, "routing_key": queue}
    if time_limit_s:
        # Hard limit (prefork pool) a little above the limit the worker itself enforces between steps.
        options["time_limit"] = hard_time_limit_s(time_limit_s)
    return options


def publish_job(job_id: str, queue: str, *, time_limit_s: float | None = None) -> None:
    """Send `bpbench.run_job(job_id)` to `queue`; the job row must already be committed.

    The task id is the job id: `celery inspect query_task <job id>` and Flower find a job by its own id, and
    every delivery of one job (a duplicate, a republication) carries the same id.
    """
    get_celery_app().send_task(
        RUN_JOB_TASK, args=[job_id], task_id=job_id, **_send_options(queue, time_limit_s)
    )


def publish_jobs(jobs: Sequence[tuple[str, str, float | None]]) -> tuple[int, Exception | None]:
    """Send `bpbench.run_job` for each `(job_id, queue, time_limit_s)`, in order, over one producer.

    The messages are Celery's own (`send_task`, as `publish_job` sends them). One producer serves the whole
    batch, each queue is declared once per batch instead of once per message, and on Redis kombu's publish
    batch (`Producer.batch`) sends all the messages in one pipeline instead of one client and one round
    trip each (other transports publish each message at once). Returns how many messages surely reached
    the broker and the error that stopped the rest; the rows must already be committed. Publishing stops at
    the first failure (the broker is most likely down); a failed pipeline counts as none sent, though some
    may have arrived (a second message for a job is harmless: the worker's claim is conditional).
    """
    sent = 0
    app = get_celery_app()
    batched = False
    try:
        with app.producer_or_acquire() as producer:
            batched = producer.supports_batch_publish
            with producer.batch():
                declared: set[str] = set()
                for job_id, queue, time_limit_s in jobs:
                    if queue not in declared:
                        # What `send_task` declares for each message, once (kombu caches it per connection).
                        producer.maybe_declare(app.amqp.queues[queue], retry=True)
                        declared.add(queue)
                    app.send_task(
                        RUN_JOB_TASK,
                        args=[job_id],
                        task_id=job_id,
                        producer=producer,
                        declare=[],
                        **_send_options(queue, time_limit_s),
                    )
                    sent += 1
    except Exception as exc:  # kombu/redis/amqp raise many kinds; the caller logs it
        return (0 if batched else sent), exc
    return sent, None


def __getattr__(name: str) -> Any:
    # `celery -A services.core.queue[:celery_app] ...` (Flower, inspect) asks for the app by attribute (`app`
    # when none is named): it is built on that first use, like every other use, never at import.
    if name in ("app", "celery_app"):
        return get_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
