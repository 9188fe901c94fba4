"""Coexistence over real HTTP on loopback: what the business writes in the WhatsApp Business app
(``smb_message_echoes``) reaches amoCRM as the channel bot's message; the Cloud API's own sends do not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from amoconnect.config import parse_config
from amoconnect.runtime import Runtime, listen, serve
from amoconnect.testing.fake_amojo import FakeAmojo, StoredMessage
from amoconnect.testing.kit import eventually
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import store_settings
from whatsapp_peer import peer_check
from whatsapp_rig import ACCOUNT, APP_SECRET, BOT, CHANNEL, SCOPE, SECRET, VERIFY

from amoconnect_whatsapp.fake import FakeWhatsApp

pytestmark = pytest.mark.anyio

CONVERSATION = "wa:4915100000001"


@dataclass
class World:
    fake: FakeWhatsApp
    amojo: FakeAmojo

    def messages(self) -> list[StoredMessage]:
        return self.amojo.messages_in(CONVERSATION)

    async def arrived(self, count: int) -> list[StoredMessage]:
        await eventually(lambda: len(self.messages()) >= count)
        return self.messages()


@asynccontextmanager
async def world(tmp_path: Path, *, business_app: bool = True) -> AsyncIterator[World]:
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    public = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=10) as http:
        fake = FakeWhatsApp(http=http, app_secret=APP_SECRET, auto_statuses=("sent", "delivered"))
        number = fake.add_number("1000000001", waba_id="2000000001", token="token-one")
        number.business_app = business_app
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
                tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=port, stop=stop, sock=sock))
                await eventually(lambda: number.webhook_url == f"{public}/hooks/whatsapp/wa", within=10)
                yield World(fake, amojo)
                assert not await runtime.store.dead_letters()
                stop.set()
    peer_check(fake)


async def test_the_business_app_s_messages_reach_amocrm_as_the_bot_and_api_sends_do_not(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        anna = w.fake.add_user("4915100000001", name="Anna")
        await w.fake.client_writes(anna, "Is my order ready?")
        (question,) = await w.arrived(1)
        # A manager answers from amoCRM through the Cloud API: Meta makes no echo of it.
        emitted = await w.amojo.emit_reply(SCOPE, CONVERSATION, question.id, "Checking now")
        assert emitted.status == 200
        await eventually(lambda: w.fake.sent_to(anna))
        # The owner answers from the WhatsApp Business app on the phone.
        echo = await w.fake.business_app_writes(anna, "Ready, come by after 5")
        question, manager, owner = await w.arrived(3)
        assert manager.from_manager and manager.text == "Checking now"
        assert (owner.text, owner.sender_id, owner.silent) == ("Ready, come by after 5", BOT, True)
        assert owner.chat_id == question.chat_id
        assert owner.receiver_id == question.sender_id
        # Meta delivers the echo again: still one message in amoCRM.
        w.fake.duplicate_next()
        await w.fake.business_app_writes(anna, "See you")
        await w.arrived(4)
        # The client quotes the owner's message: amoCRM gets the quote of the bot's message.
        await w.fake.client_writes(anna, "Great, thanks", reply_to=echo["id"])
        thanks = (await w.arrived(5))[-1]
        assert thanks.payload is not None
        assert thanks.payload.reply_to is not None
        assert thanks.payload.reply_to.message.id == owner.id
        # The owner corrects the message in the app: amoCRM's copy is edited.
        await w.fake.business_app_edits(anna, echo["id"], "Ready, come by after 6")
        edits = await eventually(lambda: list(owner.edits))
        assert edits[-1].message.text == "Ready, come by after 6"
        assert [m.text for m in w.messages()] == [
            "Is my order ready?",
            "Checking now",
            "Ready, come by after 6",
            "See you",
            "Great, thanks",
        ]


async def test_an_echo_to_someone_amocrm_has_not_seen_is_not_imported(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        boris = w.fake.add_user("4915100000002", name="Boris")
        await w.fake.business_app_writes(boris, "Hello Boris, your parcel is here")
        await w.fake.client_writes(boris, "Thanks!")
        await eventually(lambda: w.amojo.messages_in("wa:4915100000002"))
        assert [m.text for m in w.amojo.messages_in("wa:4915100000002")] == ["Thanks!"]


async def test_a_number_not_on_the_business_app_makes_no_echoes(tmp_path: Path) -> None:
    async with world(tmp_path, business_app=False) as w:
        anna = w.fake.add_user("4915100000001", name="Anna")
        with pytest.raises(LookupError, match="not on the WhatsApp Business app"):
            await w.fake.business_app_writes(anna, "Hello")
