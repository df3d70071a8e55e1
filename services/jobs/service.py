"""Job life cycle: create, publish, claim, progress, heartbeat, complete, fail, cancel, requeue; queries.

This module is the only writer of `jobs` rows: the worker's runner, the reconciler, the recovery of
`bpbench up` and the API call these functions (docs/design.md draws the state machine they implement).

Every state change is one conditional UPDATE (`... WHERE status = <expected>`), so two processes racing on
the same job (a duplicate delivery, a cancel during a run, a reconciler requeue) cannot both win: the loser
sees zero rows changed and does nothing. A worker's writes are further fenced by its attempt number, so a
worker whose job was taken away and re-run elsewhere cannot overwrite the newer attempt.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from services.core.config import get_settings
from services.core.db import utcnow
from services.core.queue import publish_job, publish_jobs, queue_for
from services.jobs.models import ACTIVE_STATUSES, FINAL_STATUSES, JOB_STATUSES, Job, new_job_id
from services.jobs.spec import JobSpec, spec_hash_of
from services.results.models import Result, Trial
from services.results.service import build_result, record_spec_device_stats

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
MAX_PROGRESS_MESSAGE_CHARS = 200


class JobNotFound(LookupError):
    """No job has this id."""


@dataclass(frozen=True)
class Claim:
    """What a worker holds after a claim: the job's spec and the attempt number that fences its writes."""

    job_id: str
    attempt: int
    spec: dict[str, Any]
    time_limit_s: float | None


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _single_statement(session: Session) -> None:
    """Run the caller's one statement in autocommit: one round trip instead of BEGIN, statement, COMMIT.

    A single UPDATE is atomic on its own; a transaction the caller already began is left as it is.
    """
    if not session.in_transaction():
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def job_row(
    spec: JobSpec, *, target_device_id: str | None = None, engine_doc: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The column values of a new `queued` job for `spec`, id and timestamps included (nothing is written);
    `engine_doc`: the spec's `engine_dict()`, for a caller that has it already."""
    now = utcnow()
    engine_doc = engine_doc if engine_doc is not None else spec.engine_dict()
    return {
        "id": new_job_id(),
        "spec": engine_doc,
        "spec_hash": spec_hash_of(engine_doc),
        "kind": spec.kind,
        "device": spec.device,
        "device_class": spec.device_class,
        "target_device_id": target_device_id,
        "queue": queue_for(spec, target_device_id),
        "status": "queued",
        "progress": 0.0,
        "progress_message": None,
        "attempts": 0,
        "cancel_requested": False,
        "time_limit_s": get_settings().job_time_limit_s(spec.time_limit_s),
        "created_at": now,
        "published_at": None,
        "updated_at": now,
    }


def create_job(session: Session, spec: JobSpec, *, target_device_id: str | None = None) -> Job:
    """Add a `queued` job for `spec` (flushed, not committed); publish it only after the commit."""
    job = Job(**job_row(spec, target_device_id=target_device_id))
    session.add(job)
    session.flush()
    return job


def publish(session: Session, job: Job) -> None:
    """Send the job's id to its queue and record when (the row must already be committed)."""
    publish_job(job.id, job.queue, time_limit_s=job.time_limit_s)
    now = utcnow()
    session.execute(update(Job).where(Job.id == job.id).values(published_at=now, updated_at=now))
    session.commit()
    # The object now says what the row says, without reading it back (one round trip less per submission).
    set_committed_value(job, "published_at", now)
    set_committed_value(job, "updated_at", now)


def submit_job(session: Session, spec: JobSpec, *, target_device_id: str | None = None) -> Job:
    """Create the job, commit it, then publish it: the committed row comes first, so no message is orphaned.

    If the broker is unreachable the job stays `queued` with `published_at` unset and the error is logged;
    it is not lost (the reconciler publishes queued jobs that were never picked up).
    """
    job = create_job(session, spec, target_device_id=target_device_id)
    session.commit()
    try:
        publish(session, job)
    except Exception as exc:  # the job row is the outbox; a failed publish is retried later
        session.rollback()
        log.warning("job %s is queued but could not be published to %s yet: %s", job.id, job.queue, exc)
    return job


@dataclass(frozen=True)
class SubmittedBatch:
    """What `submit_job_rows` did: every row is committed; the first `published` were published at
    `published_at` (the rest stay queued with `published_at` unset, for the reconciler)."""

    published: int
    published_at: datetime | None


def _autocommit(session: Session) -> Connection:
    if session.in_transaction():
        raise ValueError("group commit runs each statement on its own: pass a session with no transaction")
    # One round trip per statement instead of BEGIN, statement, COMMIT.
    return session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


# Core statements on the table: the ORM's bulk bookkeeping cost more than the SQL itself.
_JOBS = cast(Table, Job.__table__)


def insert_job_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Group commit of `job_row`s: one multi-row INSERT, committed on its own (autocommit), so `session`
    must not have begun a transaction. It is one statement (SQLAlchemy's insertmanyvalues: `INSERT ...
    VALUES (...), (...) RETURNING id`), so it stores every row or none; its error is raised."""
    if not rows:
        return
    _insert_rows(_autocommit(session), rows)
    with contextlib.suppress(SQLAlchemyError):
        session.commit()  # nothing left to commit: ends the session's use of the connection


def submit_job_rows(session: Session, rows: Sequence[dict[str, Any]]) -> SubmittedBatch:
    """Group commit of `job_row`s as `insert_job_rows` stores them, then their messages over one producer and
    `published_at` of those sent in one UPDATE, all over one connection (one pool checkout, one pre-ping):
    what `services/api/group_commit.py` runs for each batch (`session` must not have begun a transaction).
    Raises only what the INSERT raised (then nothing of the batch is stored). A broker failure leaves the
    unsent jobs queued and unpublished, and a failed UPDATE leaves sent jobs with `published_at` unset; the
    reconciler publishes both later (a second message for a job is harmless: the claim is conditional)."""
    if not rows:
        return SubmittedBatch(published=0, published_at=None)
    connection = _autocommit(session)
    try:
        _insert_rows(connection, rows)
        return _publish_rows(connection, rows)
    finally:
        with contextlib.suppress(SQLAlchemyError):
            session.commit()  # nothing left to commit: gives the connection back to the pool


def _insert_rows(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    stored = connection.execute(insert(_JOBS).returning(_JOBS.c.id), list(rows)).all()
    if len(stored) != len(rows):  # never seen: the statement is all or nothing
        raise RuntimeError(f"{len(stored)} of {len(rows)} job rows stored")


def _publish_rows(connection: Connection, rows: Sequence[dict[str, Any]]) -> SubmittedBatch:
    sent, error = publish_jobs([(row["id"], row["queue"], row["time_limit_s"]) for row in rows])
    if error is not None:
        log.warning("%d job(s) are queued but could not be published yet: %s", len(rows) - sent, error)
    if sent == 0:
        return SubmittedBatch(published=0, published_at=None)
    now = utcnow()
    try:
        connection.execute(
            update(_JOBS)
            .where(_JOBS.c.id.in_([row["id"] for row in rows[:sent]]))
            .values(published_at=now, updated_at=now)
        )
    except SQLAlchemyError as exc:
        log.warning("%d job(s) were published but their published_at was not recorded: %s", sent, exc)
        return SubmittedBatch(published=0, published_at=None)
    return SubmittedBatch(published=sent, published_at=now)


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with this id, or None."""
    return session.get(Job, job_id)


def specs_by_job_id(session: Session, job_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The specs of the jobs among `job_ids`, by job id (one query; unknown ids are left out)."""
    if not job_ids:
        return {}
    return dict(session.execute(select(Job.id, Job.spec).where(Job.id.in_(list(job_ids)))).tuples().all())


def require_job(session: Session, job_id: str) -> Job:
    """The job with this id; `JobNotFound` if there is none."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def list_jobs(
    session: Session,
    *,
    status: str | Sequence[str] | None = None,
    kind: str | None = None,
    device: str | None = None,
    id_prefix: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Job]:
    """Jobs, newest first; `device` matches the requested device, its class, or the device that ran it;
    `id_prefix` the start of the job's id (the short ids the CLI and the dashboard print)."""
    query = _filtered(select(Job), status=status, kind=kind, device=device, id_prefix=id_prefix)
    query = query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def count_jobs(
    session: Session,
    *,
    status: str | Sequence[str] | None = None,
    kind: str | None = None,
    device: str | None = None,
    id_prefix: str | None = None,
    cap: int | None = None,
) -> int:
    """How many jobs `list_jobs` would page through with these filters; with `cap`, at most `cap` + 1.

    A capped count reads at most `cap` + 1 index entries, so it costs the same with a thousand jobs as with
    a million (an exact COUNT(*) over a million succeeded jobs reads them all); `cap` + 1 means "more".
    """

    def filtered(query: Any) -> Any:
        return _filtered(query, status=status, kind=kind, device=device, id_prefix=id_prefix)

    if cap is None:
        return int(session.scalar(filtered(select(func.count()).select_from(Job))) or 0)
    ids = filtered(select(Job.id)).limit(cap + 1)
    return int(session.scalar(select(func.count()).select_from(ids.subquery())) or 0)


def queued_job_counts(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Queued jobs per exact target device id, and per device class for the jobs without a target."""
    queued = select(Job.target_device_id, Job.device_class, func.count()).where(Job.status == "queued")
    targeted: dict[str, int] = {}
    by_class: dict[str, int] = {}
    for target, device_class, count in session.execute(
        queued.group_by(Job.target_device_id, Job.device_class)
    ):
        if target is None:
            by_class[device_class] = by_class.get(device_class, 0) + count
        else:
            targeted[target] = targeted.get(target, 0) + count
    return targeted, by_class


def _filtered(
    query: Any,
    *,
    status: str | Sequence[str] | None,
    kind: str | None,
    device: str | None,
    id_prefix: str | None = None,
) -> Any:
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        unknown = sorted(set(statuses) - set(JOB_STATUSES))
        if unknown:
            raise ValueError(f"unknown job status {unknown[0]!r}; accepted: {', '.join(JOB_STATUSES)}")
        query = query.where(Job.status.in_(statuses))
    if kind is not None:
        query = query.where(Job.kind == kind)
    if device is not None:
        query = query.where(
            (Job.device == device)
            | (Job.device_class == device)
            | (Job.device_id == device)
            | (Job.target_device_id == device)
        )
    if id_prefix is not None:
        query = query.where(Job.id.startswith(id_prefix, autoescape=True))
    return query


def claim_job(session: Session, job_id: str, *, worker_name: str, device_id: str) -> Claim | None:
    """Move the job `queued` -> `running` for this worker, in one conditional UPDATE, and commit.

    Returns None (and changes nothing) when the job is not queued: already running elsewhere, finished,
    cancelled, or unknown. That is what makes a duplicate delivery harmless.
    """
    now = utcnow()
    _single_statement(session)
    # RETURNING (PostgreSQL, SQLite >= 3.35) hands back what the worker needs: no second round trip.
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker_name=worker_name,
            device_id=device_id,
            started_at=now,
            heartbeat_at=now,
            updated_at=now,
            progress=0.0,
            progress_message="started",
            error=None,
        )
        .returning(Job.attempts, Job.spec, Job.time_limit_s)
    ).one_or_none()
    if claimed is None:
        session.rollback()
        return None
    session.commit()
    attempt, spec, time_limit_s = claimed
    return Claim(job_id=job_id, attempt=int(attempt), spec=dict(spec), time_limit_s=time_limit_s)


def _running_attempt(job_id: str, attempt: int | None) -> Any:
    condition = (Job.id == job_id) & (Job.status == "running")
    if attempt is not None:
        condition = condition & (Job.attempts == attempt)
    return condition


def update_progress(
    session: Session, job_id: str, progress: float, message: str | None = None, *, attempt: int | None = None
) -> bool:
    """Record a running job's progress (clamped to 0..1); False if the job is no longer this attempt's."""
    values: dict[str, Any] = {"progress": min(max(float(progress), 0.0), 1.0), "updated_at": utcnow()}
    if message is not None:
        values["progress_message"] = message[:MAX_PROGRESS_MESSAGE_CHARS]
    _single_statement(session)
    result = session.execute(update(Job).where(_running_attempt(job_id, attempt)).values(**values))
    session.commit()
    return _rowcount(result) == 1


def should_stop(session: Session, job_id: str, *, attempt: int | None = None) -> bool:
    """True when the job was asked to stop: cancel requested, or no longer this attempt's to run."""
    _single_statement(session)
    row = session.execute(
        select(Job.status, Job.cancel_requested, Job.attempts).where(Job.id == job_id)
    ).one_or_none()
    session.rollback()  # end the read transaction, so the next check sees fresh data
    if row is None:
        return True
    status, cancel_requested, attempts = row
    return bool(cancel_requested) or status != "running" or (attempt is not None and attempts != attempt)


def complete_job(
    session: Session, job_id: str, document: dict[str, Any], *, attempt: int | None = None
) -> Result | None:
    """Write the result and its trials, count it in `spec_device_stats` and mark the job `succeeded`, all in
    one transaction.

    Idempotent: returns None and writes nothing if the job is not running under this attempt or already
    has a result (the unique `results.job_id` constraint decides a race).
    """
    now = utcnow()
    # The UPDATE hands back the row the result is built from (one round trip, not a SELECT first), fresh
    # from the database even when this session holds a copy (populate_existing): the result takes its device
    # from the row.
    job = session.scalars(
        update(Job)
        .where(_running_attempt(job_id, attempt))
        .values(
            status="succeeded",
            progress=1.0,
            progress_message="done",
            finished_at=now,
            updated_at=now,
            error=None,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()
    if job is None:
        exists = session.scalar(select(Job.id).where(Job.id == job_id)) is not None
        session.rollback()
        if not exists:
            raise JobNotFound(f"no job with id {job_id!r}")
        log.info("job %s was not running as attempt %s; result not written", job_id, attempt)
        return None
    record = build_result(job, document)
    # The trials go in as one multi-row INSERT (Core), not as ORM objects: the unit of work's bookkeeping
    # for tens of rows cost more than the statement itself.
    trials = [
        {"series": t.series, "index": t.index, "value": t.value, "samples_per_s": t.samples_per_s}
        for t in record.trials
    ]
    record.trials = []
    session.add(record)
    try:
        session.flush()
        if trials:
            session.execute(insert(Trial), [{**row, "result_id": record.id} for row in trials])
        record_spec_device_stats(session, record)  # compare's per-spec counts, in the same transaction
        session.commit()
    except IntegrityError:
        session.rollback()
        log.info("job %s already has a result; this one is dropped", job_id)
        return None
    session.expire(record, ["trials"])  # loaded from the database if asked for
    return record


def fail_job(session: Session, job_id: str, error: str, *, attempt: int | None = None) -> bool:
    """Mark the job `failed` with a readable message; False if it was not running under this attempt.

    With `attempt=None` a queued job can be failed too (a reconciler giving up, a spec refused late).
    """
    now = utcnow()
    condition = (
        _running_attempt(job_id, attempt)
        if attempt is not None
        else ((Job.id == job_id) & Job.status.in_(ACTIVE_STATUSES))
    )
    _single_statement(session)
    result = session.execute(
        update(Job)
        .where(condition)
        .values(status="failed", error=error[:MAX_ERROR_CHARS], finished_at=now, updated_at=now)
    )
    session.commit()
    return _rowcount(result) == 1


def fail_lost_attempt(
    session: Session, job_id: str, error: str, *, worker_name: str, started_after: datetime
) -> bool:
    """Mark `failed` the running attempt that worker `worker_name` started at or after `started_after`,
    whose process the worker saw die (killed for memory); False if the job is not that attempt any more.

    For the worker's main process, which knows the delivery but not the attempt number its pool process
    claimed: the worker's name (one live process holds it) and the start of the delivery fence it instead.
    """
    now = utcnow()
    _single_statement(session)
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "running",
            Job.worker_name == worker_name,
            Job.started_at >= started_after,
        )
        .values(status="failed", error=error[:MAX_ERROR_CHARS], finished_at=now, updated_at=now)
    )
    session.commit()
    return _rowcount(result) == 1


def mark_cancelled(
    session: Session, job_id: str, *, attempt: int | None = None, message: str = "cancelled"
) -> bool:
    """Mark a running job `cancelled` once its worker has stopped it; False if it was not this attempt's."""
    now = utcnow()
    _single_statement(session)
    result = session.execute(
        update(Job)
        .where(_running_attempt(job_id, attempt))
        .values(status="cancelled", progress_message=message, finished_at=now, updated_at=now)
    )
    session.commit()
    return _rowcount(result) == 1


def cancel_job(session: Session, job_id: str) -> Job:
    """Cancel a job: a queued job becomes `cancelled` at once; a running one is asked to stop.

    The running job's worker notices `cancel_requested` between steps and marks it `cancelled`.
    A finished job is returned unchanged (check `job.status`). Raises `JobNotFound` for an unknown id.
    One UPDATE for both cases, so a requeue racing with it cannot make the job slip between them.
    """
    now = utcnow()
    was_queued = Job.status == "queued"
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES))
        .values(
            status=case((was_queued, "cancelled"), else_=Job.status),
            cancel_requested=True,
            progress_message=case((was_queued, "cancelled before it started"), else_=Job.progress_message),
            finished_at=case((was_queued, now), else_=Job.finished_at),
            updated_at=now,
        )
    )
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def requeue_job(session: Session, job_id: str, *, attempt: int, reason: str, max_attempts: int) -> str | None:
    """Take back a running attempt that nobody runs any more; returns the job's new status.

    - `cancelled` when a cancel was requested: nobody is left to honour it, and a rerun would be refused;
    - `failed` once `max_attempts` attempts ran (its worker and device stay: where the last one ran);
    - else `queued` again, with its worker, device, start and heartbeat cleared, for the next attempt.

    Fenced by `attempt`, so a job that finished or was re-claimed meanwhile is left alone (returns None).
    The reconciler calls it for one job whose worker went silent; `requeue_interrupted` for every running
    job at once. Publishing the requeued job is the caller's business (after this commit).
    """
    now = utcnow()
    cancelled_message = f"cancelled: {reason}"[:MAX_PROGRESS_MESSAGE_CHARS]
    if attempt >= max_attempts:
        outcome: Any = "failed"
        values: dict[str, Any] = {
            "error": case(
                (Job.cancel_requested.is_(True), Job.error),
                else_=f"gave up after {attempt} attempt(s): {reason}"[:MAX_ERROR_CHARS],
            ),
            "progress_message": case(
                (Job.cancel_requested.is_(True), cancelled_message), else_=Job.progress_message
            ),
            "finished_at": now,
        }
    else:
        outcome = "queued"
        requeued_message = f"requeued after attempt {attempt}: {reason}"[:MAX_PROGRESS_MESSAGE_CHARS]
        values = {
            "worker_name": case((Job.cancel_requested.is_(True), Job.worker_name), else_=None),
            "device_id": case((Job.cancel_requested.is_(True), Job.device_id), else_=None),
            "started_at": case((Job.cancel_requested.is_(True), Job.started_at), else_=None),
            "heartbeat_at": case((Job.cancel_requested.is_(True), Job.heartbeat_at), else_=None),
            "progress": case((Job.cancel_requested.is_(True), Job.progress), else_=0.0),
            "progress_message": case(
                (Job.cancel_requested.is_(True), cancelled_message), else_=requeued_message
            ),
            "published_at": case((Job.cancel_requested.is_(True), Job.published_at), else_=None),
            "finished_at": case((Job.cancel_requested.is_(True), now), else_=None),
        }
    # One statement decides between cancelled and the rest: a cancel arriving between two statements
    # would otherwise leave a queued job with its cancel requested, which no claim ever takes.
    status = case((Job.cancel_requested.is_(True), "cancelled"), else_=outcome)
    row = session.execute(
        update(Job)
        .where(_running_attempt(job_id, attempt))
        .values(status=status, updated_at=now, **values)
        .returning(Job.status)
    ).one_or_none()
    session.commit()
    return None if row is None else str(row[0])


def fail_unserved_queued(session: Session, *, served_queues: Sequence[str], served_by: str) -> list[str]:
    """Fail every queued job on a queue outside `served_queues`, saying which queues are served; returns
    their ids. Only for a caller that owns every worker of the database (`bpbench up`): nothing else could
    ever take such a job. One conditional UPDATE per job, fenced by the status."""
    if not served_queues:
        return []  # no worker at all yet: nothing can be judged
    rows = session.execute(
        select(Job.id, Job.queue).where(Job.status == "queued", Job.queue.not_in(list(served_queues)))
    ).all()
    session.rollback()
    served = ", ".join(sorted(served_queues))
    failed: list[str] = []
    for job_id, queue in rows:
        error = (
            f"no worker can serve queue {queue!r}: {served_by} serves only {served}; "
            "submit it where a worker of that device runs"
        )
        if fail_job(session, job_id, error):
            failed.append(job_id)
    return failed


def finish_cancelled_queued(session: Session, *, limit: int) -> list[str]:
    """End as `cancelled` the queued jobs whose cancel was requested; returns their ids.

    No claim takes such a job and nothing republishes it, so without this it would wait forever (a store
    written by an earlier version can hold some). One conditional UPDATE per job, fenced by the status.
    """
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.status == "queued", Job.cancel_requested.is_(True))
            .order_by(Job.created_at)
            .limit(limit)
        )
    )
    session.rollback()
    done: list[str] = []
    now = utcnow()
    for job_id in ids:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(True))
            .values(
                status="cancelled",
                progress_message="cancelled before it ran again",
                finished_at=now,
                updated_at=now,
            )
        )
        session.commit()
        if _rowcount(result) == 1:
            done.append(job_id)
    return done


def requeue_interrupted(session: Session, *, reason: str, max_attempts: int) -> Counter[str]:
    """The recovery mode of `requeue_job`: every `running` job at once, judged by no heartbeat.

    For a process that owns every worker of its database (`bpbench up` at start): no job can really be
    running then, so each one still marked `running` was cut off, and goes through `requeue_job` with its
    own attempt (a job that keeps bringing the stack down ends `failed` after `max_attempts` starts).
    Returns how many jobs ended in each status.
    """
    running = session.execute(select(Job.id, Job.attempts).where(Job.status == "running")).all()
    session.rollback()  # end the read: each requeue is its own transaction
    outcomes: Counter[str] = Counter()
    for job_id, attempt in running:
        outcome = requeue_job(session, job_id, attempt=attempt, reason=reason, max_attempts=max_attempts)
        if outcome is not None:
            outcomes[outcome] += 1
    return outcomes


def take_publication(
    session: Session, job_id: str, *, published_before: datetime | None, now: datetime
) -> bool:
    """Claim the right to publish a queued job: move its `published_at` to `now`; True if this call won.

    `published_before=None` takes only a job never published; a time takes one last published before it.
    One conditional UPDATE, so of two reconcilers only one publishes.
    """
    condition = (
        Job.published_at.is_(None) if published_before is None else (Job.published_at < published_before)
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False), condition)
        .values(published_at=now)
    )
    session.commit()
    return _rowcount(result) == 1


def release_publication(
    session: Session, job_id: str, *, taken_at: datetime, previous: datetime | None
) -> None:
    """Undo `take_publication` after the broker refused the message: `published_at` goes back to
    `previous`, only if nobody changed it since, so the next pass tries again."""
    session.rollback()
    session.execute(
        update(Job).where(Job.id == job_id, Job.published_at == taken_at).values(published_at=previous)
    )
    session.commit()


def is_final(status: str) -> bool:
    """True for `succeeded`, `failed` and `cancelled`."""
    return status in FINAL_STATUSES


def touch_job(session: Session, job_id: str, *, attempt: int) -> bool:
    """The per-job heartbeat: set a running job's `heartbeat_at`; False once it is no longer this attempt's.

    Written by a thread beside the running job (in the pool process that runs it), so a job whose process
    died (killed pool child, hard time limit, lost network) goes stale even while its worker lives. Only
    the claim and this write `heartbeat_at`; `updated_at` is left as it was (a beat changes no state).
    """
    _single_statement(session)
    result = session.execute(
        update(Job)
        .where(_running_attempt(job_id, attempt))
        .values(heartbeat_at=utcnow(), updated_at=Job.updated_at)  # the column's onupdate would bump it
    )
    session.commit()
    return _rowcount(result) == 1
