"""The machinery of the device grammar: a backend's words, the grammar they make, a parsed device.

Pure Python and import-free, so the engine's spec, the backend registry and the API all build on it.
`engine.spec.DEVICE_GRAMMAR` is the one grammar, made from the registered backends' words
(`engine.backends.REGISTRY`); this module only knows how words become a regular expression, a message and
a `DeviceRef`.

Every spelling is ASCII and bounded: a selector may use no unbounded repetition (`*`, `+`, `{n,}`), and
no text longer than `MAX_DEVICE_CHARS` is matched at all (the database columns that store a device are
that wide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The longest device spelling anywhere (jobs.device, workers.device are as wide): `oneapi:level_zero:gpu:0`
# is 23 characters.
MAX_DEVICE_CHARS = 40
# Unbounded repetition in a selector: a star or plus not escaped, or an open-ended `{n,}`.
_UNBOUNDED = re.compile(r"(?<!\\)[*+]|\{\d*,\}")


@dataclass(frozen=True)
class DeviceBackend:
    """One word of the device grammar: its name and what may follow `name:`.

    `selector` is a regular expression for the text after the colon (None: the word takes none); `bare`
    says whether the name alone is accepted too. `selector_name` and `selector_range` describe the
    selector in messages (`gpu:N (N = 0..99)`). `device_class` is the queue a job spelled with this word
    goes to (None: `cpu` for the word cpu, else `gpu`); `owner` is the registered backend that runs it
    (`engine.backends`; None in a grammar built by hand).
    """

    name: str
    selector: str | None = None
    bare: bool = True
    selector_name: str = "N"
    selector_range: str = ""
    device_class: str | None = None
    owner: str | None = None

    def __post_init__(self) -> None:
        if not (self.name.isascii() and re.fullmatch(r"[a-z][a-z0-9_]{0,7}", self.name)):
            raise ValueError(
                f"a device word is 1-8 ASCII letters, digits or _ (it names a queue class), got {self.name!r}"
            )
        if self.selector is not None and (not self.selector.isascii() or _UNBOUNDED.search(self.selector)):
            raise ValueError(
                f"the selector of {self.name!r} must be ASCII with bounded repetition, got {self.selector!r}"
            )

    def spellings(self) -> list[str]:
        """How this word may be written, for messages: `gpu`, `gpu:N`."""
        forms = [self.name] if self.bare or self.selector is None else []
        if self.selector is not None:
            forms.append(f"{self.name}:{self.selector_name}")
        return forms

    def alternatives(self) -> list[str]:
        """The regular-expression alternatives of this word."""
        forms = [re.escape(self.name)] if self.bare or self.selector is None else []
        if self.selector is not None:
            forms.append(f"{re.escape(self.name)}:{self.selector}")
        return forms

    @property
    def queue_class(self) -> str:
        """The queue class of a device spelled with this word."""
        if self.device_class is not None:
            return self.device_class
        return "cpu" if self.name == "cpu" else "gpu"


class DeviceSpellingError(ValueError):
    """The text is not a device of the grammar; the message names it and the accepted spellings."""


@dataclass(frozen=True)
class DeviceRef:
    """A parsed device: its word and what followed the colon (`gpu:3` -> backend gpu, selector 3).

    `device_class` (the queue class) and `owner` (the registered backend) come from the grammar's word;
    they are left out of equality, so `DeviceRef("gpu", "3")` is the device `gpu:3` wherever it was parsed.
    """

    backend: str
    selector: str | None = None
    queue_class: str | None = field(default=None, compare=False, repr=False)
    owner: str | None = field(default=None, compare=False, repr=False)

    @property
    def index(self) -> int | None:
        """The number after the last colon (`gpu:3` -> 3, `xla:tpu:1` -> 1), or None."""
        last = (self.selector or "").rpartition(":")[2]
        return int(last) if last.isascii() and last.isdigit() else None

    @property
    def device_class(self) -> str:
        """The queue class the device belongs to: `cpu`, `gpu` (any GPU CuPy has), or a backend's own."""
        if self.queue_class is not None:
            return self.queue_class
        return "cpu" if self.backend == "cpu" else "gpu"

    @property
    def name(self) -> str:
        return self.backend if self.selector is None else f"{self.backend}:{self.selector}"


class DeviceGrammar:
    """The spellings of devices, from a list of words: one regular expression, one message, one parser."""

    def __init__(self, backends: tuple[DeviceBackend, ...]) -> None:
        self.backends = backends
        self.words = {backend.name: backend for backend in backends}
        if len(self.words) != len(backends):
            raise ValueError(f"a device word is owned twice: {[b.name for b in backends]}")
        alternatives = [a for backend in backends for a in backend.alternatives()]
        # ASCII: `\d` and `\w` in a selector match only 0-9 and a-z; `parse` uses `fullmatch`, so a trailing
        # newline (which `$` lets through) is refused too. The anchors stay for the JSON schema's `pattern`.
        self.pattern = re.compile("^(" + "|".join(alternatives) + ")$", re.ASCII)
        self.spellings: tuple[str, ...] = tuple(s for backend in backends for s in backend.spellings())
        ranges = ", ".join(
            dict.fromkeys(f"{b.selector_name} = {b.selector_range}" for b in backends if b.selector_range)
        )
        listed = f"{', '.join(self.spellings[:-1])} or {self.spellings[-1]}"
        self.accepted = listed + (f" ({ranges})" if ranges else "")
        self.classes: tuple[str, ...] = tuple(dict.fromkeys(b.queue_class for b in backends))

    def parse(self, text: str, what: str = "device") -> DeviceRef:
        """The DeviceRef `text` spells, exactly as written; anything else raises DeviceSpellingError."""
        ok = isinstance(text, str) and len(text) <= MAX_DEVICE_CHARS
        match = self.pattern.fullmatch(text) if ok else None
        if match is None:
            long = isinstance(text, str) and len(text) > 2 * MAX_DEVICE_CHARS
            shown = text[: 2 * MAX_DEVICE_CHARS] + "..." if long else text
            raise DeviceSpellingError(f"{what} must be {self.accepted}, got {shown!r}")
        word, _, selector = match.group(1).partition(":")
        backend = self.words[word]
        return DeviceRef(word, selector or None, backend.queue_class, backend.owner)
