"""`bpbench up` serves the API the way `bpbench api` does: the same command, processes and GC tuning."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import psutil

from cli.servers import default_api_workers
from harness.processes import bpbench_command
from tests.cli.test_stack import stack_env
from tests.support.apiserver import free_port
from tests.support.cli import read_until_serving


def test_up_serves_through_bpbench_api_with_one_process_per_cpu(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(
        argv, env=stack_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        read_until_serving(process, 150)
        api = psutil.Process(json.loads((data_dir / "stack.pids").read_text())["children"]["api"])
        assert api.cmdline()[-5:] == ["api", "--host", "127.0.0.1", "--port", str(port)]
        serving = [child for child in api.children() if "spawn_main" in " ".join(child.cmdline())]
        workers = default_api_workers()
        assert len(serving) == (workers if workers > 1 else 0)  # one process serves in-process
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
