"""Schemathesis hooks that make request bodies hostile: JSON as Python writes it, not as RFC 8259 allows.

Loaded by `SCHEMATHESIS_HOOKS=tests.support.hostile_json`. Schemathesis generates JSON bodies from the
OpenAPI schema, which never hold a lone UTF-16 surrogate or a non-finite number; these hooks put such
values into the generated bodies (in place of any string, number or key, or inside a string) and send
them as Python's `json.dumps` writes them: `"\\ud800"`, `NaN`, `Infinity`, `-Infinity` and `1e400`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import hypothesis.strategies as st
import schemathesis

BEYOND_FLOAT = "__bpbench-fuzz-1e400__"  # written as the JSON number 1e400 by the serializer

SURROGATES = st.characters(categories=["Cs"])
SURROGATE_TEXT = st.tuples(st.text(max_size=4), SURROGATES, st.text(max_size=4)).map("".join)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, BEYOND_FLOAT])
HOSTILE_VALUES = st.one_of(SURROGATE_TEXT, NON_FINITE)

Path = tuple[str | int, ...]


def _places(value: Any, path: Path = ()) -> list[Path]:
    """Every place in a document where a value could stand (the root, members, items)."""
    places = [path]
    if isinstance(value, dict):
        for key, member in value.items():
            places.extend(_places(member, (*path, key)))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            places.extend(_places(member, (*path, index)))
    return places


def _replaced(document: Any, path: Path, new: Any, as_key: bool) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(document, dict):
        copy = dict(document)
        if as_key and not rest and isinstance(new, str):
            copy[new] = copy.pop(head)  # type: ignore[call-overload]
        else:
            copy[head] = _replaced(document[head], tuple(rest), new, as_key)  # type: ignore[index]
        return copy
    items = list(document)
    items[head] = _replaced(items[head], tuple(rest), new, as_key)  # type: ignore[call-overload]
    return items


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """The generated body, or the same body with one value (or key) hostile: about half of each."""
    places = _places(body)
    hostile = st.builds(
        lambda path, value, as_key: _replaced(body, path, value, as_key),
        st.sampled_from(places),
        HOSTILE_VALUES,
        st.booleans(),
    )
    return st.one_of(st.just(body), hostile)


def hostile_json(context: Any, value: Any) -> bytes:
    """JSON as Python's `json.dumps` writes it: NaN, Infinity and escaped lone surrogates included."""
    if isinstance(value, bytes):
        return value  # an explicit raw example
    # ASCII: a lone surrogate is written as its escape; anything else JSON lacks (bytes inside) as text.
    text = json.dumps(value, allow_nan=True, default=str)
    return text.replace(json.dumps(BEYOND_FLOAT), "1e400").encode("ascii")


schemathesis.serializer("application/json")(hostile_json)  # registers; the decorator returns None
