"""The dashboard at `/`: plain HTML/CSS/JS from `services/web/`, Plotly served from its Python package.

Every asset comes from this app (no CDN): the page, its script and style under `/static/`, and
`/static/vendor/plotly.min.js`, the file the `plotly` Python package ships (`services/api/vendor_assets.py`:
gzip when asked, GET and HEAD). Signing in works as in Jupyter: `/?token=...` checks the token and shows a
confirmation page whose same-origin POST stores it in the HttpOnly SameSite=Strict cookie (`signin.py`,
`services/api/cookies.py`) and redirects to `/`, so the token leaves the address bar and a link from another
site cannot sign anyone in. The page reads the API with that
cookie; `GET /api/v1/session` tells it whether it is signed in and may submit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.api.cookies import clear_token_cookie, csrf_checked, token_from_cookie
from services.api.deps import ReadAccess, SessionDep, SettingsDep
from services.api.routes.jobs import job_out
from services.api.routes.signin import confirmation_page
from services.api.routes.signin import router as signin_router
from services.api.vendor_assets import VENDOR_ASSETS, VENDOR_PREFIX, vendor_response
from services.auth.service import authenticate, grants
from services.jobs import service as jobs
from services.results import regressions
from services.results.service import get_result_for_job, trial_series

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
STATIC_DIR = WEB_DIR / "static"

router = APIRouter(tags=["dashboard"])


# The page loads only its own files and talks only to this API: no inline script, no other origin, no
# framing. Plotly sets inline style attributes on the SVG it draws, hence 'unsafe-inline' for styles only.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    # The page is tiny and changes with the app: never cached; the data comes from the API.
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False, response_model=None)
def dashboard(
    request: Request,
    session: SessionDep,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The dashboard; with `?token=` a valid token gets the sign-in confirmation page (`signin.py`)."""
    if token is None:
        return _index()
    known = authenticate(session, token)
    if known is None:
        return RedirectResponse("/?signin=invalid", status_code=303)
    return confirmation_page(token, known.name, PAGE_HEADERS)


@router.post("/auth/logout", include_in_schema=False, status_code=204)
def logout(request: Request) -> Response:
    """Forget the sign-in cookie (needs the CSRF header, like every cookie write)."""
    if not csrf_checked(request):
        raise HTTPException(status_code=403, detail="logout needs the header X-Requested-With: bpbench")
    response = Response(status_code=204)
    clear_token_cookie(response)
    return response


@router.api_route(VENDOR_PREFIX + "/{name}", methods=["GET", "HEAD"], include_in_schema=False)
def vendor_file(name: str, request: Request) -> Response:
    """Plotly's bundle and the API docs' scripts, from their installed packages (`vendor_assets.py`)."""
    asset = VENDOR_ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"no vendor file {name!r}")
    return vendor_response(request, asset)


@router.get("/api/v1/session", tags=["auth"])
def session_status(request: Request, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Who the caller is: signed in (bearer header or cookie) with which scopes; whether reads are public."""
    header = request.headers.get("Authorization", "")
    raw = header[7:].strip() if header.lower().startswith("bearer ") else token_from_cookie(request)
    token = authenticate(session, raw) if raw else None
    return {
        "signed_in": token is not None,
        "name": token.name if token else None,
        "scopes": list(token.scopes) if token else [],
        "can_read": settings.public_read or (token is not None and grants(token, "read")),
        "can_submit": token is not None and grants(token, "submit"),
        "public_read": settings.public_read,
        "via": None if token is None else ("cookie" if not header else "bearer"),
    }


@router.get("/api/v1/jobs/{job_id}/report", dependencies=[ReadAccess], tags=["jobs"])
def job_report(job_id: str, session: SessionDep) -> dict[str, Any]:
    """What the job page shows: the job, its full result (metrics, statistics, fingerprint), every trial
    grouped by series, and the regression verdict of its result against its device's history."""
    job = jobs.require_job(session, job_id)
    doc: dict[str, Any] = {"job": job_out(session, job).model_dump(mode="json"), "result": None}
    result = get_result_for_job(session, job_id)
    if result is None:
        return doc
    verdict = None
    if result.device_id is not None and result.samples_per_s is not None:
        verdicts = regressions.detect(
            session,
            device_id=result.device_id,
            spec_hash=result.spec_hash,
            latest_only=False,
            flagged_only=False,
        )
        verdict = next((v.as_dict() for v in verdicts if v.result_id == result.id), None)
    doc["result"] = {
        "id": result.id,
        "samples_per_s": result.samples_per_s,
        "samples_per_s_ci95": [result.samples_per_s_ci_low, result.samples_per_s_ci_high],
        "metrics": result.metrics,
        "statistics": result.statistics,
        "fingerprint": result.fingerprint,
        "trials": trial_series(session, result.id),
        "regression": verdict,
    }
    return doc


def install_dashboard(app: FastAPI) -> None:
    """Add the dashboard's routes and its static files (`/static/`) to `app`."""
    app.include_router(router)
    app.include_router(signin_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
