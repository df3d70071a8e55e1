"""`bpbench worker --device cpu|gpu|gpu:N|cuda:N|rocm:N|xla:<platform>:<N>|...`: one Celery worker serving
one device of one backend (`engine/backends`).

Start-up order matters on a GPU host: `gpu:N` sets `CUDA_VISIBLE_DEVICES=N` (`rocm:N`:
`HIP_VISIBLE_DEVICES`; the backend's `pin`) before anything imports its library, so the worker sees its GPU
as device 0; workers of a backend that is not fork-safe (every one but NumPy) use the solo pool (one job
at a time, in this process), so CUDA, HIP, XLA or SYCL is never initialised in a process that later forks.
CPU workers use the prefork pool (default one process: concurrent jobs on one CPU would distort each
other's timings).

The worker then registers its device (the engine's fingerprint -> a `devices` row, id = short hash of the
stable fields), consumes its backend's queues (`Backend.queues`: `cpu`; `gpu` and `cuda` or `rocm`; the
backend's own, `xla`) and its device queue (`device.<id>`), and, once Celery is consuming, registers itself
in `workers` and writes a heartbeat every `heartbeat_interval_s`.

`bpbench worker --list-devices` (`list_devices`): every registered backend, installed or not, and the
devices of each installed one with the exact `--device` to serve it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.backends import backend_of
from engine.spec import DEVICE_ACCEPTED, DeviceSpellingError
from engine.spec import parse_device as parse_device_ref
from services.core.config import Settings, get_settings, redact_url

log = logging.getLogger("bpbench.worker")


class WorkerConfigError(ValueError):
    """The worker's options cannot be used; the message says which value and what is accepted."""


@dataclass(frozen=True)
class WorkerDevice:
    """What `--device` asked for: its backend, its queue class, the environment that pins it and the
    spelling the engine uses for it in this process (a pinned GPU is device 0 of CUDA_VISIBLE_DEVICES)."""

    requested: str
    device_class: str
    gpu_index: int | None
    backend: str = "numpy"
    engine_device: str = "cpu"
    pin_env: tuple[tuple[str, str], ...] = ()
    fork_safe: bool = True

    @property
    def tag(self) -> str:
        """A short label for worker names: cpu, gpu, gpu3, rocm1, xla-tpu-0."""
        word, _, selector = self.requested.partition(":")
        if not selector or selector.isdigit():
            return word + selector
        return self.requested.replace(":", "-")


def parse_device(value: str) -> WorkerDevice:
    """A device of the grammar -> WorkerDevice; anything else is refused with the accepted spellings."""
    requested = value.strip().lower()
    try:
        ref = parse_device_ref(requested)
    except DeviceSpellingError:
        raise WorkerConfigError(f"--device must be {DEVICE_ACCEPTED}, got {value!r}") from None
    backend = backend_of(ref)
    env, engine_device = backend.pin(ref)
    return WorkerDevice(
        requested=requested,
        device_class=ref.device_class,
        gpu_index=ref.index if env else None,
        backend=backend.name,
        engine_device=engine_device,
        pin_env=tuple(sorted(env.items())),
        fork_safe=backend.fork_safe,
    )


def pin_gpu(device: WorkerDevice) -> None:
    """For `gpu:N` (`cuda:N`, `rocm:N`), make GPU N the only visible one; must run before the library
    initialises CUDA or HIP."""
    for name, value in device.pin_env:
        os.environ[name] = value


def limit_threads(threads: int) -> None:
    """Limit the BLAS/OpenMP thread pools (the thread count is part of the device fingerprint)."""
    from threadpoolctl import threadpool_limits

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    # Kept for the life of the process (and inherited by forked pool processes).
    threadpool_limits(limits=threads)


class Heartbeat:
    """A daemon thread that writes `workers.last_heartbeat` every `interval_s` until stopped."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self.pid = os.getpid()
        self.started_at: datetime | None = None  # the registration's, set before `start`
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bpbench-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def _run(self) -> None:
        from services.core.db import session_factory
        from services.devices.service import heartbeat

        factory = session_factory(self.settings)
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                with factory() as session:
                    if not heartbeat(session, self.name, pid=self.pid, started_at=self.started_at):
                        log.warning(
                            "worker row %s is no longer this process's; heartbeat not recorded", self.name
                        )
            except Exception as exc:  # the database may be restarting; keep trying
                log.warning("heartbeat of %s not recorded: %s", self.name, exc)

    def stop(self) -> None:
        """Stop beating (waits for the thread, at most one interval)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.heartbeat_interval_s + 5)


def register_device(device: WorkerDevice, settings: Settings) -> tuple[str, dict[str, Any]]:
    """Take the device's fingerprint and upsert its `devices` row; returns (device id, fingerprint).
    The fingerprint's `backend` block names the backend that resolved it (`gpu` on CuPy's ROCm build:
    `rocm`)."""
    import psutil

    from engine.backend import DeviceError, fingerprint, resolve_device
    from services.core.db import session_factory
    from services.devices.service import register_device as upsert_device

    try:
        engine_device = resolve_device(device.engine_device)
    except DeviceError as exc:
        pinned = (
            f" (GPU {device.gpu_index} is {device.engine_device} under "
            + ", ".join(f"{name}={value}" for name, value in device.pin_env)
            + ")"
            if device.pin_env
            else ""
        )
        raise WorkerConfigError(f"--device {device.requested} cannot be served{pinned}: {exc}") from None
    doc = fingerprint(engine_device)
    memory = int(psutil.virtual_memory().total) if engine_device.kind == "cpu" else None
    with session_factory(settings)() as session:
        row = upsert_device(session, doc, memory_bytes=memory)
        return row.id, doc


def served_class_queues(fingerprint: dict[str, Any]) -> list[str]:
    """The class and backend queues a worker of this device serves: its backend's `queues` (the backend
    that resolved the device: `gpu` on CuPy's ROCm build is `rocm`, serving `gpu` and `rocm`)."""
    from engine.backends import backend_named

    return list(backend_named(str(fingerprint["backend"]["name"])).queues)


def choose_worker_name(name: str | None, default: str, settings: Settings) -> str:
    """The name this process registers under, unique among live workers: a `--name` that a live worker
    holds is refused; the default name gets the first free suffix (`cpu@host-2`)."""
    from services.core.db import session_factory
    from services.devices.service import free_worker_name

    base = name or default
    with session_factory(settings)() as session:
        free = free_worker_name(session, base, dead_after_s=settings.worker_dead_after_s)
    if free != base and name is not None:
        raise WorkerConfigError(
            f"--name {name!r} is held by a live worker (stop it, or wait {settings.worker_dead_after_s:g} s "
            "after it died); choose another --name"
        )
    return free


def run_worker(
    device: str = "cpu",
    *,
    name: str | None = None,
    concurrency: int | None = None,
    threads: int | None = None,
    loglevel: str = "INFO",
    settings: Settings | None = None,
    log_format: str = "text",
) -> int:
    """Register the device, then consume its queues until a shutdown signal; returns the exit code."""
    # One log setup for the worker; job lines carry job id, worker and device.
    from services.core.logging import LOG_FORMATS, configure_logging

    if log_format not in LOG_FORMATS:
        raise WorkerConfigError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    configure_logging("json" if log_format == "json" else "text", loglevel)
    wanted = parse_device(device)
    pin_gpu(wanted)  # before anything below can import CuPy
    if threads is not None:
        if threads < 1:
            raise WorkerConfigError(f"--threads must be at least 1, got {threads}")
        limit_threads(threads)
    if not wanted.fork_safe and concurrency not in (None, 1):
        what = "GPU" if wanted.device_class in ("gpu", "cuda", "rocm") else wanted.backend
        raise WorkerConfigError(
            f"a {what} worker runs one job at a time (solo pool); got --concurrency {concurrency}"
        )
    if concurrency is not None and concurrency < 1:
        raise WorkerConfigError(f"--concurrency must be at least 1, got {concurrency}")
    settings = settings or get_settings()

    from celery import signals

    from services.core import queue
    from services.core.db import dispose_engines, session_factory
    from services.devices import service as devices
    from workers import tasks

    app = queue.configure(settings)
    device_id, doc = register_device(wanted, settings)
    worker_name = choose_worker_name(name, f"{wanted.tag}@{socket.gethostname()}", settings)
    queues = [*served_class_queues(doc), queue.device_queue(device_id), queue.CONTROL_QUEUE]
    tasks.configure_worker(
        tasks.WorkerContext(name=worker_name, device_id=device_id, engine_device=wanted.engine_device)
    )
    pool = "prefork" if wanted.fork_safe else "solo"
    if pool == "solo":
        # The solo pool runs the job in the consumer's own thread, which then cannot answer AMQP
        # heartbeats; without this RabbitMQ would drop the connection in the middle of a long job.
        app.conf.broker_heartbeat = 0
    workers = concurrency or 1
    heartbeat = Heartbeat(worker_name, settings)

    def on_ready(**_: Any) -> None:
        # Registered only once Celery consumes, so a live worker row means jobs are being taken.
        try:
            with session_factory(settings)() as session:
                row = devices.register_worker(
                    session,
                    name=worker_name,
                    device_id=device_id,
                    device=wanted.requested,
                    queues=queues,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    concurrency=workers,
                    dead_after_s=settings.worker_dead_after_s,
                )
                heartbeat.started_at = row.started_at
        except devices.WorkerNameTaken as exc:
            log.error("%s; this worker stops", exc)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        heartbeat.start()
        log.info("worker %s consuming %s (device %s)", worker_name, ", ".join(queues), device_id)

    def on_shutdown(**_: Any) -> None:
        heartbeat.stop()
        if heartbeat.started_at is None:
            return  # never registered: the row, if any, is another process's
        try:
            with session_factory(settings)() as session:
                devices.mark_worker_stopped(
                    session, worker_name, pid=heartbeat.pid, started_at=heartbeat.started_at
                )
        except Exception as exc:
            log.warning("could not record the shutdown of %s: %s", worker_name, exc)

    # Celery leaves logging alone when someone handles `setup_logging`: ours is already configured.
    signals.setup_logging.connect(lambda **_: None, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
    # A forked pool process must not reuse the parent's database connections.
    signals.worker_process_init.connect(lambda **_: dispose_engines(), weak=False)

    log.info(
        "starting worker %s: device %s (%s), pool %s x%d, broker %s",
        worker_name,
        wanted.requested,
        device_id,
        pool,
        workers,
        redact_url(settings.broker_url),
    )
    worker = app.Worker(
        hostname=worker_name,
        queues=queues,
        pool_cls=pool,
        concurrency=workers,
        loglevel=loglevel.upper(),
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
        quiet=log_format == "json",  # no banner: every line of a JSON log is JSON
    )
    worker.start()
    return int(worker.exitcode or 0)


def main(argv: list[str] | None = None) -> None:
    """`python -m workers.main --device cpu` (the same as `bpbench worker`)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="bpbench-worker", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--device", default="cpu", help=DEVICE_ACCEPTED)
    parser.add_argument("--name", default=None, help="worker name (default <device>@<hostname>)")
    parser.add_argument("--concurrency", type=int, default=None, help="jobs at once (CPU only; default 1)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    args = parser.parse_args(argv)
    raise SystemExit(
        run_worker(
            args.device,
            name=args.name,
            concurrency=args.concurrency,
            threads=args.threads,
            loglevel=args.loglevel,
            log_format=args.log_format,
        )
    )


if __name__ == "__main__":
    main()
