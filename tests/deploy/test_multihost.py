"""Workers on two other "hosts": network namespaces of this test's own, joined to this machine by veth links.

Each host is a network namespace with one address (10.231.N.2/24) whose only way out is its veth pair to
this machine (10.231.N.1), and a UTS namespace with a hostname of its own. The central services listen on
the machine's side of the links only: a private `redis-server` bound to the veth addresses (the broker), and
the local PostgreSQL behind a small TCP forwarder on the same addresses (the shared server listens on
127.0.0.1 only). Each host runs `bpbench worker` as a separate process; the two serve different devices
(`--threads 1` and `--threads 2` are different devices), and every job aimed at a device must run on the
worker of that host. Traffic never leaves the links this test creates.

Needs root and iproute2 (`ip netns`); skips without them, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy.orm import sessionmaker

from harness.postgres import create_postgres_database, drop_postgres_database
from services.core.config import Settings
from services.core.db import make_engine
from services.core.migrate import upgrade_to_head
from services.core.queue import CONTROL_QUEUE, RUN_JOB_TASK, device_queue, make_celery
from services.devices.models import Worker
from services.jobs import service as jobs
from tests.support.jobs import tiny_spec, wait_for_job, wait_until
from tests.support.servers import CI
from tests.support.workers import WorkerProcess, start_worker

SUBNET_PREFIX = "10.231"  # a private range: each host gets 10.231.N.0/24 for an N no interface here uses
# Sets the host's name in its own UTS namespace, then becomes the worker (so the worker is the pid started).
HOST_SCRIPT = 'hostname "$0" && exec "$@"'


def require_namespaces() -> None:
    """Skip (or fail under CI=true) unless this process may create network namespaces and has the tools."""
    missing = [tool for tool in ("ip", "unshare", "hostname", "redis-server") if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = f"network namespaces need root (euid {os.geteuid()})"
    elif missing:
        reason = f"needs {', '.join(missing)} on PATH"
    else:
        # Root in a container may still lack the capability: try a namespace that leaves nothing behind.
        probe_argv = ["unshare", "--net", "--uts", "true"]
        probe = subprocess.run(probe_argv, capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            reason = f"cannot create network namespaces here: {probe.stderr.strip()}"
    if reason is None:
        return
    if CI:
        pytest.fail(f"{reason} (CI=true: the multi-host test must run)")
    pytest.skip(reason)


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its stdout. A failure names the command and ip's message."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def free_subnets(count: int) -> list[int]:
    """`count` values of N for which 10.231.N.0/24 appears in no address or route of this machine."""
    in_use = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
    candidates = [n for n in range(1, 255) if f"{SUBNET_PREFIX}.{n}." not in in_use]
    if len(candidates) < count:
        raise RuntimeError(f"fewer than {count} free /24 subnets under {SUBNET_PREFIX}.0.0/16")
    # Random, so two test runs at once are unlikely to pick the same subnets.
    return random.sample(candidates, count)


@dataclass(frozen=True)
class Host:
    """A worker "host": a network namespace with one address, reached through a veth pair."""

    name: str  # its hostname, inside its own UTS namespace
    namespace: str
    address: str  # inside the namespace
    gateway: str  # this machine's end of the link: the central services listen here

    def wrapper(self) -> list[str]:
        """The command prefix that runs a program on this host (its network, its hostname)."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c", HOST_SCRIPT, self.name]


@contextlib.contextmanager
def veth_hosts(count: int) -> Iterator[list[Host]]:
    """`count` hosts in namespaces of their own; the namespaces and links are removed afterwards."""
    token = uuid.uuid4().hex[:6]
    namespaces: list[str] = []
    links: list[str] = []
    hosts: list[Host] = []
    try:
        for index, subnet in enumerate(free_subnets(count)):
            host = Host(
                name=f"bpbench-host-{chr(ord('a') + index)}",
                namespace=f"bpbench-{token}-{index}",
                address=f"{SUBNET_PREFIX}.{subnet}.2",
                gateway=f"{SUBNET_PREFIX}.{subnet}.1",
            )
            outside, inside = f"bpbh{token}{index}", f"bpbn{token}{index}"  # <= 15 characters
            ip("netns", "add", host.namespace)
            namespaces.append(host.namespace)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", host.namespace)
            links.append(outside)
            ip("addr", "add", f"{host.gateway}/24", "dev", outside)
            ip("link", "set", outside, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            ip("-n", host.namespace, "link", "set", inside, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
            hosts.append(host)
        yield hosts
    finally:
        for link in links:  # deleting one end of a veth pair deletes the other
            ip("link", "del", link, check=False)
        for namespace in namespaces:
            ip("netns", "del", namespace, check=False)


def free_port_on(addresses: list[str]) -> int:
    """A TCP port free on every one of `addresses`."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port free on all of {addresses}")


@dataclass
class TcpForwarder:
    """Relays TCP connections from `listen` addresses to `target`, and records who connected to which."""

    listen: list[str]
    target: tuple[str, int]
    port: int = 0
    peers: dict[str, set[str]] = field(default_factory=dict)  # listen address -> client addresses
    _sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        """Listen on one port on every address; returns the port."""
        self.port = free_port_on(self.listen)
        for address in self.listen:
            server = socket.create_server((address, self.port))
            server.settimeout(0.2)
            self._sockets.append(server)
            self.peers[address] = set()
            threading.Thread(target=self._accept, args=(server, address), daemon=True).start()
        return self.port

    def _accept(self, server: socket.socket, address: str) -> None:
        while not self._stop.is_set():
            try:
                client, (peer, _) = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self.peers[address].add(peer)
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        """Close the listeners and every relayed connection."""
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()


@contextlib.contextmanager
def private_redis(addresses: list[str], log_dir: Path) -> Iterator[int]:
    """A redis-server of this test's own, bound to `addresses` only; yields its port."""
    port = free_port_on(addresses)
    log_path = log_dir / "redis.log"
    argv = ["redis-server", "--bind", *addresses, "--port", str(port), "--save", "", "--appendonly", "no"]
    # Reached from the veth addresses, not loopback: Redis 7 refuses such clients in protected mode (DENIED)
    # when no password is set. It listens only on the test's own private links.
    argv += ["--dir", str(log_dir), "--daemonize", "no", "--protected-mode", "no"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    last_error: list[str] = []
    try:

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}:\n{log_path.read_text()}")
            # A fresh client each try: a connection refused while the link came up is not reused.
            client = redis.Redis(host=addresses[0], port=port, socket_timeout=2, socket_connect_timeout=2)
            try:
                return bool(client.ping())
            except redis.RedisError as exc:
                last_error[:] = [repr(exc)]
                return False
            finally:
                client.close()

        try:
            wait_until(answers, 45, f"redis-server on {addresses} port {port}")
        except pytest.fail.Exception:
            pytest.fail(f"redis-server on {addresses} port {port}: no answer in 45 s ({last_error})")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def redis_client_addresses(address: str, port: int) -> set[str]:
    """The addresses the private Redis server sees its clients connect from."""
    client = redis.Redis(host=address, port=port, socket_timeout=5)
    try:
        return {str(entry["addr"]).rsplit(":", 1)[0] for entry in client.client_list()}
    finally:
        client.close()


def test_workers_on_two_hosts_register_their_devices_and_run_the_jobs_aimed_at_them(
    postgres_admin_url: str, tmp_path: Path
) -> None:
    require_namespaces()
    admin = urlsplit(postgres_admin_url)
    target = (admin.hostname or "127.0.0.1", admin.port or 5432)
    database_url = create_postgres_database(postgres_admin_url, prefix="bpbench_multihost")
    engine = None
    try:
        upgrade_to_head(database_url)
        engine = make_engine(database_url)
        maker = sessionmaker(bind=engine, expire_on_commit=False)
        with contextlib.ExitStack() as stack:
            hosts = stack.enter_context(veth_hosts(2))
            gateways = [host.gateway for host in hosts]
            redis_port = stack.enter_context(private_redis(gateways, tmp_path))
            forwarder = TcpForwarder(gateways, target)
            stack.callback(forwarder.stop)
            pg_port = forwarder.start()
            database = urlsplit(database_url).path

            workers: dict[str, WorkerProcess] = {}
            for host, threads in zip(hosts, (1, 2), strict=True):
                # Each host knows the central services by its own end of the link, as a remote host would.
                worker = start_worker(
                    f"postgresql://{admin.username or 'postgres'}@{host.gateway}:{pg_port}{database}",
                    f"redis://{host.gateway}:{redis_port}/0",
                    tmp_path,
                    name=f"cpu@{host.name}",
                    threads=threads,
                    wrapper=host.wrapper(),
                )
                stack.callback(worker.stop)
                workers[host.name] = worker
            worker_a, worker_b = (workers[host.name] for host in hosts)
            assert worker_a.device_id != worker_b.device_id  # --threads 1 and --threads 2: two devices

            # Each worker registered itself from its own host, with its own process and queues.
            with maker() as session:
                for host in hosts:
                    row = session.get(Worker, f"cpu@{host.name}")
                    assert row is not None and row.stopped_at is None
                    worker = workers[host.name]
                    assert (row.hostname, row.pid, row.device_id) == (
                        host.name,
                        worker.process.pid,
                        worker.device_id,
                    )
                    assert row.queues == ["cpu", device_queue(worker.device_id), CONTROL_QUEUE]

            # Two jobs aimed at each device, sent to the device queues through the private broker.
            client = make_celery(
                Settings(database_url=database_url, broker_url=f"redis://{gateways[0]}:{redis_port}/0")
            )
            stack.callback(client.close)
            aimed: dict[str, str] = {}  # job id -> the name of the host that must run it
            with maker() as session:
                for seed in range(2):
                    for host in hosts:
                        job = jobs.create_job(
                            session,
                            tiny_spec(seed=100 + seed),
                            target_device_id=workers[host.name].device_id,
                        )
                        session.commit()
                        aimed[job.id] = host.name
                        client.send_task(RUN_JOB_TASK, args=[job.id], queue=job.queue, routing_key=job.queue)

            for job_id, host_name in aimed.items():
                done = wait_for_job(maker, job_id)
                worker = workers[host_name]
                assert done.status == "succeeded", done.error
                assert (done.worker_name, done.device_id, done.target_device_id) == (
                    worker.name,
                    worker.device_id,
                    worker.device_id,
                )

            # Both hosts reached the broker and the database over their own links, from their own address.
            seen_by_redis = redis_client_addresses(gateways[0], redis_port)
            assert {host.address for host in hosts} <= seen_by_redis
            for host, other in zip(hosts, reversed(hosts), strict=True):
                assert host.address in forwarder.peers[host.gateway]
                assert other.address not in forwarder.peers[host.gateway]

            for worker in workers.values():
                assert worker.stop() == 0
            with maker() as session:
                for host in hosts:
                    row = session.get(Worker, f"cpu@{host.name}")
                    assert row is not None and row.stopped_at is not None
        # Nothing of the hosts is left: their namespaces and links went with the block above.
        namespaces = ip("netns", "list")
        assert [host.namespace for host in hosts if host.namespace in namespaces] == []
    finally:
        if engine is not None:
            engine.dispose()
        drop_postgres_database(postgres_admin_url, database_url)
