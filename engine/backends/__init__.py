"""The backend registry: every stack the engine runs on, one module each, one line in `BACKENDS`.

The device grammar is derived from it (`engine.spec.DEVICE_GRAMMAR`): each backend's `words`, in the
order of `BACKENDS`, with the owner and the queue class filled in here, so a backend's spellings are
written once. A word's queue class is the word itself (`cpu`, `gpu`, `cuda`, `xla`, ...): a job spelled
`xla:cpu:0` goes to the queue `xla`, which only workers of that backend serve (`Backend.queues`); `cpu`
and `gpu` stay the class queues of NumPy and of any CuPy GPU.

Importing this package imports NumPy and nothing optional: each backend imports its library on first use.

Adding a backend: a module `engine/backends/<name>.py` with a `Backend` subclass, and its line in
`BACKENDS` below (docs/design.md, "Adding a backend").
"""

from __future__ import annotations

import dataclasses

from engine.backends.base import Backend, Device, DeviceError, DeviceInfo
from engine.backends.cuda import CudaBackend
from engine.backends.numpy_backend import NumpyBackend
from engine.backends.oneapi import OneapiBackend
from engine.backends.opencl import OpenclBackend
from engine.backends.rocm import RocmBackend
from engine.backends.xla import XlaBackend
from engine.grammar import DeviceBackend, DeviceGrammar, DeviceRef

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendReport",
    "Device",
    "DeviceError",
    "DeviceInfo",
    "backend_named",
    "backend_of",
    "host_report",
]

BACKENDS: tuple[Backend, ...] = (
    NumpyBackend(),
    CudaBackend(),
    RocmBackend(),
    OneapiBackend(),
    XlaBackend(),
    OpenclBackend(),
)

_BY_NAME: dict[str, Backend] = {backend.name: backend for backend in BACKENDS}


def backend_named(name: str) -> Backend:
    """The registered backend called `name`; KeyError lists the registered ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no backend {name!r}; registered: {', '.join(_BY_NAME)}") from None


def backend_of(ref: DeviceRef) -> Backend:
    """The backend that runs a parsed device (its word's owner)."""
    return backend_named(ref.owner or _WORD_OWNERS[ref.backend])


def grammar_words(backends: tuple[Backend, ...] = BACKENDS) -> tuple[DeviceBackend, ...]:
    """Every backend's words, owner and queue class filled in; each word's queue is one its backend's
    workers serve (checked here, so a new backend cannot publish to a queue nobody consumes)."""
    words = []
    for backend in backends:
        for word in backend.words:
            queue = word.device_class or word.name
            filled = dataclasses.replace(word, owner=backend.name, device_class=queue)
            if filled.queue_class not in backend.queues:
                raise ValueError(
                    f"backend {backend.name}: the word {word.name!r} queues on {filled.queue_class!r}, "
                    f"which its workers do not serve ({', '.join(backend.queues)})"
                )
            words.append(filled)
    return tuple(words)


WORDS = grammar_words()
_WORD_OWNERS = {word.name: word.owner or "" for word in WORDS}


def registry_grammar() -> DeviceGrammar:
    """The device grammar of the registered backends."""
    return DeviceGrammar(WORDS)


@dataclasses.dataclass(frozen=True)
class BackendReport:
    """One registered backend as this host has it: installed or not (then what to install), its
    library's version, and its devices (or why none could be listed)."""

    backend: str
    summary: str
    library: str
    installed: bool
    install: str
    version: str | None
    devices: tuple[DeviceInfo, ...] = ()
    note: str | None = None


def host_report(backends: tuple[Backend, ...] = BACKENDS) -> list[BackendReport]:
    """What this host can run, backend by backend (imports each installed backend's library)."""
    reports = []
    for backend in backends:
        report = BackendReport(
            backend=backend.name,
            summary=backend.summary,
            library=backend.library,
            installed=backend.installed(),
            install=backend.install_hint(),
            version=None,
        )
        if report.installed:
            try:
                devices = tuple(backend.devices())
                note = None if devices else "installed, but it sees no device on this host"
            except DeviceError as exc:
                devices, note = (), str(exc)
            version = backend.library_version()
            report = dataclasses.replace(report, version=version, devices=devices, note=note)
        reports.append(report)
    return reports
