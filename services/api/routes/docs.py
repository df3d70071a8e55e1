"""`/docs` (Swagger UI) and `/redoc` (ReDoc), drawn with files this app serves: they work offline.

FastAPI's own pages load their scripts from a CDN; this is FastAPI's self-hosting recipe instead
(`docs_url=None, redoc_url=None` in `create_app`, and these routes), with the files of `fastapi-offline`
served at `/static/vendor/` (`services/api/vendor_assets.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse

from services.api.vendor_assets import vendor_url

OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


def install_api_docs(app: FastAPI) -> None:
    """Add `/docs`, its OAuth2 redirect page and `/redoc` to an app made without FastAPI's own pages."""
    router = APIRouter(include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"

    @router.get("/docs")
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=vendor_url("swagger-ui-bundle.js"),
            swagger_css_url=vendor_url("swagger-ui.css"),
            swagger_favicon_url=vendor_url("favicon.png"),
        )

    @router.get(OAUTH2_REDIRECT_URL)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=vendor_url("redoc.standalone.js"),
            redoc_favicon_url=vendor_url("favicon.png"),
            with_google_fonts=False,
        )

    app.include_router(router)
