"""Both directions over real HTTP on loopback: FakeTelegram, the connector and FakeAmojo each on its own port."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from amoconnect.config import parse_config
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.kit import eventually
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import store_settings

from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio


class _Later:
    """An ASGI app that forwards to the runtime's app once it exists (the port must be known first)."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        assert self.runtime is not None
        assert self.runtime.app is not None
        await self.runtime.app(scope, receive, send)


async def test_conversation_over_real_http(tmp_path: Path) -> None:
    channel, account, secret = str(uuid.uuid4()), str(uuid.uuid4()), "channel-secret"
    telegram = FakeTelegram()
    amojo = FakeAmojo(channel, secret)
    connector = _Later()
    async with serve_app(telegram) as telegram_url, serve_app(amojo) as amojo_url, serve_app(connector) as public:
        amojo.connect(account, webhook_url=f"{public}/amocrm/:scope_id")
        config = parse_config(
            {
                "channel": {"id": channel, "secret": secret, "amojo_url": amojo_url},
                "accounts": [{"name": "acme", "amojo_id": account}],
                "sources": [
                    {
                        "name": "bot",
                        "plugin": "telegram",
                        "account": "acme",
                        "settings": telegram.settings(telegram_url),
                    }
                ],
                "store": store_settings(tmp_path),
                "server": {"public_url": public},
            }
        )
        pm = get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect_telegram.plugin"])
        async with Runtime(config, plugin_manager=pm) as runtime:
            connector.runtime = runtime
            assert telegram.webhook_url == f"{public}/hooks/telegram/bot"
            chat = telegram.add_client("Anna")
            conversation = f"bot:{chat}"
            await telegram.client_writes(chat, "hello over the wire")
            await eventually(lambda: [m.text for m in amojo.messages_in(conversation)] == ["hello over the wire"])
            await telegram.client_sends(chat, "photo", b"jpeg over the wire")
            await eventually(lambda: len(amojo.messages_in(conversation)) == 2)
            media = amojo.messages_in(conversation)[-1].content.media
            assert media is not None
            assert media.startswith(f"{public}/media/")
            result = await amojo.emit_text(f"{channel}_{account}", conversation, "answer over the wire")
            await eventually(lambda: [m.text for m in telegram.sent_to(chat)] == ["answer over the wire"])
            assert result.message_id is not None
            await eventually(lambda: amojo.message(result.message_id or "").delivery_status == 1)
