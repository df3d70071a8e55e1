"""Request bodies read strictly, and text made safe to send back.

Python's `json.loads` (what FastAPI uses) takes more than JSON (RFC 8259): `NaN` and `Infinity`, numbers
too large for a float (`1e400` becomes infinity), lone UTF-16 surrogates (`"\\ud800"`, not a Unicode scalar
value: no database or JSON encoder downstream can store or send it back), and a key given twice (the last
one silently wins). `StrictJSONRoute` reads the body of every route of its router itself and refuses each
such value with a 422 that names the field, before any model sees it; a body that is not JSON at all is a
422 naming the line and column; a body without a Content-Type is a 415. The parsed document is handed to
FastAPI as the request's JSON, so it is parsed once.

`printable` is the other direction: any value made fit for a JSON answer (lone surrogates replaced by
U+FFFD, non-finite floats written as text), for what was stored before these checks and for echoing
refused values in a 422.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

# What each refusal accepts instead (one place for the 422 texts).
ACCEPTED_TEXT = "text of Unicode characters (no lone UTF-16 surrogate such as \\ud800)"
ACCEPTED_NUMBER = "a finite number (not NaN, Infinity or a number beyond the float range, about 1.8e308)"
ACCEPTED_KEYS = "each key at most once in an object"
ACCEPTED_JSON = "a JSON document (RFC 8259) encoded in UTF-8"
ACCEPTED_MEDIA_TYPE = "application/json"

_SURROGATE = re.compile("[\ud800-\udfff]")


class _NonFinite:
    """A number as written in the body that is not a finite float (`NaN`, `-Infinity`, `1e400`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _RepeatedKeys(dict[str, Any]):
    """An object of the body that named some keys more than once (the last value is kept, to point at)."""

    __slots__ = ("repeated",)

    def __init__(self, pairs: list[tuple[str, Any]], repeated: list[str]) -> None:
        super().__init__(pairs)
        self.repeated = repeated


# A lone surrogate can only come from a `\uD800`-`\uDFFF` escape (UTF-8 text cannot hold one raw).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _repeated_keys(pairs: list[tuple[str, Any]]) -> _RepeatedKeys:
    seen: set[str] = set()
    repeated = [key for key, _ in pairs if key in seen or seen.add(key)]  # type: ignore[func-returns-value]
    return _RepeatedKeys(pairs, list(dict.fromkeys(repeated)))


def is_valid_text(text: str) -> bool:
    """Whether `text` is Unicode scalar values only (no lone surrogate): what UTF-8 and databases hold."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\ud800`): printable, and still telling."""
    return text if is_valid_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(value: Any) -> Any:
    """`value` fit for a JSON answer: lone surrogates replaced by U+FFFD (in keys too), non-finite floats
    written as text. Values that are already fit are returned as they are (no copy)."""
    if isinstance(value, str):
        return value if is_valid_text(value) else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, _NonFinite):
        return value.text
    if isinstance(value, dict):
        items = [(printable(k), printable(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        members = [printable(v) for v in value]
        return value if all(a is b for a, b in zip(members, value, strict=True)) else members
    return value


def _refusal(loc: list[str | int], value: Any, reason: str, accepted: str) -> dict[str, Any]:
    # A pydantic-shaped error, with what is accepted already said (`errors.readable_errors` uses it).
    return {"type": "json_value", "loc": ("body", *loc), "msg": reason, "input": value, "accepted": accepted}


def unfit_values(document: Any) -> list[dict[str, Any]]:
    """Every value of a parsed body that JSON or the database cannot hold, as pydantic-shaped errors."""
    errors: list[dict[str, Any]] = []

    def visit(value: Any, loc: list[str | int]) -> None:
        if isinstance(value, str):
            if not is_valid_text(value):
                reason = "contains a lone UTF-16 surrogate"
                errors.append(_refusal(loc, escaped(value), reason, ACCEPTED_TEXT))
        elif isinstance(value, _NonFinite):
            errors.append(_refusal(loc, value.text, "is not a finite number", ACCEPTED_NUMBER))
        elif isinstance(value, dict):
            for key in getattr(value, "repeated", ()):
                seen = printable(value[key])
                errors.append(_refusal([*loc, escaped(key)], seen, "key given more than once", ACCEPTED_KEYS))
            for key, member in value.items():
                if not is_valid_text(key):
                    reason = "key contains a lone UTF-16 surrogate"
                    errors.append(_refusal([*loc, escaped(key)], escaped(key), reason, ACCEPTED_TEXT))
                    continue
                visit(member, [*loc, key])
        elif isinstance(value, list):
            for index, member in enumerate(value):
                visit(member, [*loc, index])

    visit(document, [])
    return errors


def parse_strict(body: bytes) -> Any:
    """The JSON document `body`, or RequestValidationError naming each value or the place that is not JSON."""
    flagged: list[str] = []  # the parse marks what the walk (which costs more than the parse) must look at

    def as_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) == len(pairs):
            return result
        flagged.append("repeated key")
        return _repeated_keys(pairs)

    def as_number(text: str) -> float | _NonFinite:
        value = float(text)
        if math.isfinite(value):
            return value
        flagged.append(text)
        return _NonFinite(text)

    def as_constant(text: str) -> _NonFinite:
        flagged.append(text)
        return _NonFinite(text)

    try:
        text = body.decode("utf-8")
        document = json.loads(
            text, object_pairs_hook=as_object, parse_float=as_number, parse_constant=as_constant
        )
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8: byte {exc.start} is {body[exc.start : exc.start + 1]!r}"
        raise RequestValidationError([_refusal([], None, reason, ACCEPTED_JSON)]) from None
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        snippet = exc.doc[max(0, exc.pos - 20) : exc.pos + 20]
        raise RequestValidationError([_refusal([], escaped(snippet), reason, ACCEPTED_JSON)]) from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise RequestValidationError([_refusal([], None, f"not valid JSON: {exc}", ACCEPTED_JSON)]) from None
    if flagged or _SURROGATE_ESCAPE.search(text):
        errors = unfit_values(document)
        if errors:
            raise RequestValidationError(errors)
    return document


def is_json_media_type(media_type: str) -> bool:
    """Whether a lower-case media type (no parameters) is JSON: `application/json` or `application/*+json`."""
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is read by `parse_strict` (routers pass it as `route_class`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def read_strictly(request: Request) -> Response:
            body = await request.body()
            if body:
                media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if not media_type:
                    detail = f"no Content-Type; accepted: {ACCEPTED_MEDIA_TYPE}"
                    raise HTTPException(status_code=415, detail=detail)
                if is_json_media_type(media_type):
                    # Starlette's cache of the parsed body: FastAPI takes it from here, not parsing again.
                    request._json = parse_strict(body)
            return await handler(request)

        return read_strictly
