"""A running `bpbench up` tells the client commands where its API is: `DATA_DIR/api-url` while it serves
(gone when it stops), so `bpbench jobs` from the same data directory needs no BPBENCH_API_URL."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from harness.processes import bpbench_command, free_port
from tests.support.cli import as_json, bpbench, user_env


def test_the_client_finds_the_api_and_token_of_a_running_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = user_env(None, data_dir, None)
    port = free_port()
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Serving" in line or not line:
                break
        assert "Serving" in lines[-1], "".join(lines)
        assert (data_dir / "api-url").read_text() == f"http://127.0.0.1:{port}\n"
        # No BPBENCH_API_URL, no BPBENCH_API_TOKEN: both found in the data directory.
        page = as_json(bpbench(env, "jobs", "--json"))
        assert (page["total"], page["items"]) == (0, [])
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert not (data_dir / "api-url").exists()
