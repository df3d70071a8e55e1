"""The API's dependencies: settings, a database session per request, and bearer-token checks by scope.

Scopes: `read` for every GET under /api/v1 (open to all when `BPBENCH_PUBLIC_READ=true`), `submit` to create
or cancel jobs, `admin` for everything. A missing or unknown token is a 401 with `WWW-Authenticate: Bearer`;
a known token without the scope is a 403.

Every request except the health probes is also rate limited (`rate_limit`, an app-wide dependency): per
token id when it carries a valid token, else per client address (so guessing tokens is limited too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from services.api.cookies import CSRF_HEADER, CSRF_VALUE, csrf_checked, token_from_cookie
from services.api.limits import RateLimiter
from services.auth.models import ApiToken
from services.auth.service import authenticate, grants
from services.core.config import Settings

_bearer = HTTPBearer(auto_error=False, description="an API token (`bpbench up` prints one)")


def get_settings_dep(request: Request) -> Settings:
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
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


# Largest `offset` of a paged list: above any real table, and far below the 64-bit integers SQLite and
# PostgreSQL take for OFFSET (a bigger value used to be a 500 from the database driver; found by fuzzing).
MAX_OFFSET = 1_000_000_000
# Paged lists count their total exactly only this far: past it COUNT(*) would read every matching row (a
# million succeeded jobs), so the page says `total_exact: false` ("more than this") instead (issue 7).
TOTAL_CAP = 10_000

# Probes must answer whatever the load (and without touching the database): never rate limited.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
_UNSET = object()


def presented_token(request: Request) -> str | None:
    """The token the request carries: the `Authorization: Bearer` header, else the sign-in cookie."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return token_from_cookie(request)


def request_token(request: Request, session: Session) -> ApiToken | None:
    """The valid (known, unrevoked) token of this request, or None; looked up once per request."""
    cached = getattr(request.state, "api_token", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[return-value]
    raw = presented_token(request)
    token = authenticate(session, raw) if raw else None
    request.state.api_token = token
    return token


def client_address(request: Request) -> str:
    """The client's address as the server sees it (behind a proxy: run uvicorn with --proxy-headers)."""
    return request.client.host if request.client else "unknown"


def rate_limit(request: Request, session: SessionDep) -> None:
    """429 with `Retry-After` when this token (or, without a valid token, this address) is over its rate."""
    limiter: RateLimiter = request.app.state.rate_limiter
    if not limiter.enabled or request.url.path in UNLIMITED_PATHS:
        return
    token = request_token(request, session)
    limiter.check(f"token:{token.id}" if token is not None else f"ip:{client_address(request)}")


RateLimited = Depends(rate_limit)


def _nul_refused(field: str, where: str, value: str) -> HTTPException:
    accepted = "text without NUL characters (\\u0000)"
    return HTTPException(
        status_code=422,
        detail=[
            {
                "field": field,
                "in": where,
                "value": value[:200],
                "accepted": accepted,
                "message": f"{field}: contains a NUL character; accepted: {accepted}",
            }
        ],
    )


def reject_nul_characters(request: Request) -> None:
    """422 for a NUL character in the path or a query parameter (PostgreSQL cannot store or compare one:
    it used to be a 500, found by the security tests). Body fields are checked by their models."""
    path = request.scope.get("path", "")
    if "\x00" in path:
        raise _nul_refused("path", "path", path)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise _nul_refused(name.replace("\x00", "\\u0000"), "query", value)


NoNulCharacters = Depends(reject_nul_characters)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"}
    )


def require_scope(scope: str, *, public_when_read_open: bool = False) -> Any:
    """A dependency that lets the request through only with a token granting `scope`."""

    def check(
        request: Request, session: SessionDep, settings: SettingsDep, credentials: Credentials
    ) -> ApiToken | None:
        if public_when_read_open and settings.public_read:
            return None
        # --- issue 5 (dashboard sign-in): the bearer header, else the dashboard's HttpOnly cookie. ---
        raw = credentials.credentials if credentials is not None else token_from_cookie(request)
        if credentials is None and raw is not None and not csrf_checked(request):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"a write signed in by cookie needs the header {CSRF_HEADER}: {CSRF_VALUE} (CSRF)",
            )
        # --- end issue 5 ---
        if raw is None:
            raise _unauthorized(f"this endpoint needs a bearer token with the {scope!r} scope")
        token = request_token(request, session)
        if token is None:
            raise _unauthorized("the bearer token is not valid (unknown or revoked)")
        if not grants(token, scope):
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"token {token.name!r} has scopes {token.scopes}; this endpoint needs {scope!r}",
            )
        return token

    return Depends(check)


ReadAccess = require_scope("read", public_when_read_open=True)
SubmitAccess = require_scope("submit")
AdminAccess = require_scope("admin")
