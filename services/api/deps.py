"""The API's dependencies: settings, a database session per request, and bearer-token checks by scope.

Scopes: `read` for every GET under /api/v1 (open to all when `BPBENCH_PUBLIC_READ=true`), `submit` to create
or cancel jobs, `admin` for everything. A missing or unknown token is a 401 with `WWW-Authenticate: Bearer`;
a known token without the scope is a 403.

Every request except the health probes is also rate limited (`rate_limit`, an app-wide dependency): per
token id when it carries a valid token, else per client address (so guessing tokens is limited too).

These dependencies are `async`: they run on the event loop, not in the thread pool (a hand-off each cost
more than the check itself). A token is looked up in the database (in the thread pool) only when
the app's `TokenCache` does not hold it: once per `BPBENCH_TOKEN_CACHE_TTL_S` per token and process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from services.api.cookies import CSRF_HEADER, CSRF_VALUE, csrf_checked, token_from_cookie
from services.api.errors import unprocessable
from services.api.limits import RateLimiter
from services.auth.service import TokenCache, TokenIdentity, authenticate, grants, hash_token
from services.core.config import Settings


async def get_settings_dep(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request, closed afterwards (routes commit what they change)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


# Largest `offset` of a paged list: above any real table, and far below the 64-bit integers SQLite and
# PostgreSQL take for OFFSET (a bigger value used to be a 500 from the database driver; found by fuzzing).
MAX_OFFSET = 1_000_000_000
# Paged lists count their total exactly only this far: past it COUNT(*) would read every matching row (a
# million succeeded jobs), so the page says `total_exact: false` ("more than this") instead.
TOTAL_CAP = 10_000

# Probes must answer whatever the load (and without touching the database): never rate limited.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
_UNSET = object()


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (no header, another scheme)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def presented_token(request: Request) -> str | None:
    """The token the request carries: the `Authorization: Bearer` header, else the sign-in cookie."""
    token = bearer_token(request)
    return token if token is not None else token_from_cookie(request)


def _look_up_token(factory: sessionmaker[Session], raw: str) -> TokenIdentity | None:
    with factory() as session:
        row = authenticate(session, raw)
        return TokenIdentity.of(row) if row is not None else None


class TokenLookups:
    """The app's token cache, and the database look-ups in flight: requests that carry the same token while
    it is being looked up wait for that one look-up (when an entry expires under load, dozens of requests
    would otherwise each take a thread and a connection to ask the same question)."""

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache
        self._in_flight: dict[str, asyncio.Task[TokenIdentity | None]] = {}
        # Called with "valid" or "unknown" after each database look-up (the metrics count them).
        self.observe_lookup: Callable[[str], None] = lambda outcome: None

    async def identity(self, factory: sessionmaker[Session], raw: str) -> TokenIdentity | None:
        """The valid token `raw`, or None: from the cache, else from the database (in the thread pool)."""
        token = self.cache.get(raw)
        if token is not None:
            return token
        key = hash_token(raw)
        lookup = self._in_flight.get(key)
        if lookup is None:
            # A task of its own: a request that goes away does not cancel the others' answer.
            lookup = asyncio.ensure_future(self._look_up(factory, raw, key))
            lookup.add_done_callback(_retrieve_outcome)
            self._in_flight[key] = lookup
        return await asyncio.shield(lookup)

    async def _look_up(self, factory: sessionmaker[Session], raw: str, key: str) -> TokenIdentity | None:
        try:
            token = await run_in_threadpool(_look_up_token, factory, raw)
        finally:
            self._in_flight.pop(key, None)
        self.observe_lookup("valid" if token is not None else "unknown")
        if token is not None:
            self.cache.put(raw, token)
        return token


def _retrieve_outcome(task: asyncio.Task[TokenIdentity | None]) -> None:
    # The requests that waited for it got its error; if all went away, nobody needs it logged as unseen.
    if not task.cancelled():
        task.exception()


async def request_token(request: Request) -> TokenIdentity | None:
    """The valid (known, unrevoked) token of this request, or None: from the app's token cache, else looked
    up in the database (in the thread pool) and cached; once per request."""
    cached = getattr(request.state, "api_token", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[return-value]
    raw = presented_token(request)
    token = None
    if raw:
        lookups: TokenLookups = request.app.state.token_lookups
        token = await lookups.identity(request.app.state.session_factory, raw)
    request.state.api_token = token
    return token


def client_address(request: Request) -> str:
    """The client's address as the server sees it (behind a proxy: run uvicorn with --proxy-headers)."""
    return request.client.host if request.client else "unknown"


async def rate_limit(request: Request) -> None:
    """429 with `Retry-After` when this token (or, without a valid token, this address) is over its rate."""
    limiter: RateLimiter = request.app.state.rate_limiter
    if not limiter.enabled or request.scope["path"] in UNLIMITED_PATHS:
        return
    address_key = f"ip:{client_address(request)}"
    raw = presented_token(request)
    lookups: TokenLookups = request.app.state.token_lookups
    if raw and lookups.cache.get(raw) is None:
        # A token not known to be valid costs a database look-up: an address already over its rate
        # (guessing tokens, say) is refused before it, so a flood of 429s costs the database nothing.
        limiter.refuse_if_over(address_key)
    token = await request_token(request)
    limiter.check(f"token:{token.id}" if token is not None else address_key)


def _nul_refused(field: str, where: str, value: str) -> HTTPException:
    accepted = "text without NUL characters (\\u0000)"
    message = f"{field}: contains a NUL character; accepted: {accepted}"
    return unprocessable(field, where, value[:200], accepted, message)


async def reject_nul_characters(request: Request) -> None:
    """422 for a NUL character in the path or a query parameter (PostgreSQL cannot store or compare one:
    it used to be a 500, found by the security tests). Body fields are checked by their models."""
    path = request.scope.get("path", "")
    if "\x00" in path:
        raise _nul_refused("path", "path", path)
    if not request.scope.get("query_string"):
        return
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise _nul_refused(name.replace("\x00", "\\u0000"), "query", value)


async def check_request(request: Request) -> None:
    """The app-wide checks of every request, in one dependency (FastAPI's per-dependency bookkeeping costs
    more than these checks): the rate limit, then no NUL character in the path or query."""
    await rate_limit(request)
    await reject_nul_characters(request)


RequestChecks = Depends(check_request)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


class ScopeCheck(SecurityBase):
    """A dependency that lets the request through only with a token granting `scope`.

    It is itself the OpenAPI security scheme (`HTTPBearer`), so a route that needs a token documents it and
    resolves one dependency, not a scheme object plus a check that depends on it (each level of FastAPI's
    dependency solving costs more than the check).
    """

    def __init__(self, scope: str, *, public_when_read_open: bool = False) -> None:
        self.model = HTTPBearerModel(description="an API token (`bpbench up` prints one)")
        self.scheme_name = "HTTPBearer"
        self.scope = scope
        self.public_when_read_open = public_when_read_open

    async def __call__(self, request: Request) -> TokenIdentity | None:
        settings: Settings = request.app.state.settings
        if self.public_when_read_open and settings.public_read:
            return None
        # The bearer header, else the dashboard's HttpOnly sign-in cookie (whose writes need the CSRF header).
        header_token = bearer_token(request)
        raw = header_token if header_token is not None else token_from_cookie(request)
        if header_token is None and raw is not None and not csrf_checked(request):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"a write signed in by cookie needs the header {CSRF_HEADER}: {CSRF_VALUE} (CSRF)",
            )
        if raw is None:
            raise _unauthorized(f"this endpoint needs a bearer token with the {self.scope!r} scope")
        token = await request_token(request)
        if token is None:
            raise _unauthorized("the bearer token is not valid (unknown or revoked)")
        if not grants(token, self.scope):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"token {token.name!r} has the scopes {', '.join(token.scopes)}; "
                f"this endpoint needs {self.scope!r}",
            )
        return token


def require_scope(scope: str, *, public_when_read_open: bool = False) -> Any:
    """A dependency that lets the request through only with a token granting `scope` (`ScopeCheck`)."""
    return Depends(ScopeCheck(scope, public_when_read_open=public_when_read_open))


ReadAccess = require_scope("read", public_when_read_open=True)
SubmitAccess = require_scope("submit")
AdminAccess = require_scope("admin")
