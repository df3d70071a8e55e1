"""The GEMM calibration an efficiency figure is divided by, chosen so that it can be trusted.

A device's efficiency on a training spec is the FLOP/s its steps achieved over the FLOP/s its matrix
products can reach. The denominator must be a real peak of the same device and stack:

- a `gemm` result of the same device and dtype;
- that ran at least one size >= `LEVELLED_SIZE` (1024): below it the rate has not levelled off (a 64x64
  product of the smoke suite measures call overhead, not the device), and its figure is the best rate over
  the sizes it ran;
- taken on the same software stack (`services.results.history.stack_of`: NumPy, BLAS and its thread count,
  CuPy, CUDA, driver) as the compared results, since a BLAS upgrade or another thread count moves the peak.

Of the qualifying results the highest peak serves (a calibration taken while the machine was loaded
reads low, never high). An efficiency above 100% therefore means the calibration itself was disturbed; it
is flagged with the command that recalibrates instead of being shown as a bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.results.history import stack_of
from services.results.models import Result

LEVELLED_SIZE = 1024
CANDIDATES = 50  # the highest gemm peaks of a device looked at for one that qualifies
RECALIBRATE_SIZES = "1024,2048,4096"


@dataclass(frozen=True)
class Calibration:
    """The gemm result used as a device's peak: which job, at which sizes, when, under what load."""

    result_id: int
    job_id: str
    peak_flops_per_s: float
    sizes: list[int]
    created_at: datetime
    load: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "result_id": self.result_id,
            "job_id": self.job_id,
            "peak_flops_per_s": self.peak_flops_per_s,
            "sizes": self.sizes,
            "created_at": self.created_at.isoformat(),
            "load": self.load,
        }


def recalibrate_command(device_id: str, dtype: str | None) -> str:
    """The command that measures a calibration that qualifies, on this device."""
    return (
        f"bpbench submit --kind gemm --gemm-sizes {RECALIBRATE_SIZES} --dtype {dtype or 'float32'} "
        f"--target {device_id}"
    )


def sizes_of(metrics: dict[str, Any] | None) -> list[int]:
    """The matrix sizes a gemm result ran (`metrics.sizes[].n`)."""
    sizes = (metrics or {}).get("sizes") or []
    return [int(s["n"]) for s in sizes if isinstance(s, dict) and isinstance(s.get("n"), int | float)]


def load_of(metrics: dict[str, Any] | None) -> float | None:
    """The highest load average recorded around the result's timed windows, when it was recorded."""
    conditions = (metrics or {}).get("conditions") or {}
    value = conditions.get("load_max") if isinstance(conditions, dict) else None
    return float(value) if isinstance(value, int | float) else None


def calibration_for(
    session: Session, device_id: str, dtype: str | None, stack: dict[str, Any] | None
) -> tuple[Calibration | None, str | None]:
    """The device's calibration for `dtype` on `stack`, or None and why none qualifies (with the fix)."""
    query = select(
        Result.id,
        Result.job_id,
        Result.peak_flops_per_s,
        Result.metrics,
        Result.fingerprint,
        Result.created_at,
    ).where(Result.kind == "gemm", Result.device_id == device_id, Result.peak_flops_per_s.is_not(None))
    if dtype is not None:
        query = query.where(Result.dtype == dtype)
    rows = session.execute(query.order_by(Result.peak_flops_per_s.desc()).limit(CANDIDATES)).all()
    small = other_stack = 0
    for row in rows:
        sizes = sizes_of(row.metrics)
        if not sizes or max(sizes) < LEVELLED_SIZE:
            small += 1
            continue
        if stack is not None and stack_of(row.fingerprint) != stack:
            other_stack += 1
            continue
        calibration = Calibration(
            row.id, row.job_id, float(row.peak_flops_per_s), sizes, row.created_at, load_of(row.metrics)
        )
        return calibration, None
    seen = (
        f"{len(rows)} gemm result(s) seen: {small} below size {LEVELLED_SIZE}, {other_stack} on another stack"
        if rows
        else "no gemm result"
    )
    return None, (
        f"no calibration of this device in {dtype or 'any dtype'} at sizes >= {LEVELLED_SIZE} on this stack "
        f"({seen}); run `{recalibrate_command(device_id, dtype)}`"
    )
