"""The one rule for what a test needs and this machine lacks: a skip, except under CI=true, where it is a
failure (CI installs every server, tool and optional stack the tests use, so a missing one means CI broke)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

CI = os.environ.get("CI", "").strip().lower() == "true"


def missing(message: str) -> NoReturn:
    """Skip the test with `message`; under CI=true fail it instead."""
    if CI:
        pytest.fail(f"{message} (CI=true: a missing requirement is a failure, not a skip)")
    pytest.skip(message)


def require_module(name: str, install: str) -> ModuleType:
    """The module `name`, imported; missing, `missing()` says what to install (`install`)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not installed ({install}): {exc}")
