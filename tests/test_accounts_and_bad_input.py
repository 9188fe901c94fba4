"""Several accounts on one deployment, and bad input that must end in a bounded, visible outcome."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rig import ACCOUNT, CHANNEL, SCOPE, eventually, message, rig

from amoconnect.model import Attachment

pytestmark = pytest.mark.anyio

OTHER = "77777777-7777-8888-9999-000000000000"
OTHER_SCOPE = f"{CHANNEL}_{OTHER}"


async def test_one_accounts_outage_never_stalls_another(tmp_path: Path) -> None:
    accounts = [{"name": "main", "amojo_id": ACCOUNT}, {"name": "other", "amojo_id": OTHER}]
    sources = [
        {"name": "lb", "plugin": "loopback", "account": "main"},
        {"name": "lb2", "plugin": "loopback", "account": "other"},
    ]
    async with rig(tmp_path, accounts=accounts, sources=sources, relay={"max_attempts": 50, "backoff": 0.2}) as r:
        r.amojo.connect(OTHER, webhook_url="http://amoconnect/amocrm/:scope_id")
        r.amojo.fail_next(503, times=10_000, path_contains=SCOPE)
        for i in range(5):
            await r.inbound(message(f"a{i}", "1"), instance="lb")
            await r.inbound(message(f"b{i}", "1"), instance="lb2")
        started = time.monotonic()
        await eventually(lambda: len([m for m in r.amojo.messages if m.scope_id == OTHER_SCOPE]) == 5)
        assert time.monotonic() - started < 2
        assert not [m for m in r.amojo.messages if m.scope_id == SCOPE]
        # The other account's manager answers reach its own instance.
        await r.amojo.emit_text(OTHER_SCOPE, "lb2:b0", "hello b0")
        (sent,) = await eventually(lambda: r.adapter("lb2").sent)
        assert sent.chat == "b0"
        assert r.adapter("lb").sent == []


async def test_template_without_its_params_fails_readably(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.inbound(message("c1", "1"))
        await eventually(lambda: r.amojo.messages_in("lb:c1"))
        emitted = await r.amojo.emit_template(SCOPE, "lb:c1", "Order {{number}} for {{name}}", {"name": "Ann"})
        statuses = await eventually(lambda: r.amojo.message(emitted.message_id or "").statuses)
        assert statuses[0].error_code == 905
        assert "has no value for {{number}}" in (statuses[0].error or "")
        assert r.adapter().sent == []


async def test_oversized_media_becomes_a_note_not_a_retry_loop(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.runtime.media.max_bytes = 3
        big = message("c1", "1", "see file", attachments=(Attachment(kind="file", fetch="f1", file_name="big.bin"),))
        await r.inbound(big)
        (stored,) = await eventually(lambda: r.amojo.messages_in("lb:c1"))
        assert stored.type == "text"
        assert "not relayed" in (stored.text or "")
        assert "3 byte cap" in (stored.text or "")
        assert await r.runtime.store.dead_letters() == []


async def test_reaction_to_an_unknown_message_is_dropped_with_a_log_line(tmp_path: Path) -> None:
    import structlog

    async with rig(tmp_path) as r:
        await r.inbound(message("c1", "1"))
        await eventually(lambda: r.amojo.messages_in("lb:c1"))
        with structlog.testing.capture_logs() as logs:
            await r.amojo.emit_reaction(SCOPE, "lb:c1", "00000000-0000-0000-0000-00000000dead", "👍")
            await eventually(lambda: any("reaction to a message" in e["event"] for e in logs))
        assert r.adapter().sent == []
        assert await r.runtime.store.dead_letters() == []
