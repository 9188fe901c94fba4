from __future__ import annotations

import socket

import pytest
import structlog

from amoconnect.errors import PluginError
from amoconnect.sandbox import run_sandbox

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sandbox_shows_a_conversation_crossing_both_ways() -> None:
    with structlog.testing.capture_logs() as logs:
        await run_sandbox("fake", port=free_port(), rounds=2, interval=0)
    events = [entry["event"] for entry in logs]
    assert events.count("2. amoCRM received it") == 2
    assert events.count("4. the client got the answer in the messenger") == 2
    # fakechat reports receipts, as README's quick start shows for Telegram: the client's messenger
    # reports each answer delivered and read, and amoCRM shows it read (delivery_status 2)
    shown = [entry["delivery_status"] for entry in logs if entry["event"] == "5. amoCRM shows the delivery status"]
    assert shown == [2, 2]
    assert not [entry for entry in logs if entry["log_level"] in ("error", "warning")]


async def test_sandbox_needs_a_plugin_with_a_fake() -> None:
    with pytest.raises(PluginError, match="plugin 'nosuch' is not installed"):
        await run_sandbox("nosuch", port=free_port(), rounds=1)
