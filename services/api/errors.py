"""Readable 422s: every refused value is reported with the field, the value seen and what is accepted.

FastAPI's default 422 repeats pydantic's raw error list (`loc`, `msg`, `type`). Here each error becomes
`{"field": "steps", "value": 0, "accepted": "an integer from 1 to 1000000", "message": "..."}`, where the
accepted range is read from the model's own constraints (both bounds, not only the one violated), so the
bound lives in one place: `services/jobs/spec.py`.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

import annotated_types as at
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.fields import FieldInfo

# Where a request's parts come from, as FastAPI writes the first element of `loc`.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


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
    """Echo the value seen, but never a whole document back."""
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
        field = ".".join(str(p) for p in loc) or where
        value = _short(error.get("input"))
        raw = str(error.get("msg", "invalid value"))
        reason = raw.removeprefix("Value error, ")
        kind = error.get("type", "")
        ctx = error.get("ctx") or {}
        if kind == "extra_forbidden":
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
        items.append(
            {
                "field": field,
                "in": where,
                "value": value,
                "accepted": accepted,
                "error": reason,
                "message": message,
            }
        )
    return items


def _body_model(request: Request) -> type[BaseModel] | None:
    """The pydantic model of the matched route's JSON body, if it has one."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Install the readable 422 handler on `app`."""

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        model = _body_model(request)
        detail = readable_errors(list(exc.errors()), model)
        return JSONResponse(
            status_code=422,
            content={"detail": detail, "message": "; ".join(item["message"] for item in detail)},
        )

    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
