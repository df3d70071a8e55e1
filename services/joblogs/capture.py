"""The worker side of a job's log: a logging handler and a loss-curve recorder for one running attempt.

`JobCapture(factory, job_id, attempt)` is a context manager the runner holds around a claimed attempt.
While it is open:
- every record logged by the thread that opened it (the job's thread: the runner's, the engine's and
  Celery's lines about this job; not the heartbeat thread's) is kept as a line of this attempt, secrets
  redacted and the message clipped to `MAX_MESSAGE_CHARS`;
- `progress(fraction, message)` (the runner's progress callback hands it each report) keeps the train
  kind's `step N/M, loss X` reports as loss points (a new value at the step it was first reported), at
  most `MAX_CURVE_POINTS` (evenly strided: when the list is full every other point goes and the stride
  doubles; the newest point is always there);
- a thread writes what is new every `FLUSH_INTERVAL_S`, in one transaction.
Bounded: an attempt stores at most `MAX_LINES_PER_ATTEMPT` lines, the first `HEAD_LINES` as they come and,
past those, the last `TAIL_LINES` (written at close, after one line saying how many were left out).
A database error never reaches the job: the batch waits for the next flush (the final one is dropped
with a warning), and the warning is logged by the flusher thread, which the capture does not keep.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from datetime import UTC, datetime
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from engine.kinds.train import parse_progress
from services.core.logging import RedactSecretsFilter, redact_secrets
from services.joblogs import service
from services.joblogs.models import MAX_CURVE_POINTS, MAX_LINES_PER_ATTEMPT
from services.joblogs.service import LogLine

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
TAIL_LINES = 49
HEAD_LINES = MAX_LINES_PER_ATTEMPT - TAIL_LINES - 1  # one line says how many were left out


class LossCurveRecorder:
    """Loss points of a running attempt, bounded to `limit` by doubling the stride between kept reports."""

    def __init__(self, limit: int = MAX_CURVE_POINTS) -> None:
        if limit < 2:
            raise ValueError(f"a loss curve needs room for at least 2 points, got limit={limit}")
        self._limit = limit
        self._kept: list[list[float]] = []
        self._stride = 1
        self._reports = 0
        self._newest: list[float] | None = None
        self.total_steps: int | None = None

    def add(self, step: int, loss: float, total_steps: int | None = None) -> None:
        """One reported point; kept if it falls on the stride (the newest is always shown).

        A report repeating the newest loss adds nothing: the train kind reports its latest *sampled* loss
        (every `steps / loss_samples` steps) with the current step, so a point stays at the step where its
        value was first reported, the closest one to where it was measured."""
        self.total_steps = total_steps if total_steps is not None else self.total_steps
        if not math.isfinite(loss) or (self._newest is not None and self._newest[1] == loss):
            return
        point = [step, loss]
        self._newest = point
        if self._reports % self._stride == 0:
            self._kept.append(point)
            if len(self._kept) > self._limit - 1:  # leave room for the newest point
                self._kept = self._kept[::2]
                self._stride *= 2
        self._reports += 1

    def offer(self, message: str) -> bool:
        """Keep the point of a train progress message; False for any other message."""
        progress = parse_progress(message)  # the train kind's message: `step 120/300, loss 0.4183`
        if progress is None:
            return False
        step, total_steps, loss = progress
        self.add(step, loss, total_steps)
        return True

    def points(self) -> list[list[float]]:
        """The kept points in step order, ending with the newest."""
        if self._newest is None:
            return []
        if self._kept and self._kept[-1] is self._newest:
            return [list(p) for p in self._kept]
        return [*(list(p) for p in self._kept), list(self._newest)]


class _CaptureHandler(logging.Handler):
    """Hands the records of one thread to its capture; never raises into the code that logged."""

    def __init__(self, capture: JobCapture, thread_id: int) -> None:
        super().__init__(logging.NOTSET)
        self._capture = capture
        self._thread_id = thread_id
        self.addFilter(RedactSecretsFilter())
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self._thread_id and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + redact_secrets(self._formatter.formatException(record.exc_info))
            logged_at = datetime.fromtimestamp(record.created, UTC)
            self._capture.keep(
                LogLine(self._capture.attempt, logged_at, record.levelname, record.name, message)
            )
        except Exception:  # a line that cannot be kept is lost, not the job
            self.handleError(record)


class JobCapture:
    """Collect one attempt's log lines and loss points and write them to the database in batches."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: str,
        attempt: int,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._factory = factory
        self._interval_s = flush_interval_s
        self._lock = threading.Lock()  # guards what is collected
        self._write_lock = threading.Lock()  # one flush at a time: lines stay in order
        self._pending: list[LogLine] = []
        self._head = 0
        self._tail: deque[LogLine] = deque(maxlen=TAIL_LINES)
        self._left_out = 0
        self._curve = LossCurveRecorder()
        self._curve_changed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._handler: _CaptureHandler | None = None
        self._failing = False

    # --- collecting ---------------------------------------------------------------------------------

    def keep(self, line: LogLine) -> None:
        """Keep a line of this attempt: among the first `HEAD_LINES`, else in the tail written at close."""
        with self._lock:
            if self._head < HEAD_LINES:
                self._head += 1
                self._pending.append(line)
                return
            if len(self._tail) == self._tail.maxlen:
                self._left_out += 1
            self._tail.append(line)

    def progress(self, fraction: float, message: str) -> None:
        """The progress callback's report: a train report's step and loss become a point of the curve."""
        with self._lock:
            if self._curve.offer(message):
                self._curve_changed = True

    def points(self) -> list[list[float]]:
        """The loss points kept so far."""
        with self._lock:
            return self._curve.points()

    # --- writing ------------------------------------------------------------------------------------

    def flush(self, *, final: bool = False) -> bool:
        """Write the new lines and the changed curve in one transaction; False if the database refused
        (the batch is kept for the next flush, unless `final`)."""
        with self._write_lock:
            with self._lock:
                lines, self._pending = self._pending, []
                if final:
                    lines += self._closing_lines()
                curve = self._curve.points() if self._curve_changed else None
                total_steps = self._curve.total_steps
                self._curve_changed = False
            if not lines and curve is None:
                return True
            try:
                with self._factory() as session:
                    service.append_log_lines(session, self.job_id, lines)
                    if curve is not None:
                        service.store_loss_curve(session, self.job_id, self.attempt, curve, total_steps)
                    session.commit()
            except Exception as exc:  # the job goes on without its log
                if not final:
                    with self._lock:
                        self._pending[:0] = lines
                        self._curve_changed = self._curve_changed or curve is not None
                if not self._failing or final:
                    what = "dropped" if final else "kept for the next try"
                    log.warning(
                        "job %s: %d log line(s) not written (%s): %s", self.job_id, len(lines), what, exc
                    )
                self._failing = True
                return False
            self._failing = False
            return True

    def _closing_lines(self) -> list[LogLine]:
        tail = list(self._tail)
        self._tail.clear()
        if not self._left_out:
            return tail
        note = LogLine(
            self.attempt,
            tail[0].logged_at,
            "WARNING",
            __name__,
            f"… {self._left_out} line(s) not stored: an attempt keeps its first {HEAD_LINES} and its last "
            f"{TAIL_LINES} lines …",
        )
        return [note, *tail]

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    # --- the attempt's span -------------------------------------------------------------------------

    def __enter__(self) -> JobCapture:
        self._handler = _CaptureHandler(self, threading.get_ident())
        logging.getLogger().addHandler(self._handler)
        self._flusher = threading.Thread(target=self._run, name=f"job-log-{self.job_id[:8]}", daemon=True)
        self._flusher.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=self._interval_s + 30)
        self.flush(final=True)

    def __repr__(self) -> str:
        return f"JobCapture(job_id={self.job_id!r}, attempt={self.attempt})"
