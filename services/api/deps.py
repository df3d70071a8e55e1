"""The API's dependencies: settings, a database session per request, and bearer-token checks by scope.

Scopes: `read` for every GET under /api/v1 (open to all when `BPBENCH_PUBLIC_READ=true`), `submit` to create
or cancel jobs, `admin` for everything. A missing or unknown token is a 401 with `WWW-Authenticate: Bearer`;
a known token without the scope is a 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from services.api.cookies import CSRF_HEADER, CSRF_VALUE, csrf_checked, token_from_cookie
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
        token = authenticate(session, raw)
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
