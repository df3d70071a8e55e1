"""The HTTP client of the bpbench API: requests and answers only, no printing.

It speaks to `BPBENCH_API_URL` (default http://127.0.0.1:8000) with the token from `BPBENCH_API_TOKEN` or
`DATA_DIR/api-token`. Every failure, a refused connection as much as an HTTP error, is a `ClientError`
whose message is already one line for a person.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from services.core.config import Settings, get_settings


class ClientError(Exception):
    """A failure talking to the API, already worded for a person (one line)."""


def read_token(settings: Settings) -> str | None:
    """The API token: `BPBENCH_API_TOKEN`, else the file `bpbench up` wrote in the data directory."""
    if settings.api_token:
        return settings.api_token
    path = settings.api_token_file
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _http_error_message(response: httpx.Response) -> str:
    """`HTTP 422: steps: ...` from an error response, whatever its body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail: Any = None
    if isinstance(body, dict):
        detail = body.get("message") or body.get("detail")
    if isinstance(detail, list):
        detail = "; ".join(str(d.get("message", d) if isinstance(d, dict) else d) for d in detail)
    if detail is None:
        detail = response.text.strip()[:300] or response.reason_phrase
    return f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}: {detail}"


class ApiClient:
    """A small synchronous client of the bpbench API; every failure is a `ClientError`."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ApiClient:
        """A client for `BPBENCH_API_URL` with the token from the environment or the data directory."""
        settings = settings or get_settings()
        return cls(settings.api_url, read_token(settings))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # A 429 is waited out (its Retry-After, at most this long) this many times before it is an error.
    RATE_LIMIT_RETRIES = 3
    RATE_LIMIT_MAX_WAIT_S = 10.0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise `ClientError` on a connection failure or a non-2xx answer.

        A 429 (rate limited) is retried after its `Retry-After`, up to `RATE_LIMIT_RETRIES` times."""
        for _ in range(self.RATE_LIMIT_RETRIES):
            response = self._send(method, path, **kwargs)
            if response.status_code != 429:
                break
            try:
                wait_s = float(response.headers.get("Retry-After", "1"))
            except ValueError:
                wait_s = 1.0
            time.sleep(min(max(wait_s, 0.1), self.RATE_LIMIT_MAX_WAIT_S))
        else:
            response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise ClientError(_http_error_message(response))
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ClientError(
                f"cannot reach the bpbench API at {self.base_url} (connection refused); "
                "start it with `bpbench up` or `bpbench api`, or set BPBENCH_API_URL"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(f"the bpbench API at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ClientError(f"request to {self.base_url}{path} failed: {exc}") from None

    def get(self, path: str, **params: Any) -> Any:
        """GET `path` with the query parameters that are not None; the decoded JSON."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body; the decoded JSON."""
        return self.request("POST", path, json=body).json()
