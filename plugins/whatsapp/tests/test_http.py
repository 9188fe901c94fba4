"""Over real HTTP on loopback: uvicorn serving the connector, the fake amojo and the fake Graph API."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx
import pytest
from amoconnect.config import parse_config
from amoconnect.runtime import Runtime, serve
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.kit import eventually
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import store_settings
from whatsapp_peer import peer_check
from whatsapp_rig import ACCOUNT, APP_SECRET, BOT, CHANNEL, SCOPE, SECRET, VERIFY

from amoconnect_whatsapp.fake import FakeWhatsApp

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_both_directions_with_media_and_statuses_over_http(tmp_path: Path) -> None:
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=10) as http:
        fake = FakeWhatsApp(http=http, app_secret=APP_SECRET, auto_statuses=("sent", "delivered", "read"))
        number = fake.add_number("1000000001", waba_id="2000000001", token="token-one")
        amojo = FakeAmojo(CHANNEL, SECRET, bot_id=BOT, webhook_client=http)
        amojo.connect(ACCOUNT, webhook_url=f"{public}/amocrm/:scope_id")
        async with serve_app(amojo.app) as amojo_url, serve_app(fake.app) as api_url:
            settings = {
                "phone_number_id": number.phone_number_id,
                "waba_id": number.waba_id,
                "token": number.token,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY,
                "api_url": api_url,
                "register_webhook": "number",
            }
            config = parse_config(
                {
                    "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": amojo_url, "bot_id": BOT},
                    "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
                    "sources": [{"name": "wa", "plugin": "whatsapp", "account": "main", "settings": settings}],
                    "server": {"public_url": public},
                    "store": store_settings(tmp_path),
                    "relay": {"backoff": 0.05},
                }
            )
            runtime = Runtime(config, plugin="whatsapp")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=port, stop=stop))
                await eventually(lambda: number.webhook_url == f"{public}/hooks/whatsapp/wa", within=10)
                anna = fake.add_user("4915100000001", name="Anna")
                await fake.client_writes(anna, "hello over HTTP")
                await fake.client_sends_media(anna, "image", b"\xff\xd8 jpeg", "image/jpeg", caption="a cat")
                conversation = "wa:4915100000001"
                stored = await eventually(lambda: len(w := amojo.messages_in(conversation)) == 2 and w)
                media_url = stored[1].content.media
                assert media_url is not None and media_url.startswith(f"{public}/media/")
                assert (await http.get(media_url)).content == b"\xff\xd8 jpeg"
                emitted = await amojo.emit_reply(SCOPE, conversation, stored[0].id, "hello back")
                assert emitted.status == 200
                sent = await eventually(lambda: fake.sent_to(anna))
                assert sent[0].text == "hello back" and "context" in sent[0].body
                statuses = await eventually(
                    lambda: [s for s in amojo.message(emitted.message_id or "").statuses if s.delivery_status == 2]
                )
                assert statuses
                stop.set()
    peer_check(fake)
