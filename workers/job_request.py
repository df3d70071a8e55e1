"""The worker's main process's side of one delivery of `bpbench.run_job`: Celery's request class for it.

Celery runs a request's callbacks in the main process: `on_accepted` when a pool process takes the task,
`on_failure` when the task ends badly, including when the pool process dies (billiard's
`WorkerLostError`). The request hands both to `services.jobs.memory_kills`, which watches the pool
process's memory meanwhile and, if the process was killed for memory, fails the job saying so. Celery's
own handling (the message rejected and redelivered, the redelivery then finding the row no longer queued)
is unchanged.

The record is written right there, in the main process's loop (one read and one UPDATE), not in a thread:
the pool forks the dead process's replacement right after, and a fork while another thread is inside the
database driver can leave the new pool process holding a lock nobody will release (seen with SQLite).
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from services.core.config import get_settings
from services.jobs.memory_kills import accepted_at, exit_signal_of, memory_watch, record_lost_process

log = logging.getLogger(__name__)


class JobRequest(Request):
    """A delivery of `bpbench.run_job` whose pool process's memory is watched until it ends."""

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        super().on_accepted(pid, time_accepted)
        try:
            memory_watch().watch(pid, str(self.id), accepted_at(self.time_start))
        except Exception:  # watching is best effort: the job runs whatever happens here
            log.exception("job %s: its pool process's memory is not watched", self.id)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        if isinstance(error, WorkerLostError) and self.worker_pid:
            watched = memory_watch().lost(self.worker_pid, str(self.id))
            if watched is not None:
                from workers.tasks import current_context

                try:
                    record_lost_process(
                        get_settings(), current_context().name, watched, exit_signal_of(error)
                    )
                except Exception:  # the reconciler still takes the job back if this was not recorded
                    log.exception("job %s: the death of its pool process could not be recorded", self.id)
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
