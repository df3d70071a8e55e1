"""Third-party browser files served by the app itself, from the Python packages that ship them (no CDN).

Plotly's bundle draws the dashboard's charts; Swagger UI and ReDoc (from `fastapi-offline`) draw `/docs`
and `/redoc`. Each is answered at `/static/vendor/<name>` for GET and HEAD, gzip-compressed when the client
accepts it (compressed once per process, on first use: plotly.min.js is 4.8 MB, 1.4 MB gzipped), and cached
by the browser for a day with the package's version as its ETag (the URL has no version in it, so the
cache is revalidated rather than `immutable`).
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from pathlib import Path

import fastapi_offline
import plotly
from fastapi import Request
from fastapi.responses import Response

PLOTLY_DIR = Path(plotly.__file__).resolve().parent / "package_data"
DOCS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
VENDOR_PREFIX = "/static/vendor"
MAX_AGE_S = 86_400


@dataclass
class VendorAsset:
    """One file of an installed package, its media type, and the package version that names its copy."""

    path: Path
    media_type: str
    version: str
    _gzipped: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def etag(self) -> str:
        return f'"{self.path.name}-{self.version}"'

    def body(self, *, compressed: bool) -> bytes:
        """The file's bytes, or their gzip (made once; concurrent first requests compress it once)."""
        if not compressed:
            return self.path.read_bytes()
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.path.read_bytes(), compresslevel=6, mtime=0)
            return self._gzipped


def _package_version(module: object) -> str:
    return str(getattr(module, "__version__", None) or "installed")


def _fastapi_offline_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fastapi-offline")
    except PackageNotFoundError:
        return "installed"


VENDOR_ASSETS: dict[str, VendorAsset] = {
    "plotly.min.js": VendorAsset(PLOTLY_DIR / "plotly.min.js", "text/javascript", _package_version(plotly)),
    **{
        name: VendorAsset(DOCS_DIR / name, media_type, _fastapi_offline_version())
        for name, media_type in (
            ("swagger-ui-bundle.js", "text/javascript"),
            ("swagger-ui.css", "text/css"),
            ("redoc.standalone.js", "text/javascript"),
            ("favicon.png", "image/png"),
        )
    },
}


def vendor_url(name: str) -> str:
    """The app's URL of a vendor file (a key of `VENDOR_ASSETS`)."""
    if name not in VENDOR_ASSETS:
        raise KeyError(f"no vendor asset {name!r}; known: {', '.join(VENDOR_ASSETS)}")
    return f"{VENDOR_PREFIX}/{name}"


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


def vendor_response(request: Request, asset: VendorAsset) -> Response:
    """GET or HEAD of a vendor file: 304 on a matching ETag, gzip when accepted (images stay as they are)."""
    headers = {
        "Cache-Control": f"public, max-age={MAX_AGE_S}",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    compressed = _accepts_gzip(request) and not asset.media_type.startswith("image/")
    body = asset.body(compressed=compressed)
    if compressed:
        headers["Content-Encoding"] = "gzip"
    headers["Content-Length"] = str(len(body))
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers, media_type=asset.media_type)
    return Response(body, headers=headers, media_type=asset.media_type)
