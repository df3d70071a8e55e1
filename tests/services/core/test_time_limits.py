"""The time-limit margins, derived in one place (`services.core.config`), stay in the order they need."""

from __future__ import annotations

import pytest

from services.core.config import Settings, hard_time_limit_s
from services.core.queue import _send_options, celery_config


@pytest.mark.parametrize("limit", [1.0, 600.0, 6 * 3600.0])
def test_each_layer_of_a_time_limit_acts_after_the_one_before(limit: float) -> None:
    settings = Settings(max_job_time_s=6 * 3600.0)

    hard = hard_time_limit_s(limit)
    overdue = settings.overdue_after_s(limit)
    visibility = celery_config(settings)["broker_transport_options"]["visibility_timeout"]

    # The worker stops the job at `limit`; Celery kills a stuck child at `hard`; the reconciler fails a job
    # still beating at `overdue`; Redis redelivers an unacknowledged message only at `visibility`.
    assert (hard, overdue) == (limit + 60, limit + 120)
    assert limit < hard < overdue < visibility
    assert visibility == settings.broker_visibility_timeout_s == 6 * 3600 + 3600


def test_a_published_message_carries_the_hard_limit_of_its_jobs_time_limit() -> None:
    assert _send_options("cpu", 30.0) == {"queue": "cpu", "routing_key": "cpu", "time_limit": 90.0}
    assert _send_options("gpu", None) == {"queue": "gpu", "routing_key": "gpu"}
