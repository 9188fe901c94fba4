"""Crash safety with real processes: ``amoconnect run`` is killed with SIGKILL mid-flow and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import tomli_w
from rig import ACCOUNT, CHANNEL, MESSENGERS, SCOPE, SECRET, base_config, message

from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CONVERSATIONS = 20
N_MESSAGES = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Slow:
    """Delays every amojo answer a little, so that jobs are in flight when the connector dies."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app, self.delay = app, delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await anyio.sleep(self.delay)
        await self.app(scope, receive, send)


@asynccontextmanager
async def connector(config: Path, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    log_path = config.with_suffix(f".{time.monotonic_ns()}.log")
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally block
    proc = subprocess.Popen(
        [
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
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"connector did not start; its output: {log_path.read_text()}")
                await anyio.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        log.close()


async def test_kill_9_mid_flow_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    from messengers.loopback import SIGNATURE_HEADER, sign

    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    port = free_port()
    async with serve_app(Slow(fake.app, 0.002)) as amojo_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url}, relay={"concurrency": 16, "backoff": 0.05})
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        events = [message(f"c{i % N_CONVERSATIONS}", str(i), f"m{i}") for i in range(N_MESSAGES)]
        acked: set[int] = set()
        url = f"http://127.0.0.1:{port}/hooks/loopback/lb"

        async def post(client: httpx.AsyncClient, i: int) -> None:
            body = msgspec.json.encode([events[i]])
            try:
                response = await client.post(url, content=body, headers={SIGNATURE_HEADER: sign(body)})
            except httpx.TransportError:
                return  # not acknowledged: the messenger will send it again
            if response.status_code == 200:
                acked.add(i)

        async with connector(config, port) as proc, httpx.AsyncClient(timeout=5) as client:
            killed_at = None
            for i in range(N_MESSAGES):
                await post(client, i)
                if len(acked) >= N_MESSAGES // 2 and killed_at is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed_at = len(fake.messages)
                    break
        assert killed_at is not None
        assert killed_at < len(acked), "the kill should land while acknowledged messages are still queued"
        restarted = time.monotonic()
        async with connector(config, port), httpx.AsyncClient(timeout=5) as client:
            first_after = None
            # A messenger re-sends what we did not acknowledge, and re-sends some it did (it cannot know).
            for i in range(N_MESSAGES):
                if i not in acked or i % 10 == 0:
                    await post(client, i)
                if first_after is None and len(fake.messages) > killed_at:
                    first_after = time.monotonic() - restarted
            deadline = time.monotonic() + 30
            while len(fake.messages) < N_MESSAGES and time.monotonic() < deadline:
                await anyio.sleep(0.05)
    msgids = [m.msgid for m in fake.messages]
    assert len(msgids) == N_MESSAGES == len(set(msgids)), "each message reaches amoCRM exactly once"
    for c in range(N_CONVERSATIONS):
        texts = [m.text for m in fake.messages if m.conversation_id == f"lb:c{c}"]
        assert texts == [f"m{i}" for i in range(c, N_MESSAGES, N_CONVERSATIONS)], f"order in conversation c{c}"
    assert SCOPE in fake.connections
