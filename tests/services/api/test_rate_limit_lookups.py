"""Rate limiting before the database: a request refused with 429 costs no token look-up."""

from __future__ import annotations

from pathlib import Path

from services.api.limits import RateLimiter
from services.core.config import Settings
from tests.services.api.test_observability import scrape, value
from tests.support.apiserver import ADMIN_TOKEN, running_api


def test_an_address_over_its_rate_is_refused_before_its_unknown_token_is_looked_up(
    service_settings: Settings, tmp_path: Path
) -> None:
    limits = {
        "BPBENCH_RATE_LIMIT_PER_S": "0.2",
        "BPBENCH_RATE_LIMIT_BURST": "3",
        "BPBENCH_TOKEN_CACHE_TTL_S": "300",
    }
    with running_api(service_settings, tmp_path, ADMIN_TOKEN, **limits) as server:
        with server.client() as admin:
            before = scrape(admin)  # also puts the admin token in the cache
        with server.client(token="bpb_guessed-token-that-does-not-exist") as guesser:
            codes = [guesser.get("/api/v1/jobs").status_code for _ in range(30)]
        with server.client() as admin:
            after = scrape(admin)  # a cached token is not held up by its address's bucket
    assert codes == [401] * 3 + [429] * 27
    looked_up = value(after, "bpbench_token_lookups_total", outcome="unknown") - value(
        before, "bpbench_token_lookups_total", outcome="unknown"
    )
    assert looked_up == 3  # one per request that was let through, none for the 27 refused


def test_refuse_if_over_counts_no_request() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=lambda: now[0])
    for _ in range(5):
        limiter.refuse_if_over("ip:a")  # never raises, never takes
    assert limiter.retry_after("ip:a") == 0.0 and limiter.retry_after("ip:a") == 0.0
    assert limiter.waiting_time("ip:a") == 1.0  # the bucket is empty now: 1 s to the next request
    now[0] = 0.25
    assert limiter.waiting_time("ip:a") == 0.75
