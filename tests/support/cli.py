"""Running the `bpbench` command line as a user does, for the CLI tests: a real process, its output."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.processes import bpbench_command

# A train job that takes well under a second on a CPU worker.
TINY = [
    "--kind", "train", "--model", "mlp", "--layers", "784,16,10", "--dataset", "synthetic",
    "--synthetic-samples", "256", "--steps", "20", "--batch-size", "32",
    "--warmup", "2", "--window", "3", "--min-repeats", "3", "--max-repeats", "5",
]  # fmt: skip


def user_env(api_url: str | None, data_dir: Path, token: str | None, columns: int = 200) -> dict[str, str]:
    """A user's environment: no BPBENCH_ settings but the API's address (if given) and the data directory,
    with the token in DATA_DIR/api-token as `bpbench up` leaves it (if given)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if token is not None:
        (data_dir / "api-token").write_text(token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPBENCH_")}
    env.update({"BPBENCH_DATA_DIR": str(data_dir), "COLUMNS": str(columns)})
    if api_url is not None:
        env["BPBENCH_API_URL"] = api_url
    return env


def bpbench(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `bpbench ARGS` and capture its output."""
    return subprocess.run(
        [*bpbench_command(), *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful `--json` command printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single `error: ...` line a failed command printed on stderr (no traceback)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def read_until_serving(process: subprocess.Popen[str], timeout_s: float = 120) -> list[str]:
    """The lines a starting `bpbench up` printed up to its "Serving" line; fails the test, with them, if
    it exits or does not get there within `timeout_s`."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "Serving" in line or not line:
            break
    assert "Serving" in lines[-1], "".join(lines)
    return lines
