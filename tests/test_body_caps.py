"""Body caps at the core's webhook routes: over the cap is 413, nothing stored, read streaming; a request
whose headers lack the credentials is refused before its body is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from messengers.loopback import SIGNATURE_HEADER
from rig import SCOPE, eventually, message, rig

from amoconnect.testing.security import check_body_cap, check_refused_unread

pytestmark = pytest.mark.anyio

AMOCRM_SIGNED = {"X-Signature": "0" * 40}
"""A signature of the right form (the body is refused before it could be checked)."""
LOOPBACK_SIGNED = {SIGNATURE_HEADER: "0" * 64}


async def test_amocrm_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    async with rig(tmp_path, server={"max_body_bytes": 64 * 1024}) as r:
        r.runtime.relay.concurrency = 0
        await check_body_cap(r.client, f"/amocrm/{SCOPE}", 64 * 1024, r.runtime.store, headers=AMOCRM_SIGNED)
        await check_body_cap(r.client, "/amocrm/unknown-scope", 64 * 1024, r.runtime.store, headers=AMOCRM_SIGNED)


async def test_messenger_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    async with rig(tmp_path, server={"max_messenger_body_bytes": 64 * 1024}) as r:
        r.runtime.relay.concurrency = 0
        for url in ("/hooks/loopback/lb", "/hooks/windowed/wa", "/hooks/plain/pl"):
            await check_body_cap(r.client, url, 64 * 1024, r.runtime.store, headers=LOOPBACK_SIGNED)


async def test_the_default_caps_hold(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.runtime.relay.concurrency = 0
        assert (r.runtime.config.server.max_body_bytes, r.runtime.config.server.max_messenger_body_bytes) == (
            2**20,
            4 * 2**20,
        )
        await check_body_cap(r.client, f"/amocrm/{SCOPE}", 2**20, r.runtime.store, headers=AMOCRM_SIGNED)
        await check_body_cap(r.client, "/hooks/loopback/lb", 4 * 2**20, r.runtime.store, headers=LOOPBACK_SIGNED)


@pytest.mark.parametrize(
    "headers", [{}, {"X-Signature": ""}, {"X-Signature": "0" * 39}, {"X-Signature": "z" * 40}, {"X-Other": "0" * 40}]
)
async def test_amocrm_webhooks_without_a_signature_are_refused_unread(tmp_path: Path, headers: dict[str, str]) -> None:
    async with rig(tmp_path) as r:
        for scope in (SCOPE, "unknown-scope"):
            refused = await check_refused_unread(r.client, f"/amocrm/{scope}", r.runtime.store, headers=headers)
            assert refused.json()["error"] == "bad_signature"


async def test_messenger_webhooks_without_credentials_are_refused_unread(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for headers in ({}, {SIGNATURE_HEADER: "not-hex"}, {SIGNATURE_HEADER: "0" * 63}):
            await check_refused_unread(r.client, "/hooks/loopback/lb", r.runtime.store, headers=headers)


async def test_bodies_being_read_share_the_memory_cap(tmp_path: Path) -> None:
    # Each body takes what passes its first 64 KiB from the 256 KiB all share.
    server = {"max_body_memory": 256 * 1024, "max_messenger_body_bytes": 256 * 1024, "max_body_bytes": 64 * 1024}
    async with rig(tmp_path, server=server) as r:
        release = anyio.Event()
        waiting: list[int] = []

        async def held(n: int) -> AsyncIterator[bytes]:
            yield b" " * (164 * 1024)
            waiting.append(n)  # the app took the first 100 KiB and asks for more
            await release.wait()
            yield b"[]"

        answers: dict[int, httpx.Response] = {}

        async def post(n: int) -> None:
            answers[n] = await r.client.post("/hooks/loopback/lb", content=held(n), headers=LOOPBACK_SIGNED)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(post, 1)
            tasks.start_soon(post, 2)
            await eventually(lambda: len(waiting) == 2)
            assert "amoconnect_body_memory_bytes 204800.0" in (await r.client.get("/metrics")).text
            await post(3)  # its first chunk does not fit
            declared = await r.client.post("/hooks/loopback/lb", content=b" " * 130 * 1024, headers=LOOPBACK_SIGNED)
            for refused in (answers[3], declared):
                assert (refused.status_code, refused.json()["error"]) == (503, "body_memory")
                assert refused.headers["retry-after"] == "5" and refused.headers["connection"] == "close"
            assert waiting == [1, 2]  # the third body was not read past its first chunk
            assert (await r.inbound(message("c1", "1"))).status_code == 200  # small bodies take no shared memory
            release.set()
        assert answers[1].status_code == answers[2].status_code == 401  # read in full, then checked
        metrics = (await r.client.get("/metrics")).text
        assert "amoconnect_body_memory_bytes 0.0" in metrics
        assert 'amoconnect_webhooks_refused_total{reason="body_memory",source="loopback"} 2.0' in metrics
        assert (await r.inbound(message("c1", "2"))).status_code == 200
