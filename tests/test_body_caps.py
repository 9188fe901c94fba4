"""Body caps at the core's webhook routes: over the cap is 413, nothing stored, read streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
from rig import SCOPE, rig

from amoconnect.testing.security import check_body_cap

pytestmark = pytest.mark.anyio


async def test_amocrm_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    async with rig(tmp_path, server={"max_body_bytes": 64 * 1024}) as r:
        r.runtime.relay.concurrency = 0
        await check_body_cap(
            r.client, f"/amocrm/{SCOPE}", 64 * 1024, r.runtime.store, headers={"X-Signature": "0" * 40}
        )
        await check_body_cap(r.client, "/amocrm/unknown-scope", 64 * 1024, r.runtime.store)


async def test_messenger_webhooks_over_the_cap_are_refused_while_streaming(tmp_path: Path) -> None:
    async with rig(tmp_path, server={"max_messenger_body_bytes": 64 * 1024}) as r:
        r.runtime.relay.concurrency = 0
        for url in ("/hooks/loopback/lb", "/hooks/windowed/wa", "/hooks/plain/pl"):
            await check_body_cap(r.client, url, 64 * 1024, r.runtime.store)


async def test_the_default_caps_hold(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.runtime.relay.concurrency = 0
        assert (r.runtime.config.server.max_body_bytes, r.runtime.config.server.max_messenger_body_bytes) == (
            2**20,
            4 * 2**20,
        )
        await check_body_cap(r.client, f"/amocrm/{SCOPE}", 2**20, r.runtime.store)
        await check_body_cap(r.client, "/hooks/loopback/lb", 4 * 2**20, r.runtime.store)
