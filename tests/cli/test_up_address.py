"""A running `bpbench up` tells the client commands where its API is: `DATA_DIR/api-url` while it serves
(gone when it stops), so `bpbench jobs` from the same data directory needs no BPBENCH_API_URL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx

from cli.stack import made_token_name
from harness.processes import bpbench_command, free_port
from services.core.config import MAX_TOKEN_NAME_CHARS, Settings
from tests.support.cli import as_json, bpbench, read_until_serving, user_env


def test_the_client_finds_the_api_and_token_of_a_running_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = user_env(None, data_dir, None)
    port = free_port()
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        read_until_serving(process)
        assert (data_dir / "api-url").read_text() == f"http://127.0.0.1:{port}\n"
        # No BPBENCH_API_URL, no BPBENCH_API_TOKEN: both found in the data directory.
        page = as_json(bpbench(env, "jobs", "--json"))
        assert (page["total"], page["items"]) == (0, [])
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert not (data_dir / "api-url").exists()


def test_the_token_up_made_is_named_after_its_file_where_the_dashboard_says_who_is_signed_in() -> None:
    # A short data directory: its token file's path fits the name whole.
    data_dir = Path(tempfile.mkdtemp(prefix="bpb-", dir="/tmp")) / "data"
    env = user_env(None, data_dir, None)
    port = free_port()
    argv = [*bpbench_command(), "up", "--data-dir", str(data_dir), "--port", str(port), "--suite", "none"]
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        read_until_serving(process)
        token = (data_dir / "api-token").read_text().strip()
        bearer = {"Authorization": f"Bearer {token}"}
        session = httpx.get(f"http://127.0.0.1:{port}/api/v1/session", headers=bearer, timeout=30).json()
        listed = as_json(bpbench(env, "token", "list", "--json"))
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    name = f"the token `bpbench up` made ({data_dir / 'api-token'})"
    assert (session["signed_in"], session["name"], session["scopes"]) == (True, name, ["admin"])
    assert [row["name"] for row in listed] == [name]


def test_a_deep_data_directory_keeps_the_end_of_the_token_files_path_in_the_name(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / "bpbench-data"
    name = made_token_name(Settings(data_dir=deep))
    assert len(name) == MAX_TOKEN_NAME_CHARS
    assert name.startswith("the token `bpbench up` made (…")
    assert name.endswith(f"{'d' * 10}/bpbench-data/api-token)")
