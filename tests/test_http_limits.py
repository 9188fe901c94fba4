"""The HTTP server's guards in a real ``amoconnect run`` process, over raw sockets on loopback.

Idle and slow-header connections are closed, connections are bounded (the longest waiting gives way
to a new one, else 503), oversized headers get 431, slow bodies 408, and slow unauthenticated
connections cost no memory. Waits are bounded; nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import tomli_w
from anyio.abc import ByteStream, Process
from messengers.loopback import SIGNATURE_HEADER, sign
from processes import connector, free_port
from rig import ACCOUNT, CHANNEL, SECRET, base_config, message

from amoconnect.server.guard import RESERVED_DESCRIPTORS
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio

HOOK = "/hooks/loopback/lb"


class Connector:
    """A connector process and raw connections to it (closed at the end)."""

    def __init__(self, port: int, proc: Process) -> None:
        self.port, self.proc = port, proc
        self.streams: list[ByteStream] = []

    async def connect(self) -> ByteStream:
        stream = await anyio.connect_tcp("127.0.0.1", self.port)
        self.streams.append(stream)
        return stream


@asynccontextmanager
async def running(tmp_path: Path, *, wrapper: Sequence[str] = (), **server: Any) -> AsyncIterator[Connector]:
    """A connector process with these ``[server]`` settings (run through ``wrapper``)."""
    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    port = free_port()
    async with serve_app(fake.app) as amojo_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url}, server=server)
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        async with connector(config, port, wrapper=wrapper) as proc:
            c = Connector(port, proc)
            try:
                yield c
            finally:
                for stream in c.streams:
                    with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                        await stream.aclose()


def head(*, signature: str | None = "0" * 64, length: int | None = None) -> bytes:
    """A webhook request's line and headers: signed with ``signature`` (of the right form by default),
    ``Content-Length: length`` or, with ``None``, chunked."""
    lines = [f"POST {HOOK} HTTP/1.1", "Host: x"]
    lines += [f"{SIGNATURE_HEADER}: {signature}"] if signature is not None else []
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_until_closed(stream: ByteStream, *data: bytes) -> bool:
    """Send ``data``, stopping quietly when the server has closed the connection (then ``False``)."""
    try:
        for item in data:
            await stream.send(item)
    except (anyio.BrokenResourceError, ConnectionError):
        return False
    return True


async def webhook(port: int, n: int) -> int:
    """Post one signed webhook on a new connection; its status."""
    body = msgspec.json.encode([message("c1", str(n))])
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(
            f"http://127.0.0.1:{port}{HOOK}", content=body, headers={SIGNATURE_HEADER: sign(body)}
        )
    return response.status_code


async def refused(port: int) -> dict[str, float]:
    """``amoconnect_connections_refused_total`` by reason."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = re.findall(r'amoconnect_connections_refused_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(count) for reason, count in found}


async def closed_by_server(stream: ByteStream, within: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not close within ``within``)."""
    received = b""
    with anyio.fail_after(within):
        try:
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return received


async def test_idle_and_slow_header_connections_are_closed(tmp_path: Path) -> None:
    async with running(tmp_path, header_timeout=0.5, keepalive_timeout=0.5) as c:
        port = c.port
        idle = [await c.connect() for _ in range(30)]
        slow = [await c.connect() for _ in range(30)]
        for stream in slow:
            await stream.send(f"POST {HOOK} HTTP/1.1\r\nHost: x\r\n".encode())

        async def trickle(stream: ByteStream) -> None:
            for _ in range(100):  # one header byte every 50 ms: 5 s, were it allowed
                if not await send_until_closed(stream, b"X"):
                    return
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tasks:
            for stream in slow:
                tasks.start_soon(trickle, stream)
            for stream in idle + slow:
                assert await closed_by_server(stream) == b""  # closed, nothing answered
        kept = await c.connect()
        body = msgspec.json.encode([message("c1", "1")])
        await kept.send(head(signature=sign(body), length=len(body)) + body)
        answered = await closed_by_server(kept)  # answered, then closed once idle for keepalive_timeout
        assert answered.startswith(b"HTTP/1.1 200 ")
        counts = await refused(port)
        assert counts["header_timeout"] == 60
        assert await webhook(port, 2) == 200
    lines = [line for line in log_lines(tmp_path) if "connections refused" in line["event"]]
    # 60 refusals within a second: the first logged at once, the other 59 in one line when the server stopped
    assert [(line["reason"], line["count"]) for line in lines] == [("header_timeout", 1), ("header_timeout", 59)]


async def test_connections_are_bounded(tmp_path: Path) -> None:
    async with running(tmp_path, max_connections=20, header_timeout=30, body_timeout=30) as c:
        port = c.port
        idle = [await c.connect() for _ in range(20)]
        # At the cap, a new connection takes the place of the one waiting longest without a request.
        assert await webhook(port, 1) == 200
        assert await closed_by_server(idle[0]) == b""
        # Connections in the middle of a request are never displaced: with 20 of them, a new one gets 503.
        busy = []
        for _ in range(20):
            stream = await c.connect()
            await stream.send(head(length=100) + b"[")
            busy.append(stream)
        await anyio.sleep(0.5)  # let the server take their heads
        extra = await c.connect()
        answer = await closed_by_server(extra)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in answer
        for stream in busy:
            await stream.aclose()
        counts = await refused(port)
        assert counts["evicted"] >= 20 and counts["max_connections"] >= 1
        assert await webhook(port, 2) == 200


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")
async def test_more_idle_connections_than_file_descriptors(tmp_path: Path) -> None:
    """systemd gives a service 1,024 descriptors; here 400. 600 idle connections used to take them all,
    and every request after failed. The cap is lowered to fit, and a new connection displaces an idle one."""
    async with running(tmp_path, wrapper=["prlimit", "--nofile=400:400", "--"]) as c:
        idle = [await c.connect() for _ in range(600)]
        assert await webhook(c.port, 1) == 200
        assert await closed_by_server(idle[0]) == b""
        counts = await refused(c.port)
        assert counts["evicted"] >= 600 - (400 - RESERVED_DESCRIPTORS)
    (lowered,) = [line for line in log_lines(tmp_path) if line["event"].startswith("server.max_connections lowered")]
    assert lowered["effective"] == 400 - RESERVED_DESCRIPTORS


async def test_oversized_headers_and_slow_bodies_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path, max_header_bytes=8192, body_timeout=0.5) as c:
        port = c.port
        huge = await c.connect()
        fillers = [f"X-Filler-{i}: {'a' * 500}\r\n".encode() for i in range(40)]
        await send_until_closed(huge, f"POST {HOOK} HTTP/1.1\r\nHost: x\r\n".encode(), *fillers)
        answer = await closed_by_server(huge)  # the 431 may be lost to the reset that unread headers cause
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        slow = await c.connect()
        await slow.send(head(length=100) + b"[")
        answer = await closed_by_server(slow)
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"body_timeout"' in answer
        assert (await refused(port))["header_too_large"] == 1
        assert await webhook(port, 1) == 200


async def refused_webhooks(port: int) -> dict[str, float]:
    """``amoconnect_webhooks_refused_total`` of the loopback messenger, by reason."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = re.findall(r'amoconnect_webhooks_refused_total\{reason="(\w+)",source="loopback"\} (\S+)', text)
    return {reason: float(count) for reason, count in found}


def output_of(tmp_path: Path) -> str:
    """What the connector process wrote (processes.start_connector keeps it beside the config)."""
    return "".join(path.read_text() for path in tmp_path.glob("amoconnect.*.log"))


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """The connector's JSON log lines, decoded."""
    return [msgspec.json.decode(line) for line in output_of(tmp_path).splitlines() if line.startswith("{")]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def test_slow_unauthenticated_connections_cost_no_memory(tmp_path: Path) -> None:
    """200 connections each announce a 4 MiB webhook and send 1 MiB of it, then stall: half without the
    signature header (refused before the body), half with one of the right form (their bodies share
    ``max_body_memory``). Unbounded, they held 200 MiB; bench/ measures 1,000 of them."""
    async with running(tmp_path, max_body_memory=16 * 2**20, body_timeout=30) as c:
        port, proc = c.port, c.proc
        assert await webhook(port, 1) == 200
        before = rss_mib(proc.pid)
        answers: list[bytes] = []

        async def stall(n: int) -> None:
            stream = await c.connect()
            chunks = [b"10000\r\n" + b"[" * 0x10000 + b"\r\n"] * 16  # 64 KiB each
            await send_until_closed(stream, head(signature="0" * 64 if n % 2 else None), *chunks)
            with anyio.move_on_after(1), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                answers.append(await stream.receive())

        async with anyio.create_task_group() as tasks:
            for n in range(200):
                tasks.start_soon(stall, n)
        grown = rss_mib(proc.pid) - before
        print(f"RSS {before:.0f} MiB before, grew {grown:.1f} MiB")
        assert grown < 64, f"RSS grew {grown:.0f} MiB with 200 slow connections"
        assert {answer[9:12] for answer in answers} <= {b"401", b"503"}  # (a reset may overtake an answer)
        counts = await refused_webhooks(port)
        assert counts["bad_signature"] == 100  # every unsigned one, at its headers
        assert counts["body_memory"] >= 50  # the signed ones that did not fit in 16 MiB
        assert await webhook(port, 2) == 200  # a well-behaved sender is still served
