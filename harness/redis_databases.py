"""A Redis database number of one's own on a shared server, for a test run or a benchmark.

Test runs and benchmarks on one machine share one Redis server. Each claims a database number with a lock
key in it (SET NX with an expiry, so a crashed run frees its number within the hour), empties the database
before and after, and deletes the lock only while it still holds it. One protocol for both users, so a test
run and a benchmark never share a queue: tests/support/servers.py (`claimed_redis_database`) and
benchmarks/service_stack.py (`redis_database`) call this module with their own candidates.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence

LOCK_KEY = "bpbench:test-run-lock"
LOCK_TTL_S = 3600


class RedisDatabasesTaken(RuntimeError):
    """Every candidate database number is claimed by another test run or benchmark."""


@contextlib.contextmanager
def claimed_redis_database(server_url: str, candidates: Sequence[int], *, owner: str = "") -> Iterator[str]:
    """The URL of the first free database of `candidates` on `server_url`, claimed and empty for the block.

    `owner` prefixes the lock's value (who holds a number shows in `GET bpbench:test-run-lock`).
    Raises `RedisDatabasesTaken` naming the candidates when every one is claimed.
    """
    import redis

    server_url = server_url.rstrip("/")
    token = f"{owner}{uuid.uuid4().hex}"
    for db in candidates:
        client = redis.Redis.from_url(f"{server_url}/{db}")
        if client.set(LOCK_KEY, token, nx=True, ex=LOCK_TTL_S):
            break
        client.close()
    else:
        taken = f"every Redis database {list(candidates)} is claimed by another test run or benchmark"
        raise RedisDatabasesTaken(f"{taken} ({LOCK_KEY})")

    def empty() -> None:
        for key in client.scan_iter(count=1000):
            if key != LOCK_KEY.encode():
                client.delete(key)

    empty()
    try:
        yield f"{server_url}/{db}"
    finally:
        empty()
        if client.get(LOCK_KEY) == token.encode():
            client.delete(LOCK_KEY)
        client.close()
