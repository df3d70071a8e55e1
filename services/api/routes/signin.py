"""Sign-in by link without login CSRF: `/?token=...` shows a confirmation page; only its same-origin POST
sets the cookie.

A link is something any site can make a victim's browser open, so following one must not sign the victim
in as whoever made it (their later submissions would land in the attacker's account, and the attacker's
token would be theirs to read). The link's page names the token's owner and posts the token back to
`POST /auth/signin`, which sets the cookie only for a request its browser marks as same-origin
(`Sec-Fetch-Site: same-origin`, or, from a browser without fetch metadata, an `Origin` equal to ours).
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api.cookies import set_token_cookie
from services.api.deps import SessionDep
from services.auth.service import authenticate

router = APIRouter(tags=["dashboard"])

SIGNIN_PATH = "/auth/signin"
MAX_FORM_BYTES = 1024


def confirmation_page(token: str, name: str, headers: dict[str, str]) -> HTMLResponse:
    """The page a sign-in link opens: whose token it is and a button that posts it back to this origin."""
    page = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>bpbench: sign in?</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/style.css">
</head>
<body>
  <main id="signin-confirm">
    <h1>Sign in to bpbench?</h1>
    <p>This link signs this browser in with the token named <strong>{html.escape(name)}</strong>.
    Continue only if you opened it yourself, for example from <code>bpbench up</code>.</p>
    <form method="post" action="{SIGNIN_PATH}">
      <input type="hidden" name="token" value="{html.escape(token, quote=True)}">
      <button type="submit" id="signin-confirm-button">Sign in as {html.escape(name)}</button>
      <a href="/">Cancel</a>
    </form>
  </main>
</body>
</html>
"""
    return HTMLResponse(page, headers=headers)


def same_origin(request: Request) -> bool:
    """True when the browser says this request comes from a page of this origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    origin = request.headers.get("Origin")
    host = request.headers.get("Host")
    return origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"


async def _form_token(request: Request) -> str | None:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    values = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=4).get("token", [])
    return values[0] if len(values) == 1 else None


CROSS_SITE = (
    "sign-in must be confirmed on this site's own page (a same-origin POST); open the sign-in link again"
)


@router.post(SIGNIN_PATH, include_in_schema=False, response_model=None)
async def signin(request: Request, session: SessionDep) -> Response:
    """Set the sign-in cookie from the confirmation page's form (same origin only), then go to `/`."""
    if not same_origin(request):
        raise HTTPException(status_code=403, detail=CROSS_SITE)
    token = await _form_token(request)
    if not token or authenticate(session, token) is None:
        return RedirectResponse("/?signin=invalid", status_code=303)
    response = RedirectResponse("/", status_code=303)
    set_token_cookie(response, request, token)
    return response
