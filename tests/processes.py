"""Real ``amoconnect run`` processes for end-to-end and crash tests: start one, wait until it serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import Process
from rig import MESSENGERS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Slow:
    """Delays every request to ``app`` a little, so that requests are in flight when a connector dies.

    With ``hold_answer`` the request is handled at once and its answer held back instead: a
    connector killed meanwhile never learns what the service did.
    """

    def __init__(self, app: Any, delay: float, *, hold_answer: bool = False) -> None:
        self.app, self.delay, self.hold_answer = app, delay, hold_answer
        self.in_flight = 0
        """Requests received and not answered yet."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def held_back(message: Any) -> None:
            if message["type"] == "http.response.start":
                await anyio.sleep(self.delay)
            await send(message)

        self.in_flight += 1
        try:
            if not self.hold_answer:
                await anyio.sleep(self.delay)
            await self.app(scope, receive, held_back if self.hold_answer else send)
        finally:
            self.in_flight -= 1


async def start_connector(
    config: Path,
    port: int,
    env: Mapping[str, str] | None = None,
    *,
    log: Path | None = None,
    wrapper: Sequence[str] = (),
) -> Process:
    """Start ``amoconnect run`` on ``port`` (``env`` added to the environment); returns once it serves.

    Its output goes to ``log`` (by default a new file beside ``config``). ``wrapper`` runs it through a
    command that then executes it (``["prlimit", "--nofile=400:400", "--"]``).
    """
    log_path = log or config.with_suffix(f".{port}.{time.monotonic_ns()}.log")
    with open(log_path, "wb") as output:
        proc = await anyio.open_process(
            [
                *wrapper,
                sys.executable,
                "-m",
                "amoconnect",
                "run",
                "--config",
                str(config),
                "--plugin-dir",
                str(MESSENGERS),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env={**os.environ, **(env or {})},
        )
    try:
        await _serving(proc, port, log_path)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop_connector(proc)
        raise
    return proc


async def listening(base_url: str) -> bool:
    """True once a connector answers ``GET /healthz`` at ``base_url``."""
    async with httpx.AsyncClient() as client:
        try:
            return (await client.get(f"{base_url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False


async def _serving(proc: Process, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while not await listening(f"http://127.0.0.1:{port}"):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"connector did not start; its output: {await anyio.Path(log_path).read_text()}")
        await anyio.sleep(0.05)


async def stop_connector(proc: Process) -> None:
    """SIGTERM (the connector drains), then wait for it to exit (SIGKILL after 20 s)."""
    if proc.returncode is None:
        proc.terminate()
    with anyio.move_on_after(20):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@asynccontextmanager
async def connector(
    config: Path, port: int, env: Mapping[str, str] | None = None, *, wrapper: Sequence[str] = ()
) -> AsyncIterator[Process]:
    """A connector process for the block, stopped gracefully at its end unless it died."""
    proc = await start_connector(config, port, env, wrapper=wrapper)
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            await stop_connector(proc)
