"""`bpbench api --workers N`: N API processes, each accepting on a listening socket of its own.

With one listening socket shared by every process (uvicorn's `--workers`), whichever process wakes first
accepts, so a handful of keep-alive connections can all land on one process while the others idle. Here the
parent binds one socket per process, all on the same address with `SO_REUSEPORT`, and the kernel spreads new
connections evenly over them. Each child (a spawned interpreter running uvicorn on `served_app`) serves only
its own socket; the parent keeps every socket open, so a child that dies is replaced on the same socket and
the connections waiting in its backlog are served by the replacement. SIGTERM or SIGINT stops every child
(uvicorn finishes the requests in flight) and the parent exits 0. Without `SO_REUSEPORT` (not Linux, BSD or
macOS) there is one shared socket, as uvicorn does it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

logger = logging.getLogger("bpbench.api")

APP = "services.api.main:served_app"
STOP_TIMEOUT_S = 30.0
BACKLOG = 2048  # uvicorn's default


def reuse_port_supported() -> bool:
    """Whether this system lets several sockets listen on one port (`SO_REUSEPORT`)."""
    return hasattr(socket, "SO_REUSEPORT")


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets bound to (host, port) with `SO_REUSEPORT`, each listening; an OSError if the port is
    taken. Bound in the parent, so a busy port fails before any child starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(options: dict[str, Any], sock: socket.socket) -> None:
    """In a child: uvicorn on `served_app`, accepting on `sock` only."""
    import uvicorn

    config = uvicorn.Config(APP, factory=True, **options)
    uvicorn.Server(config).run(sockets=[sock])


class _Stop(Exception):
    pass


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def serve_processes(options: dict[str, Any], processes: int) -> int:
    """Serve `served_app` from `processes` children, a socket each, until SIGTERM/SIGINT; the exit status."""
    host, port = str(options["host"]), int(options["port"])
    child_options = {key: value for key, value in options.items() if key not in ("host", "port")}
    sockets = listening_sockets(host, port, processes)
    context = multiprocessing.get_context("spawn")

    def start(sock: socket.socket) -> BaseProcess:
        child = context.Process(target=_serve, args=(child_options, sock), name="bpbench-api")
        child.start()
        return child

    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: list[BaseProcess] = []
    try:
        children = [start(sock) for sock in sockets]
        logger.info("serving on http://%s:%d from %d processes, a socket each", host, port, processes)
        while True:
            time.sleep(0.5)
            for index, child in enumerate(children):
                if not child.is_alive():
                    logger.warning(
                        "API process %s exited with %s; starting another", child.pid, child.exitcode
                    )
                    children[index] = start(sockets[index])
    except _Stop:
        pass
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5)
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
