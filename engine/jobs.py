"""Running a job: `run_job(spec, progress, should_stop)` resolves the spec, dispatches on `spec["kind"]` to
its module in `engine/kinds/`, reports progress, and turns the result into plain JSON.

The kinds (`engine.spec.KINDS`), one module each:

- `train` (`engine/kinds/train.py`): trains `steps` steps; times windows of steps after a warm-up
  (adaptive: until the CV of the window throughputs is under target or the repeat cap is hit); reports
  throughput statistics, a loss curve, accuracies, time to a target accuracy, peak memory and FLOP rates.
- `gradcheck`: backprop against central differences on a small version of the model.
- `backprop_vs_numerical`: what a full gradient costs by backprop and by numerical differentiation.
- `gemm`: the device's square matrix-multiply rate.

Every result is `{kind, spec, metrics, statistics, trials, timing, fingerprint, engine_time_s,
started_at, finished_at, schema_version}`; see the README's "Result schema".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.backend import fingerprint
from engine.kinds import kind_of
from engine.kinds.base import JobCancelled, JobDiverged, device_of
from engine.spec import DEFAULT_SPEC, KINDS, JobError, resolve_spec

SCHEMA_VERSION = 1
PROGRESS_INTERVAL_S = 0.2  # the progress callback is called at most this often (plus start and end)
STOP_CHECK_INTERVAL_S = 0.05  # should_stop() is asked at most this often (it may query a database)

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]

__all__ = ["DEFAULT_SPEC", "KINDS", "JobCancelled", "JobDiverged", "JobError", "run_job", "to_jsonable"]

# --- plumbing ---------------------------------------------------------------------------------------


class _Progress:
    """Rate-limited progress reports and cancellation checks."""

    def __init__(self, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self._progress = progress
        self._should_stop = should_stop
        self._last_report = -math.inf
        self._last_check = -math.inf

    def report(self, fraction: float, message: str, force: bool = False) -> None:
        """Call the callback if `PROGRESS_INTERVAL_S` has passed since the last call (or `force`)."""
        if self._progress is None:
            return
        now = time.perf_counter()
        if force or now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            self._progress(min(max(float(fraction), 0.0), 1.0), message)

    def check_stop(self, where: str) -> None:
        """Raise JobCancelled if `should_stop()` says so (asked at most every `STOP_CHECK_INTERVAL_S`)."""
        if self._should_stop is None:
            return
        now = time.perf_counter()
        if now - self._last_check < STOP_CHECK_INTERVAL_S:
            return
        self._last_check = now
        if self._should_stop():
            raise JobCancelled(f"cancelled {where}")


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become Python numbers/lists, tuples lists, NaN/inf None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_job(
    spec: dict[str, Any],
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Run one job and return its result document (JSON-serialisable).

    `spec` is `JobSpec.engine_dict()`; missing fields take the JobSpec defaults. `progress(fraction,
    message)` is called at most every 0.2 s; `should_stop()` is asked between steps (at most every
    0.05 s) and a true answer raises JobCancelled. Raises JobDiverged on a NaN/inf loss and JobError
    (a ValueError) on a spec that cannot run.
    """
    if not isinstance(spec, dict):
        raise JobError(f"spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind", "train")
    job_kind = kind_of(kind)
    full = resolve_spec(spec)
    device = device_of(full)
    reporter = _Progress(progress, should_stop)
    started_at = _now()
    t0 = time.perf_counter()
    reporter.report(0.0, f"{kind}: starting", force=True)
    # A diverging run overflows; JobDiverged reports that, so NumPy's warnings would only be noise.
    with device.use(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        body = job_kind.run(full, reporter)
        document = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "spec": full,
            "metrics": body["metrics"],
            "statistics": body.get("statistics", {}),
            "trials": body.get("trials", []),
            "timing": body.get("timing", {}),
            "fingerprint": fingerprint(device),
            "engine_time_s": time.perf_counter() - t0,
            "started_at": started_at,
            "finished_at": _now(),
        }
    reporter.report(1.0, f"{kind}: done", force=True)
    jsonable: dict[str, Any] = to_jsonable(document)
    return jsonable
