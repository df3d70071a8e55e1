"""Readable 422s: every refused value is reported with the field, the value seen and what is accepted.

FastAPI's default 422 repeats pydantic's raw error list (`loc`, `msg`, `type`). Here each error becomes
`{"field": "steps", "value": 0, "accepted": "an integer from 1 to 1000000", "message": "..."}`, where the
accepted range is read from the model's own constraints (both bounds, not only the one violated), so the
bound lives in one place: `services/jobs/spec.py`.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal, Union

import annotated_types as at
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.json_body import is_json_media_type, printable
from services.jobs.service import JobNotFound
from services.results.compare import NoResults, UnknownBaseline

# Where a request's parts come from, as FastAPI writes the first element of `loc`.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


class FieldError(BaseModel):
    """One refused value: where it was, what was seen and what is accepted."""

    model_config = ConfigDict(populate_by_name=True)

    field: str = Field(description="dotted path of the value (`model.layers.1`), or the part (`body`)")
    in_: str = Field(alias="in", description="body, query, path, header or cookie")
    value: Any = Field(description="the value seen (long values cut at 200 characters)")
    accepted: str = Field(description="what would be accepted, from the model's own constraints")
    error: str | None = Field(None, description="the validator's own words")
    message: str = Field(description="one line for people: field, value, accepted")


class ValidationErrorBody(BaseModel):
    """The body of a 422: every refused value, and all of them in one line."""

    detail: list[FieldError]
    message: str | None = None


class ErrorMessage(BaseModel):
    """The body of every other error: what went wrong and, where it helps, what to do."""

    detail: str


def field_error(
    field: str, where: str, value: Any, accepted: str, message: str, *, error: str | None = None
) -> dict[str, Any]:
    """One item of a 422's `detail` (`FieldError`): the refused value, where it was, what is accepted."""
    item = {"field": field, "in": where, "value": value, "accepted": accepted}
    if error is not None:
        item["error"] = error
    item["message"] = message
    return item


def unprocessable(field: str, where: str, value: Any, accepted: str, message: str) -> HTTPException:
    """The 422 for one value the request models cannot check themselves (it needs the database or the
    server's settings): `{"detail": [field_error(...)]}`."""
    return HTTPException(status_code=422, detail=[field_error(field, where, value, accepted, message)])


def validation_error_body(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of the 422 for a request its models refused: every item, and all of them in one line."""
    return {"detail": items, "message": "; ".join(item["message"] for item in items)}


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """Strip `Annotated[...]` and `X | None`, collecting the constraint metadata on the way."""
    metadata: list[Any] = []
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            args = typing.get_args(annotation)
            annotation = args[0]
            for extra in args[1:]:
                metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
        elif origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, metadata
            annotation = members[0]
        else:
            return annotation, metadata


def _resolve(model: type[BaseModel], path: list[str | int]) -> tuple[Any, list[Any]] | None:
    """The annotation and constraints of the value at `path` inside `model`, or None if unknown."""
    annotation: Any = model
    metadata: list[Any] = []
    for part in path:
        annotation, _ = _unwrap(annotation)
        if isinstance(part, int):
            if typing.get_origin(annotation) is not list:
                return None
            (annotation,) = typing.get_args(annotation)
            metadata = []
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation, metadata = field.annotation, list(field.metadata)
        else:
            return None
    annotation, more = _unwrap(annotation)
    return annotation, metadata + more


def _bounds_text(metadata: list[Any]) -> list[str]:
    words: list[str] = []
    for item in metadata:
        if isinstance(item, at.Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, at.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, at.Le):
            words.append(f"<= {item.le}")
        elif isinstance(item, at.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, at.MinLen):
            words.append(f"at least {item.min_length} items")
        elif isinstance(item, at.MaxLen):
            words.append(f"at most {item.max_length} items")
    return words


def describe_accepted(model: type[BaseModel] | None, path: list[str | int]) -> str | None:
    """What the field at `path` of `model` accepts, in words (`an integer >= 1 and <= 1000000`)."""
    if model is None:
        return None
    if not path:
        return f"a JSON object of {model.__name__}"
    resolved = _resolve(model, path)
    if resolved is None:
        return None
    annotation, metadata = resolved
    bounds = " and ".join(_bounds_text(metadata))
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return f"a list ({bounds})" if bounds else "a list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "an object with fields " + ", ".join(annotation.model_fields)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    noun = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{noun} {bounds}" if bounds else noun


def _short(value: Any) -> Any:
    """Echo the value seen, but never a whole document back, and only what JSON can hold (no raw bytes,
    no NaN, no lone surrogate: an answer that cannot be encoded would be a 500 instead of this 422)."""
    value = printable(value)
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:400]).decode("utf-8", errors="replace")
    if isinstance(value, dict | list):
        text = repr(value)
        return value if len(text) <= 200 else text[:200] + "..."
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    return value


def _accepted_from_context(ctx: dict[str, Any]) -> str | None:
    """The accepted range from pydantic's error context (query and path parameters)."""
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    if "pattern" in ctx:
        return f"a string matching {ctx['pattern']}"
    words = [
        f"{op} {ctx[key]}" for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if key in ctx
    ]
    for key, noun in (("min_length", "at least"), ("max_length", "at most")):
        if key in ctx:
            words.append(f"{noun} {ctx[key]} long")
    return " and ".join(words) or None


def readable_errors(errors: list[dict[str, Any]], body_model: type[BaseModel] | None) -> list[dict[str, Any]]:
    """Reshape pydantic/FastAPI errors into `{field, value, accepted, message}` items."""
    items: list[dict[str, Any]] = []
    for error in errors:
        loc = list(error.get("loc", ()))
        where = loc.pop(0) if loc and loc[0] in _LOCATIONS else "body"
        field = printable(".".join(str(p) for p in loc)) or where
        value = _short(error.get("input"))
        raw = str(error.get("msg", "invalid value"))
        reason = raw.removeprefix("Value error, ")
        kind = error.get("type", "")
        ctx = error.get("ctx") or {}
        if "accepted" in error:
            # Refused while reading the body (services/api/json_body.py), which says what is accepted.
            accepted = error["accepted"]
            message = f"{field}: {reason}; accepted: {accepted}"
        elif kind == "extra_forbidden":
            parent = _resolve(body_model, loc[:-1]) if body_model is not None and where == "body" else None
            fields = (
                list(parent[0].model_fields)
                if parent and isinstance(parent[0], type) and issubclass(parent[0], BaseModel)
                else None
            )
            accepted = "known fields: " + ", ".join(fields) if fields else "no unknown fields"
            message = f"{field}: unknown field; accepted: {accepted}"
        elif kind == "value_error":
            # Cross-field checks (model validators) already say the value and what is accepted.
            accepted = reason
            message = f"{field}: {reason}"
        else:
            found = describe_accepted(body_model, loc) if where == "body" else None
            accepted = found or _accepted_from_context(ctx) or reason
            message = f"{field}: got {value!r}; accepted: {accepted}"
        items.append(field_error(field, where, value, accepted, message, error=reason))
    return items


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model of the matched route's JSON body, if it has one."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


# Errors any route may answer besides its own, documented in the OpenAPI schema (`document_errors`).
_AUTH_ERRORS = {
    "401": "no token, or a token that is unknown or revoked",
    "403": "the token lacks the scope this endpoint needs (or a cookie write lacks the CSRF header)",
}
_BODY_ERRORS = {
    "400": "the body is not readable (not UTF-8 JSON)",
    "413": "the body is larger than BPBENCH_MAX_BODY_BYTES",
    "415": "the body is not sent as application/json",
}
_RATE_LIMITED = "too many requests for this token (or address); retry after `Retry-After` seconds"
_UNLIMITED_PATHS = ("/healthz", "/readyz")


def _error_content(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Document in `schema` (in place) the error answers the app gives besides each route's own:

    the readable 422 body instead of FastAPI's default, 401/403 on every route that needs a token, 429 on
    every rate-limited route, 400/413 on every route with a body, 404 on every route with a path parameter.
    """
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    ref = "#/components/schemas/{model}"
    # Keep FastAPI's names, so every existing `$ref` now points at the body this app really sends.
    schemas["HTTPValidationError"] = ValidationErrorBody.model_json_schema(ref_template=ref)
    schemas["HTTPValidationError"]["properties"]["detail"]["items"] = {
        "$ref": "#/components/schemas/ValidationError"
    }
    schemas["HTTPValidationError"].pop("$defs", None)
    schemas["ValidationError"] = FieldError.model_json_schema(ref_template=ref, by_alias=True)
    schemas["ErrorMessage"] = ErrorMessage.model_json_schema(ref_template=ref)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            extra: dict[str, str] = {}
            if operation.get("security"):
                extra.update(_AUTH_ERRORS)
            if "requestBody" in operation:
                extra.update(_BODY_ERRORS)
            if "{" in path:
                extra["404"] = "no such resource"
            if path not in _UNLIMITED_PATHS:
                extra["429"] = _RATE_LIMITED
            for code, description in extra.items():
                responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if code.startswith(("4", "5")) and code != "422" and "content" not in response:
                    response["content"] = _error_content("ErrorMessage")
            if "429" in responses:
                responses["429"].setdefault(
                    "headers",
                    {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
                )
    return schema


_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _allowed_methods(request: Request) -> list[str]:
    """Every documented method of this path (Starlette's 405 names only the first matching route's)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        parts = re.split(r"\{[^/}]+\}", template)
        if re.fullmatch("[^/]+".join(re.escape(part) for part in parts), path):
            methods |= {method.upper() for method in operations if method in _HTTP_METHODS}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Install the readable 422 and the complete 405 handlers on `app`; document the errors in OpenAPI."""

    async def on_method_not_allowed(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routes left out of the schema (the dashboard's) keep Starlette's own answer.
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "").split(", ")
        return JSONResponse(
            status_code=405,
            content={"detail": f"method {request.method} not allowed here; allowed: {', '.join(allowed)}"},
            headers={"Allow": ", ".join(allowed)},
        )

    app.add_exception_handler(405, on_method_not_allowed)  # type: ignore[arg-type]

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        model = _body_model(request)
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if model is not None and media_type and not is_json_media_type(media_type):
            # FastAPI hands a non-JSON body over as bytes, which can only fail validation: say why.
            return JSONResponse(
                status_code=415,
                content={"detail": f"Content-Type {media_type[:100]!r}: accepted: application/json"},
            )
        return JSONResponse(
            status_code=422, content=validation_error_body(readable_errors(list(exc.errors()), model))
        )

    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]


def install_domain_error_handlers(app: FastAPI) -> None:
    """Answer the services' own exceptions the same way on every route: an unknown job or no matching
    result is a 404 with the service's message; an unknown comparison baseline is a 422 on `baseline`."""

    async def on_not_found(_request: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    async def on_unknown_baseline(request: Request, exc: UnknownBaseline) -> JSONResponse:
        # The service names the accepted devices; the value refused is the request's own `baseline`.
        baseline = request.query_params.get("baseline")
        item = field_error("baseline", "query", baseline, str(exc), str(exc))
        return JSONResponse(status_code=422, content={"detail": [item]})

    app.add_exception_handler(JobNotFound, on_not_found)  # type: ignore[arg-type]
    app.add_exception_handler(NoResults, on_not_found)  # type: ignore[arg-type]
    app.add_exception_handler(UnknownBaseline, on_unknown_baseline)  # type: ignore[arg-type]
