"""The HTTP client of the bpbench API: requests and answers only, no printing.

It speaks to `BPBENCH_API_URL`, else to the address a running `bpbench up` wrote in `DATA_DIR/api-url`,
else http://127.0.0.1:8000, with the token from `BPBENCH_API_TOKEN` or `DATA_DIR/api-token` (which `up`
writes). Every failure, a refused connection as much as an HTTP error, is a `ClientError` whose message is
already one line for a person; a 401 says where the token was looked for.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from services.core.config import Settings, get_settings

# Written by `bpbench up` while it serves (removed when it stops): the address its API listens on.
API_URL_FILE = "api-url"
# A full job id is a UUID4 (36 characters); anything shorter is looked up as the start of one.
FULL_JOB_ID_LENGTH = 36
MAX_CANDIDATES_SHOWN = 10


class ClientError(Exception):
    """A failure talking to the API, already worded for a person (one line)."""


def api_url(settings: Settings) -> str:
    """`BPBENCH_API_URL` when set, else the address of the `bpbench up` serving from this data directory,
    else the setting's default."""
    if "api_url" in settings.model_fields_set:
        return settings.api_url
    try:
        written = (settings.data_dir / API_URL_FILE).read_text().strip()
    except OSError:
        return settings.api_url
    return written or settings.api_url


def token_hint(settings: Settings, token: str | None) -> str:
    """Where the token was looked for, for a 401."""
    if token is None:
        return (
            f"no token found: set BPBENCH_API_TOKEN, or put the token in {settings.api_token_file} "
            "(`bpbench up` writes it there and prints it)"
        )
    source = "BPBENCH_API_TOKEN" if settings.api_token else str(settings.api_token_file)
    return (
        f"the token sent came from {source}; `bpbench up` writes its token to DATA_DIR/api-token and "
        "prints it, `bpbench token create` makes a new one"
    )


def read_token(settings: Settings) -> str | None:
    """The API token: `BPBENCH_API_TOKEN`, else the file `bpbench up` wrote in the data directory."""
    if settings.api_token:
        return settings.api_token
    path = settings.api_token_file
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _http_error_message(response: httpx.Response, unauthorized_hint: str | None = None) -> str:
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
    message = (
        f"HTTP {response.status_code} from {response.request.method} {response.request.url.path}: {detail}"
    )
    if response.status_code == 401 and unauthorized_hint:
        message += f" ({unauthorized_hint})"
    return message


class ApiClient:
    """A small synchronous client of the bpbench API; every failure is a `ClientError`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        unauthorized_hint: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.unauthorized_hint = unauthorized_hint
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ApiClient:
        """A client for `BPBENCH_API_URL` (or the running `bpbench up`'s) with the token from the environment
        or the data directory."""
        settings = settings or get_settings()
        token = read_token(settings)
        return cls(api_url(settings), token, unauthorized_hint=token_hint(settings, token))

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
            raise ClientError(_http_error_message(response, self.unauthorized_hint))
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

    def resolve_job_id(self, text: str) -> str:
        """The full id of the job whose id is `text` or starts with it (the short ids `jobs` prints).

        An unknown prefix, or one that several jobs share (their ids listed), is a `ClientError`."""
        text = text.strip().lower()
        if len(text) >= FULL_JOB_ID_LENGTH or not text or any(c not in "0123456789abcdef-" for c in text):
            return text  # a whole id, or no id's start at all: the API answers it (404 when unknown)
        page = self.get("/api/v1/jobs", id_prefix=text, limit=MAX_CANDIDATES_SHOWN + 1)
        ids = [str(item["id"]) for item in page["items"]]
        if not ids:
            raise ClientError(f"no job id starts with {text!r} (see `bpbench jobs`)")
        if len(ids) > 1:
            shown = ", ".join(ids[:MAX_CANDIDATES_SHOWN])
            more = (
                f" and {page['total'] - MAX_CANDIDATES_SHOWN} more"
                if page["total"] > MAX_CANDIDATES_SHOWN
                else ""
            )
            raise ClientError(
                f"{text!r} is the start of {page['total']} job ids: {shown}{more}; give more characters"
            )
        return ids[0]
