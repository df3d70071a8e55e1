"""The accelerator host's Python environment, rebuilt here: does `pytest -m gpu` find every GPU test there?

`scripts/device_check.sh` runs on a host whose image holds the packages of
`scripts/device-image-packages.txt`; the wheels of `scripts/device-wheels.txt` travel there and are
installed with `--no-deps` into a folder of their own on PYTHONPATH. pytest imports every test module
before it deselects, so a module importing a package that environment lacks stops `pytest -m gpu` at
collection, and no GPU test runs at all.

This module builds the same layout here: a fresh virtual environment holding only the image's packages that
bpbench needs (at the versions installed here), plus the pinned wheels downloaded for this interpreter and
installed exactly as the host installs them; then it collects. What it cannot copy: the host's Python is 3.12
and this one may differ, the image's own versions are mostly unknown (those installed here stand in), and
CuPy, PyTorch and JAX stay out (too big to install per run: a module needing one at import skips without it).

Marked slow: about a minute (two installs from the package index, two collections). It runs in the normal
suite on purpose: CI never sees an accelerator host, so this is where a missing wheel shows.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import venv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PINS_FILE = ROOT / "scripts" / "device-wheels.txt"
IMAGE_FILE = ROOT / "scripts" / "device-image-packages.txt"
# What the GPU check runs besides bpbench itself: the test runner and the timeout plugin it is called with.
CHECK_TOOLS = ("pytest", "pytest-timeout")
TIMEOUT_S = 300  # one install or collection
PIP = (sys.executable, "-m", "pip")
QUIET = ("-q", "--disable-pip-version-check", "--no-input")

pytestmark = pytest.mark.slow


def listed(path: Path) -> dict[str, str | None]:
    """A list file's packages (`name` or `name==version` a line, `#` comments): canonical name -> version."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[canonicalize_name(name)] = version or None
    return packages


def requirements_of(distribution: str, extras: Iterable[str] = ()) -> list[Requirement]:
    """An installed distribution's requirements, with those of the given extras, for this platform."""
    wanted = ["", *extras]
    found = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in wanted):
            found.append(requirement)
    return found


def closure(roots: Iterable[Requirement]) -> set[str]:
    """Every distribution the roots need, theirs included, as installed here (canonical names)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        pending.extend(requirements_of(requirement.name, requirement.extras))
    return names


def bpbench_runtime_requirements() -> list[Requirement]:
    """pyproject's `dependencies` (no extras; those whose environment marker holds on this interpreter, as
    Numba's does), as the installed bpbench declares them (`requirements_of` keeps exactly those)."""
    return requirements_of("bpbench")


def needed_here() -> set[str]:
    """What the GPU check imports: bpbench's runtime closure and the test runner's."""
    return closure([*bpbench_runtime_requirements(), *(Requirement(tool) for tool in CHECK_TOOLS)])


def run(argv: list[str], *, env: dict[str, str] | None = None) -> str:
    """Run a command in the checkout; its output, or a test failure that shows it."""
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        shown = " ".join(argv[:6])
        pytest.fail(f"{shown} ... exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return done.stdout


@dataclass(frozen=True)
class DeviceEnvironment:
    """The rebuilt host environment: its interpreter and the environment variables the check runs with."""

    python: Path
    env: dict[str, str]

    def pip(self, *args: str) -> list[str]:
        """A pip command line (this environment's pip) acting on the rebuilt interpreter."""
        return [*PIP, "--python", str(self.python), *args]


@pytest.fixture(scope="module")
def device_environment(tmp_path_factory: pytest.TempPathFactory) -> DeviceEnvironment:
    """A fresh venv with the image's packages bpbench needs; the pinned wheels in a folder on PYTHONPATH."""
    base = tmp_path_factory.mktemp("device-env")
    venv.create(base / "image", with_pip=False)
    image = DeviceEnvironment(base / "image" / "bin" / "python", {})
    site, wheels = base / "site", base / "wheels"
    # The image's packages: the versions installed here stand in for the image's (mostly unknown) ones.
    image_part = sorted(needed_here() & set(listed(IMAGE_FILE)))
    run(image.pip("install", *QUIET, "--no-deps", "--no-compile", *map(installed_pin, image_part)))
    # The carried wheels, for this interpreter, installed as scripts/device_check.sh installs them.
    pins = [f"{name}=={version}" for name, version in listed(PINS_FILE).items()]
    run([*PIP, "download", *QUIET, "--no-deps", "--only-binary=:all:", "-d", str(wheels), *pins])
    carried = map(str, sorted(wheels.glob("*.whl")))
    run(
        image.pip(
            "install", *QUIET, "--no-index", "--no-deps", "--no-compile", "--target", str(site), *carried
        )
    )
    # Without CI: the accelerator host is not CI (a module whose reference library is missing skips there,
    # as torch does here: this copy holds only what bpbench needs, while the image has torch).
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONHOME", "CI")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{site}"  # as scripts/device_check.sh sets it
    return DeviceEnvironment(image.python, env)


def installed_pin(name: str) -> str:
    """`name==version` of the distribution installed here."""
    return f"{name}=={importlib.metadata.version(name)}"


def start_collecting(python: Path | str, env: dict[str, str] | None) -> subprocess.Popen[str]:
    """`pytest -m gpu --collect-only` with this interpreter, started (two collections run side by side)."""
    argv = [str(python), "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"]
    return subprocess.Popen(
        [*argv, "-o", "addopts="],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def collected(process: subprocess.Popen[str]) -> tuple[list[str], str]:
    """The test ids a collection listed, and its summary line; fails the test if the collection failed."""
    output, _ = process.communicate(timeout=TIMEOUT_S)
    lines = output.strip().splitlines()
    assert process.returncode == 0, output[-6000:]
    return [line for line in lines if "::" in line], lines[-1]


def test_the_pins_are_what_bpbench_needs_beyond_the_image() -> None:
    pins = listed(PINS_FILE)
    expected = sorted(needed_here() - set(listed(IMAGE_FILE)))
    expected_lines = "\n".join(map(installed_pin, expected))
    assert sorted(pins) == expected, f"scripts/device-wheels.txt should list:\n{expected_lines}"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", str(version)) for version in pins.values()), pins


def test_the_pins_satisfy_what_pyproject_asks_for() -> None:
    pins = listed(PINS_FILE)
    refused = [
        f"{requirement} (pinned {pins[name]})"
        for requirement in bpbench_runtime_requirements()
        if (name := canonicalize_name(requirement.name)) in pins
        and not requirement.specifier.contains(str(pins[name]), prereleases=True)
    ]
    assert refused == []


def test_the_device_environment_has_no_broken_requirements(device_environment: DeviceEnvironment) -> None:
    # pip reads the folder on PYTHONPATH too: each carried wheel's requirements are met there or in the image.
    report = run(device_environment.pip("check"), env=device_environment.env)
    assert "No broken requirements found" in report
    listing = run(device_environment.pip("list", "--format=freeze"), env=device_environment.env)
    assert (
        f"celery=={listed(PINS_FILE)['celery']}" in listing.splitlines()
    )  # the check saw the carried folder


def test_pytest_collects_every_gpu_test_in_the_device_environment(
    device_environment: DeviceEnvironment,
) -> None:
    here = start_collecting(sys.executable, None)
    there = start_collecting(device_environment.python, device_environment.env)
    (ids_here, _), (ids_there, summary) = collected(here), collected(there)

    assert "error" not in summary, summary
    assert "tests/workers/test_gpu.py::test_a_worker_runs_a_job_end_to_end[gpu]" in ids_here
    assert ids_there == ids_here
