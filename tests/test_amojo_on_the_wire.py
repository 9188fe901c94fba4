"""What AmojoClient signs is what goes on the wire, on both transports, for ids that need quoting.

Below the client and below any HTTP server: a raw socket on loopback reads each request as
bytes, and the test recomputes the HMAC (spec §2) over the request line's path and the body it
actually received.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import pytest

from amoconnect.amojo import wire
from amoconnect.amojo.client import AmojoClient
from amoconnect.errors import AmojoError
from amoconnect.http import RetryPolicy
from amoconnect.signing import signature_for

pytestmark = pytest.mark.anyio

SECRET = "0123456789abcdef0123456789abcdef01234567"
IDS = ["shop-bot:1003", "a/b", "50%", "100%25", "with space", "ключ-ü", "?x=1&y#z", "+7(999)~'!*@$,;"]
"""Ids with every kind of character a path must carry: reserved, percent, space, non-ASCII."""


@dataclass
class Captured:
    method: str
    target: str
    """The request-target of the request line, byte for byte."""
    headers: dict[str, str]
    body: bytes


async def _read_request(stream: anyio.abc.ByteStream) -> Captured:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        body += await stream.receive()
    method, target, _version = request_line.split(" ")
    return Captured(method, target, headers, body)


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[str, list[Captured]]]:
    """A loopback socket that records every request and answers ``204 No Content``."""
    captured: list[Captured] = []

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    captured.append(await _read_request(stream))
                    await stream.send(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{port}", captured
        tg.cancel_scope.cancel()


def _calls(odd: str) -> list[tuple[str, list[str], Callable[[AmojoClient], Awaitable[Any]]]]:
    """(method, the ids its path must carry, the call) for every amojo method, ``odd`` in each id."""
    user = wire.ChatUser(id="u", name="Ann")
    message = wire.MessagePayload(
        timestamp=1,
        msec_timestamp=1000,
        msgid=odd,
        conversation_id=odd,
        sender=wire.Participant(id="u", name="Ann"),
        message=wire.MessageContent(type="text", text="hi"),
    )
    return [
        ("POST", [odd], lambda c: c.connect("acc")),
        ("DELETE", [odd], lambda c: c.disconnect("acc")),
        ("POST", [odd], lambda c: c.create_chat(odd, odd, user)),
        ("POST", [odd], lambda c: c.send_message(odd, message)),
        ("POST", [odd, odd], lambda c: c.update_delivery_status(odd, odd, 1)),
        ("GET", [odd, odd], lambda c: c.get_history(odd, odd)),
        ("POST", [odd], lambda c: c.typing(odd, odd, "u")),
        ("POST", [odd], lambda c: c.react(odd, user_id="u", emoji="👍", conversation_id=odd, msgid=odd)),
    ]


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
@pytest.mark.parametrize("odd", IDS)
async def test_the_signature_covers_the_request_target_sent(
    raw_server: tuple[str, list[Captured]], transport: Any, odd: str
) -> None:
    base_url, captured = raw_server
    calls = _calls(odd)
    async with AmojoClient(
        odd, SECRET, base_url=base_url, transport=transport, retry=RetryPolicy(attempts=1)
    ) as client:
        for _method, _ids, call in calls:
            with suppress(AmojoError):  # 204 is no answer some methods accept; what was sent is the point
                await call(client)
    assert [c.method for c in captured] == [method for method, _, _ in calls]
    for request, (_, ids, _) in zip(captured, calls, strict=True):
        path, _, query = request.target.partition("?")
        assert request.headers["content-md5"] == hashlib.md5(request.body).hexdigest()
        expected = signature_for(
            SECRET,
            request.method,
            request.headers["content-md5"],
            request.headers["content-type"],
            request.headers["date"],
            path,
        )
        assert request.headers["x-signature"] == expected, f"{transport} sent {request.target!r}"
        assert path.isascii() and " " not in path
        segments = [unquote(segment) for segment in path.split("/")]
        assert all(segments.count(i) >= ids.count(i) for i in ids), f"{odd!r} not one segment of {path!r}"
        assert query in ("", "offset=0&limit=50")


async def test_both_transports_send_the_same_request_target(raw_server: tuple[str, list[Captured]]) -> None:
    base_url, captured = raw_server
    for transport in ("httpx", "aiohttp"):
        async with AmojoClient("c", SECRET, base_url=base_url, transport=transport) as client:  # type: ignore[arg-type]
            for odd in IDS:
                await client.get_history(odd, odd)
    targets = [c.target for c in captured]
    assert targets[: len(IDS)] == targets[len(IDS) :]
    assert targets[0] == "/v2/origin/custom/shop-bot%3A1003/chats/shop-bot%3A1003/history?offset=0&limit=50"


async def test_a_base_url_with_a_path_prefix_is_sent_but_not_signed(raw_server: tuple[str, list[Captured]]) -> None:
    base_url, captured = raw_server
    async with AmojoClient("c", SECRET, base_url=f"{base_url}/amojo/", transport="httpx") as client:
        await client.get_history("s:1", "chat")
    (request,) = captured
    assert request.target.startswith("/amojo/v2/origin/custom/s%3A1/chats/chat/history?")
    signed = "/v2/origin/custom/s%3A1/chats/chat/history"
    headers = request.headers
    expected = signature_for(SECRET, "GET", headers["content-md5"], headers["content-type"], headers["date"], signed)
    assert headers["x-signature"] == expected
