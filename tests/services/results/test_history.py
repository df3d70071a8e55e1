"""A history is cut where the software stack changed or a person marked a shift; each cut says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.results.history import Cut, cuts_of, stack_of, stretches
from services.results.models import HistoryMark

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _fingerprint(numpy: str = "2.4.6", threads: int = 2, driver: str | None = None) -> dict[str, Any]:
    fp: dict[str, Any] = {
        "numpy_version": numpy,
        "python_version": "3.11.7",
        "platform": "Linux-6.18",
        "blas": [
            {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31", "num_threads": threads}
        ],
    }
    if driver:
        fp["gpu"] = {"name": "NVIDIA H200", "driver_version": driver}
    return fp


def test_the_stack_is_the_software_plus_the_blas_threads() -> None:
    assert stack_of(_fingerprint()) == {
        "python": "3.11.7",
        "numpy": "2.4.6",
        "blas": "openblas 0.3.31",
        "platform": "Linux-6.18",
        "blas_threads": 2,
    }


def test_an_upgrade_and_a_thread_change_cut_the_history_naming_the_fields() -> None:
    fps = [
        _fingerprint(),
        _fingerprint(),
        _fingerprint("2.5.0"),
        _fingerprint("2.5.0"),
        _fingerprint("2.5.0", 1),
    ]
    created = [T0 + timedelta(hours=i) for i in range(5)]
    cuts = cuts_of(created, fps, [])
    assert cuts == [
        Cut(2, "software changed: numpy 2.4.6 -> 2.5.0", {"numpy": ["2.4.6", "2.5.0"]}),
        Cut(4, "software changed: blas_threads 2 -> 1", {"blas_threads": [2, 1]}),
    ]
    assert stretches(5, cuts) == [(0, 2), (2, 4), (4, 5)]


def test_a_mark_cuts_at_the_first_result_at_or_after_it() -> None:
    created = [T0 + timedelta(hours=i) for i in range(6)]
    mark = HistoryMark(
        device_id="d", spec_hash=None, at=T0 + timedelta(hours=2, minutes=30), note="new driver 580"
    )
    cuts = cuts_of(created, [_fingerprint()] * 6, [mark])
    assert cuts == [Cut(3, "marked: new driver 580")]
    early = HistoryMark(device_id="d", spec_hash=None, at=T0 - timedelta(days=1), note="before everything")
    assert cuts_of(created, [_fingerprint()] * 6, [early]) == []  # nothing before it to cut from


def test_no_cut_without_a_change() -> None:
    assert cuts_of([T0, T0], [_fingerprint(driver="580"), _fingerprint(driver="580")], []) == []
    assert stretches(3, []) == [(0, 3)]
