"""The dashboard's sign-in cookie, as Jupyter does it: `/?token=...` once, then an HttpOnly cookie.

The cookie holds the API token itself (HttpOnly: page scripts cannot read it; SameSite=Strict: no other
site's page sends it; Secure when served over HTTPS). A write authenticated by the cookie alone must also
carry `X-Requested-With: bpbench`: a cross-site form cannot set that header and a cross-site script would
need a CORS preflight the API never grants, so the cookie cannot be used to forge a write (CSRF).
A request with an `Authorization: Bearer` header does not use the cookie and needs no such header.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

COOKIE_NAME = "bpbench_token"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "bpbench"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE_MAX_AGE_S = 30 * 24 * 3600


def token_from_cookie(request: Request) -> str | None:
    """The API token of the sign-in cookie, if the request has one."""
    value = request.cookies.get(COOKIE_NAME)
    return value or None


def csrf_checked(request: Request) -> bool:
    """True when a cookie-authenticated request may proceed: a safe method, or the custom header present."""
    return request.method in SAFE_METHODS or request.headers.get(CSRF_HEADER) == CSRF_VALUE


def set_token_cookie(response: Response, request: Request, token: str) -> None:
    """Store the token in the HttpOnly, SameSite=Strict sign-in cookie (Secure over HTTPS)."""
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_token_cookie(response: Response) -> None:
    """Remove the sign-in cookie."""
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
