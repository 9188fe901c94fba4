"""Serve any ASGI app on a free loopback port for end-to-end tests.

::

    async with serve_app(app) as base_url:      # e.g. "http://127.0.0.1:54321"
        async with httpx.AsyncClient(base_url=base_url) as client:
            ...

The server runs as a task in the caller's event loop (asyncio only, like uvicorn), so the app
may share objects with the test. The socket is bound before the server starts, so the port is known and free of
races; leaving the block shuts the server down gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import uvicorn

__all__ = ["serve_app"]


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone and tells when it is up."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.settled = asyncio.Event()  # set once started, or once startup failed

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        except SystemExit:  # uvicorn exits the process when startup fails; a test wants an exception
            self.should_exit = True
        finally:
            self.settled.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    log_level: str = "warning",
) -> AsyncIterator[str]:
    """Run the ASGI 3 ``app`` with uvicorn on ``host:port`` (port 0 = any free port) and yield its base URL.

    Raises :class:`RuntimeError` if the server does not start within ``startup_timeout`` seconds
    (for instance because the app's lifespan startup failed).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            interface="asgi3",
            ws="none",
            lifespan="auto",
            timeout_graceful_shutdown=5,
        )
        server = _QuietServer(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        task.add_done_callback(lambda _: server.settled.set())
        try:
            with anyio.move_on_after(startup_timeout):
                await server.settled.wait()
            if task.done():
                task.result()  # re-raise what stopped the server, if anything did
            if not server.started:
                raise RuntimeError(
                    f"the app did not start on {host}:{bound_port} (startup failed or exceeded {startup_timeout} s)"
                )
            yield f"http://{host}:{bound_port}"
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
    finally:
        sock.close()
