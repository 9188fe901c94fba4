"""What the community writes in VK's own interface reaches amoCRM as the channel bot's, over real HTTP.

The connector (uvicorn), FakeVK and the fake amojo each listen on loopback; FakeVK sends its
Callback API events over HTTP, ``message_reply`` included: for an admin's answer written in
VK's interface and for each of our own ``messages.send``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from amoconnect.config import parse_config
from amoconnect.errors import ConfigError
from amoconnect.runtime import Runtime, listen, serve
from amoconnect.testing.fake_amojo import EmitResult, FakeAmojo, StoredMessage
from amoconnect.testing.kit import LOOPBACK_NETWORKS, eventually
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import store_settings

from amoconnect_vk.adapter import VKAdapter
from amoconnect_vk.fake import FakeVK

pytestmark = pytest.mark.anyio

CHANNEL = str(uuid.uuid4())
SECRET = "channel-secret"
ACCOUNT = str(uuid.uuid4())
SCOPE = f"{CHANNEL}_{ACCOUNT}"
BOT = str(uuid.uuid4())
VK_SECRET = "vk-callback-secret"


@dataclass
class World:
    """The connector between FakeVK and the fake amojo, all on loopback."""

    runtime: Runtime
    vk: FakeVK
    amojo: FakeAmojo
    user: int

    @property
    def conversation(self) -> str:
        return f"shop:{self.user}"

    def messages(self) -> list[StoredMessage]:
        return self.amojo.messages_in(self.conversation)

    async def arrived(self, count: int) -> list[StoredMessage]:
        await eventually(lambda: len(self.messages()) >= count)
        return self.messages()

    async def manager_writes(self, text: str) -> tuple[EmitResult, int]:
        """A manager answers from amoCRM; the VK message it became (its conversation_message_id)."""
        before = len(self.vk.received(self.user))
        emitted = await self.amojo.emit_text(SCOPE, self.conversation, text)
        assert emitted.status == 200
        await eventually(lambda: len(self.vk.received(self.user)) > before)
        stored = self.amojo.message(emitted.message_id or "")
        await eventually(lambda: stored.delivery_status is not None)  # recorded, and reported delivered
        return emitted, int(self.vk.received(self.user)[-1].message_id)


def config(vk: FakeVK, vk_url: str, amojo_url: str, port: int, workdir: Path, **channel: Any) -> dict[str, Any]:
    return {
        "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": amojo_url, "bot_id": BOT, **channel},
        "accounts": [{"name": "acme", "amojo_id": ACCOUNT}],
        "sources": [
            {
                "name": "shop",
                "plugin": "vk",
                "account": "acme",
                "settings": vk.settings(vk_url, secret=VK_SECRET, configure=True),
                "authors": {"424242": "a0000000-0000-4000-8000-0000000000a1"},
            }
        ],
        "store": store_settings(workdir),
        "server": {"public_url": f"http://127.0.0.1:{port}"},
        "http": {"media_allow_networks": list(LOOPBACK_NETWORKS)},
        "relay": {"backoff": 0.02, "max_backoff": 0.2},
    }


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=10) as http:
        vk = FakeVK(http=http)
        amojo = FakeAmojo(CHANNEL, SECRET, bot_id=BOT, webhook_client=http)
        sock = listen("127.0.0.1", 0)
        port = sock.getsockname()[1]
        amojo.connect(ACCOUNT, webhook_url=f"http://127.0.0.1:{port}/amocrm/:scope_id")
        async with serve_app(vk) as vk_url, serve_app(amojo.app) as amojo_url:
            runtime = Runtime(parse_config(config(vk, vk_url, amojo_url, port, tmp_path)), plugin="vk")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=port, stop=stop, sock=sock))
                await eventually(lambda: vk.servers or None, within=10)  # set up at startup

                async def up() -> bool:
                    try:
                        return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                for _ in range(200):  # bounded: the server listens within a few seconds
                    if await up():
                        break
                    await anyio.sleep(0.05)
                user = vk.add_user("Anna", "Petrova")
                yield World(runtime, vk, amojo, user)
                assert not await runtime.store.dead_letters()
                stop.set()


async def test_an_admin_s_answer_in_vk_reaches_amocrm_as_the_bot_silently(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        assert "message_reply" in next(iter(w.vk.servers.values())).events, "subscribed at setup"
        await w.vk.client_writes(w.user, "Is the blue one in stock?")
        (question,) = await w.arrived(1)
        await w.vk.admin_writes(w.user, "Yes, two left", reply_to="1")
        question, answer = await w.arrived(2)
        assert (answer.text, answer.sender_id, answer.silent) == ("Yes, two left", BOT, True)
        assert not answer.from_client and answer.receiver_id == question.sender_id
        assert answer.chat_id == question.chat_id, "the answer belongs to the client's chat"
        assert answer.payload is not None and answer.payload.reply_to is not None
        assert answer.payload.reply_to.message.msgid == question.msgid
        # The client quotes the admin's answer: amoCRM gets the quote of the bot's message.
        await w.vk.client_writes(w.user, "I'll take both", reply_to="2")
        thanks = (await w.arrived(3))[-1]
        assert thanks.payload is not None and thanks.payload.reply_to is not None
        assert thanks.payload.reply_to.message.id == answer.id
        # The admin corrects the answer in VK: amoCRM's copy is edited.
        await w.vk.admin_edits(w.user, "2", "Yes, three left")
        edits = await eventually(lambda: list(answer.edits))
        assert edits[-1].message.text == "Yes, three left"
        assert edits[-1].sender.ref_id == BOT
        # The client reads it: amoCRM's copy is marked read.
        await w.vk.client_reads(w.user, "2")
        await eventually(lambda: [s for s in answer.statuses if s.delivery_status == 2])
        # VK delivers the same event twice: one message in amoCRM.
        w.vk.duplicate_next()
        await w.vk.admin_writes(w.user, "See you")
        await w.arrived(4)
        await w.vk.client_writes(w.user, "Bye")
        assert [m.text for m in await w.arrived(5)] == [
            "Is the blue one in stock?",
            "Yes, three left",
            "I'll take both",
            "See you",
            "Bye",
        ]


async def test_a_named_admin_writes_as_the_amocrm_user_the_source_maps_them_to(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        admin = w.vk.add_user("Igor", "Admin", user_id=424242)
        await w.vk.client_writes(w.user, "Hello")
        await w.vk.admin_writes(w.user, "Igor here", admin=admin)
        answer = (await w.arrived(2))[-1]
        assert answer.sender_id == "a0000000-0000-4000-8000-0000000000a1"


@pytest.mark.parametrize(
    ("before_answer", "random_id_known"),
    [(False, True), (True, True), (True, False)],
    ids=["echo-after-answer", "echo-before-answer", "echo-before-record-by-id-mapping"],
)
async def test_a_manager_s_reply_is_never_imported_back(
    tmp_path: Path, before_answer: bool, random_id_known: bool
) -> None:
    async with world(tmp_path) as w:
        w.vk.echo_before_answer = before_answer  # the echo may race the send's result being recorded
        if not random_id_known:  # as when another process of the fleet sent it: only the id mapping tells
            instance = w.runtime.routing.get("shop")
            assert instance is not None
            adapter = instance.adapter
            assert isinstance(adapter, VKAdapter)
            adapter.memory.sent.limit = 0
        await w.vk.client_writes(w.user, "Hello")
        await w.arrived(1)
        emitted, sent = await w.manager_writes("Hello, how can we help?")
        await eventually(lambda: [e for e in w.vk.events if e["type"] == "message_reply"])
        # Inbound events of a chat run in order: once the admin's later message is in, the echo was handled.
        await w.vk.admin_writes(w.user, "(admin) a marker")
        messages = await w.arrived(3)
        assert [(m.text, m.from_manager) for m in messages] == [
            ("Hello", False),
            ("Hello, how can we help?", True),
            ("(admin) a marker", False),
        ]
        # An admin edits the manager's message in VK: amoCRM keeps what the manager wrote.
        await w.vk.admin_edits(w.user, str(sent), "edited in VK")
        await w.vk.admin_writes(w.user, "(admin) a second marker")
        await w.arrived(4)
        assert not w.amojo.message(emitted.message_id or "").edits
        # The manager's message keeps its mapping: the client's quote of it reaches amoCRM.
        await w.vk.client_writes(w.user, "Delivery, please", reply_to=str(sent))
        quote = (await w.arrived(5))[-1]
        assert quote.payload is not None and quote.payload.reply_to is not None
        assert quote.payload.reply_to.message.id == emitted.message_id


async def test_an_echo_in_a_chat_amocrm_has_not_seen_is_not_imported(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        stranger = w.vk.add_user("Boris", "New")
        await w.vk.admin_writes(stranger, "Hello Boris, your parcel is here")
        await w.vk.client_writes(stranger, "Thanks!")
        await eventually(lambda: w.amojo.messages_in(f"shop:{stranger}"))
        assert [m.text for m in w.amojo.messages_in(f"shop:{stranger}")] == ["Thanks!"]


async def test_a_channel_without_bot_id_is_a_startup_error_naming_the_setting(tmp_path: Path) -> None:
    vk = FakeVK()
    data = config(vk, "http://api.vk.test", "http://amojo.test", 8080, tmp_path, bot_id="")
    with pytest.raises(ConfigError, match=r"channel\.bot_id: not set, and sources\[0\] \('shop'\) uses vk"):
        async with Runtime(parse_config(data), plugin="vk"):
            pass
