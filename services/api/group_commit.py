"""Group commit of job submissions: concurrent `POST /api/v1/jobs` share one INSERT (and its
commit), one broker producer and one UPDATE of `published_at`.

Each submission adds its row (`jobs.service.job_row`) to `pending` and awaits its future. One writer task
takes everything pending (at most `max_batch` rows) and runs `jobs.service.submit_job_rows` on it in one
worker thread: one multi-row INSERT committed on its own, the rows published over one producer, one UPDATE
of their `published_at`. While that batch is written, the next one gathers. A lone request is written at
once (no timer, no added delay); under load a batch grows to what arrived during the previous write.
(Running the INSERT of one batch beside the publishing of the previous one, on two threads, was measured
too: smaller batches, more CPU per job, no more jobs per second on two CPUs; so one thread it is.)

A request is answered after its row was committed and then published (or found unpublishable: the broker is
down, the reconciler publishes it later), so a 202 still means "committed". If the INSERT fails, every
request of that batch gets the error (the route answers 503): none of them was acknowledged, so nothing
acknowledged is lost. A constraint error is retried row by row, so one bad row fails only its own request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.jobs.service import SubmittedBatch, submit_job_rows

log = logging.getLogger(__name__)

# Rows per INSERT by default (BPBENCH_SUBMIT_BATCH_MAX, at most 1,000): one statement for SQLite and
# PostgreSQL alike (under both drivers' parameter limits and SQLAlchemy's insertmanyvalues page of 1,000),
# and a bound on the latency one batch adds.
MAX_BATCH = 256

# A waiting submission: its row, and the future that receives the row's `published_at` (None: unpublished).
Pending = tuple[dict[str, Any], "asyncio.Future[datetime | None]"]


class GroupCommit:
    """Batches concurrent job submissions of one event loop into group commits (see the module docstring)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        max_batch: int = MAX_BATCH,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._factory = factory
        self.max_batch = max_batch
        self.observe_batch = observe_batch
        self._pending: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def submit(self, row: dict[str, Any]) -> datetime | None:
        """Commit `row` with whatever else is pending, then publish it; returns once that is done, with the
        row's `published_at` (None when the broker could not take it: the reconciler publishes it later).

        Raises what the INSERT raised (the row is then not stored).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[datetime | None] = loop.create_future()
        self._pending.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_pending())
        return await future

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                await self._write(batch)
            except BaseException as exc:  # never leave a request waiting for an answer that cannot come
                for _, future in batch:
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        _settle(future, error=exc)
                raise

    async def _write(self, batch: list[Pending]) -> None:
        if self.observe_batch is not None:
            self.observe_batch(len(batch))
        try:
            outcome = await self._in_thread([row for row, _ in batch])
        except (IntegrityError, DataError) as exc:
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            log.warning("a batch of %d jobs was refused (%s); writing them one by one", len(batch), exc)
            for row, future in batch:
                try:
                    single = await self._in_thread([row])
                except Exception as row_error:
                    _settle(future, error=row_error)
                else:
                    _settle(future, single.published_at)
            return
        except Exception as exc:  # the database is down or refused the batch: every request hears it
            for _, future in batch:
                _settle(future, error=exc)
            return
        for index, (_, future) in enumerate(batch):
            # Rows are published in order and publishing stops at the first failure.
            _settle(future, outcome.published_at if index < outcome.published else None)

    async def _in_thread(self, rows: list[dict[str, Any]]) -> SubmittedBatch:
        if self._thread is None:
            # One thread: batches are written one after another, in the order they gathered.
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")

        def write() -> SubmittedBatch:
            with self._factory() as session:
                return submit_job_rows(session, rows)

        return await asyncio.get_running_loop().run_in_executor(self._thread, write)

    def close(self) -> None:
        """Stop the worker thread once the batch being written is done (at shutdown; a later submission
        starts a new one)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


def _settle(
    future: asyncio.Future[datetime | None],
    published_at: datetime | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    if future.done():  # its request was cancelled (the client went away): the row is stored all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(published_at)
