"""Request limits of the API: a body size cap (413) and per-token rate limiting (429 with `Retry-After`).

- Body size: `BodySizeLimit`, a pure ASGI middleware, refuses a request whose `Content-Length` is over
  `BPBENCH_MAX_BODY_BYTES` before reading a byte of it (the server reads no more than that length), and
  counts the bytes of a body sent without one (chunked), stopping at the first chunk past the cap. Nothing
  unbounded is ever read into memory.
- Rate: a token bucket per API token id (per client address for requests without a valid token), refilled
  at `BPBENCH_RATE_LIMIT_PER_S` up to `BPBENCH_RATE_LIMIT_BURST`. The buckets live in this process: with
  several API processes (uvicorn `--workers N`, replicas) each one keeps its own, so a token may send up to N
  times the rate in all. The broker is not always Redis (RabbitMQ is supported) and a shared counter would
  put a network round trip in front of every request, so the limit is a per-process guard against runaway
  clients, not an exact quota; put a shared limiter in the proxy in front if an exact one is needed.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Least-recently-used buckets beyond this many are dropped (a dropped bucket starts full again).
MAX_BUCKETS = 10_000


@dataclass
class TokenBucket:
    """`capacity` requests at once, refilled at `rate` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def wait(self, now: float) -> float:
        """0.0 if a request may go on at `now`, else the seconds until one may (nothing is taken)."""
        tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, now: float) -> float:
        """Take one request's token: 0.0 if allowed, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1.0
        return wait


class RateLimiter:
    """Token buckets by key (`token:<id>` or `ip:<address>`), thread-safe, at most `MAX_BUCKETS` kept."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """False when the rate is 0 (`BPBENCH_RATE_LIMIT_PER_S=0`)."""
        return self.rate_per_s > 0

    def retry_after(self, key: str) -> float:
        """Count one request of `key`: 0.0 if it may go on, else the seconds it should wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = TokenBucket(self.rate_per_s, float(self.burst), float(self.burst), now)
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
            return bucket.take(now)

    def waiting_time(self, key: str) -> float:
        """The seconds `key` would have to wait for its next request, without counting one."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            return bucket.wait(now) if bucket is not None else 0.0

    def refuse_if_over(self, key: str) -> None:
        """Raise the 429 of `check` when `key` is over its rate now, without counting a request."""
        self._refuse(self.waiting_time(key))

    def check(self, key: str) -> None:
        """Raise a 429 with `Retry-After` (whole seconds, at least 1) when `key` is over its rate."""
        self._refuse(self.retry_after(key))

    def _refuse(self, wait: float) -> None:
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"rate limit: at most {self.rate_per_s:g} requests/s (bursts of {self.burst}) "
                f"per token; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )


class BodyTooLarge(HTTPException):
    """A request body over the cap (413); raised while the body is read, so FastAPI passes it on."""

    def __init__(self, limit: int, seen: int | None = None) -> None:
        size = f"{seen} bytes" if seen is not None else f"more than {limit} bytes"
        super().__init__(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request body of {size}; accepted: at most {limit} bytes (BPBENCH_MAX_BODY_BYTES)",
        )


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by `Content-Length` or by counting the stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await _send_error(send, 400, f"Content-Length {declared[:40]!r} is not a byte count")
                return
            if length > self.max_bytes:
                await _send_error(send, 413, str(BodyTooLarge(self.max_bytes, length).detail))
                return
            if b"transfer-encoding" not in headers:
                # The server reads no more than Content-Length bytes as this body (counting them again
                # cost a wrapper around every receive and send). A chunked body is always counted.
                await self.app(scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            # Read outside FastAPI's body parsing (which turns it into a 413 response itself).
            if started:
                raise
            await _send_error(send, 413, str(exc.detail))


async def _send_error(send: Send, code: int, message: str) -> None:
    """A JSON error answer `{"detail": message}` sent straight from the middleware."""
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
