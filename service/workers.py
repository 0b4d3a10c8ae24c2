"""Several `striate serve` worker processes sharing one port, under a small supervisor.

The parent binds one listening socket per worker, all on the port with SO_REUSEPORT, so that the
kernel spreads new connections evenly over the workers (one socket shared by all lets whichever
worker wakes first take a burst of keep-alive connections: measured, resnet18 at concurrency 16 on
2 workers served 28 req/s, one core's worth). It starts the workers (spawned: each builds its own app
and loads the models itself, so each holds its own copy of every model in memory), and watches them:
a worker that dies is replaced, on the same socket, whose queued connections wait for it; one that
fails at start-up (bad bundle directory, port in use) stops the whole server with its exit status.
SIGTERM or SIGINT is passed on to every worker, each drains as one worker would (service/server.py),
and the parent exits once all have. The workers share their Prometheus series through files
(service/metrics.py), so `/metrics` counts the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.context import SpawnProcess

from service.metrics import worker_exited
from service.settings import Settings
from striate.errors import StriateError

log = logging.getLogger("striate.service")

STARTUP_FAILURE = 3  # a worker's exit status when its app did not start (uvicorn's own code for it)

multiprocessing.allow_connection_pickling()  # sockets travel to spawned workers
_spawn = multiprocessing.get_context("spawn")


def serve_one(settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Run one server process (the whole server when workers = 1); its exit status."""
    import uvicorn

    from service.app import create_app
    from service.server import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
    )
    server = DrainingServer(config, app, settings.drain_grace)  # SIGTERM: drain, then exit 0
    server.run(sockets=sockets)
    return 0 if server.started else STARTUP_FAILURE


def listening_sockets(host: str, port: int, count: int, backlog: int = 2048) -> list[socket.socket]:
    """`count` sockets listening on host:port with SO_REUSEPORT (port 0: one free port for all).

    Only Linux balances connections over such sockets; elsewhere every worker gets the same one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    balanced = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if balanced else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if balanced:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StriateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets if balanced else sockets * count


def _worker_main(settings: Settings, sockets: list[socket.socket]) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(serve_one(settings, sockets))


class WorkerPool:
    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings, self.size = settings, workers
        self.processes: list[SpawnProcess] = []
        self._stop = threading.Event()
        self._status = 0
        self._sockets: list[socket.socket] = []  # one per worker, by index

    def _start_worker(self, sockets: list[socket.socket]) -> SpawnProcess:
        process = _spawn.Process(target=_worker_main, args=(self.settings, sockets), name="striate-worker")
        process.start()
        return process

    def _on_signal(self, sig: int, frame) -> None:
        """Pass SIGTERM on (for Ctrl-C too: the terminal sent the workers SIGINT already, and a second
        SIGINT would force them to exit without draining)."""
        if not self._stop.is_set():
            log.info("signal %s: draining %d worker(s)", sig, len(self.processes))
        self._stop.set()
        # the parent's copies of the listeners: open, they would let the kernel queue connections
        # that no worker takes once they have closed theirs, and reset them when the parent exits
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        for process in self.processes:
            if process.is_alive():
                process.terminate()

    def run(self) -> int:
        """Serve until a signal; run inside `service.metrics.multiprocess_metrics` (see `striate serve`)."""
        self._sockets = listening_sockets(self.settings.host, self.settings.port, self.size)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.processes = [self._start_worker([sock]) for sock in self._sockets]
        while not self._stop.wait(0.5):
            for index, process in enumerate(self.processes):
                if process.is_alive() or self._stop.is_set():
                    continue
                worker_exited(process.pid)
                if process.exitcode == STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping the server", process.pid)
                    self._status = STARTUP_FAILURE
                    self._on_signal(signal.SIGTERM, None)
                    break
                log.error("worker %s exited with status %s; starting another", process.pid, process.exitcode)
                if self._sockets:
                    self.processes[index] = self._start_worker([self._sockets[index]])
        for process in self.processes:
            process.join()
        for sock in self._sockets:
            sock.close()
        return self._status
