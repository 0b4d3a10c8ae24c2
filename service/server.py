"""uvicorn with a shutdown an orchestrator can rely on (SIGTERM, then SIGKILL after a grace period).

On SIGTERM (or the first Ctrl-C): readiness answers 503 at once and every response carries
`Connection: close`; the listening socket stops taking connections, but the connections the kernel
had already accepted (its backlog) are taken and served first; every request already received is
answered, within STRIATE_DRAIN_GRACE seconds; idle connections are closed; then the app shuts down
(batchers, sessions) and the process exits 0 rather than re-raising the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

log = logging.getLogger("striate.service")

# A connection with no request under way is closed once it has been quiet this long during a drain,
# so that a request whose first bytes are on their way is not cut off.
QUIET_S = 0.25


class TrackedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, remembering when bytes last arrived (to tell idle from arriving)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_data = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        super().data_received(data)

    def busy(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        config.http = TrackedHTTPProtocol
        super().__init__(config)
        self.app, self.grace_s = app, grace_s
        self._listeners: list[socket.socket] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining; a second Ctrl-C forces the exit. The signal is not re-raised afterwards."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            return
        if not self.should_exit:
            self.app.state.draining = True
            log.info("signal %s: draining (readiness 503; up to %.0f s for requests in flight)", sig, self.grace_s)
        self.should_exit = True

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve on a socket bound here, so that the drain can take what the kernel already accepted."""
        if sockets is None:
            sockets = [self.config.bind_socket()]
        self._listeners = sockets
        await super().serve(sockets=sockets)

    def _protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _take_backlog(self) -> int:
        """Accept the connections queued in the kernel before the listener closes (they were made
        before the drain began, and their requests may be on their way)."""
        loop, taken = asyncio.get_running_loop(), 0
        for sock in self._listeners:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError, OSError):
                    break
                conn.setblocking(False)
                await loop.connect_accepted_socket(self._protocol, conn)
                taken += 1
        return taken

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        taken = await self._take_backlog()
        for server in self.servers:
            server.close()
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        if taken:
            log.info("took %d queued connection(s) before closing the listener", taken)
        deadline = time.monotonic() + self.grace_s
        while self.server_state.connections and not self.force_exit and time.monotonic() < deadline:
            now = time.monotonic()
            for conn in list(self.server_state.connections):
                if isinstance(conn, TrackedHTTPProtocol) and conn.busy():
                    conn.cycle.keep_alive = False  # answer, then close
                elif now - getattr(conn, "last_data", 0.0) >= QUIET_S:
                    conn.shutdown()  # idle: nothing under way, nothing arriving
            await asyncio.sleep(0.05)
        if self.server_state.connections:
            log.error(
                "%d connection(s) still open after the %.0f s grace (STRIATE_DRAIN_GRACE); closing them",
                len(self.server_state.connections),
                self.grace_s,
            )
            for conn in list(self.server_state.connections):
                conn.shutdown()
            for task in self.server_state.tasks:
                task.cancel(msg="the drain grace has passed")
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()
