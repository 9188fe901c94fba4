"""End to end through the core: FakeTelegram ⇄ amoconnect's Runtime (with this plugin) ⇄ FakeAmojo, in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from amoconnect.amojo import wire
from amoconnect.config import parse_config
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.testing.fake_amojo import FakeAmojo, StoredMessage
from amoconnect.testing.kit import LOOPBACK_NETWORKS, eventually, loopback_resolver
from amoconnect.testing.stores import store_settings
from telegram_rig import API, Files, HostRouter

from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio

CHANNEL = str(uuid.uuid4())
SECRET = "channel-secret"
ACCOUNT = str(uuid.uuid4())
SCOPE = f"{CHANNEL}_{ACCOUNT}"
PUBLIC = "http://amoconnect"


@dataclass
class World:
    """A running connector between the two fakes."""

    runtime: Runtime
    telegram: FakeTelegram
    amojo: FakeAmojo
    files: Files
    chat: int

    @property
    def conversation(self) -> str:
        return f"bot:{self.chat}"

    def amo_messages(self) -> list[StoredMessage]:
        return self.amojo.messages_in(self.conversation)

    async def client_message(self, text: str) -> StoredMessage:
        """The client writes ``text``; returns it as amoCRM stored it."""
        before = len(self.amo_messages())
        await self.telegram.client_writes(self.chat, text)
        await eventually(lambda: len(self.amo_messages()) > before)
        return self.amo_messages()[-1]

    async def manager_sends(self, emit: Callable[..., Any], *args: Any, **kwargs: Any) -> StoredMessage:
        """A manager's message through ``emit``; returns it once its delivery status is known."""
        result = await emit(SCOPE, self.conversation, *args, **kwargs)
        assert result.status == 200
        stored = self.amojo.message(result.message_id)
        await eventually(lambda: stored.delivery_status is not None)
        return stored


def build_runtime(tmp_path: Path, telegram: FakeTelegram, amojo: FakeAmojo, files: Files, **settings: Any) -> Runtime:
    config = parse_config(
        {
            "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": "http://amojo.test"},
            "accounts": [{"name": "acme", "amojo_id": ACCOUNT}],
            "sources": [
                {
                    "name": "bot",
                    "plugin": "telegram",
                    "account": "acme",
                    "settings": telegram.settings(API, **settings),
                }
            ],
            "store": store_settings(tmp_path),
            "server": {"public_url": PUBLIC},
            "http": {"media_allow_networks": list(LOOPBACK_NETWORKS)},
            "relay": {"backoff": 0.05, "max_backoff": 0.5},
        }
    )
    messenger = HostRouter(
        {"api.telegram.test": httpx.ASGITransport(app=telegram), "files.test": httpx.MockTransport(files.handler)}
    )
    return Runtime(
        config,
        plugin_manager=get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect_telegram.plugin"]),
        amojo_http=httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo)),
        messenger_http=httpx.AsyncClient(transport=messenger),
        resolver=loopback_resolver,
    )


@pytest.fixture
def amojo() -> FakeAmojo:
    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT, webhook_url=f"{PUBLIC}/amocrm/:scope_id")
    return fake


@pytest.fixture
async def world(tmp_path: Path, fake: FakeTelegram, amojo: FakeAmojo, files: Files) -> AsyncIterator[World]:
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        amojo.webhook_client = runtime.client
        fake.http = runtime.client
        yield World(runtime, fake, amojo, files, fake.add_client("Anna", last_name="K", username="anna"))


# -- client → manager -------------------------------------------------------------------------------


async def test_webhook_is_registered_and_client_text_reaches_amocrm(world: World) -> None:
    assert world.telegram.webhook_url == f"{PUBLIC}/hooks/telegram/bot"
    message = await world.client_message("Hello, shop!")
    assert message.type == "text"
    assert message.text == "Hello, shop!"
    assert message.from_client
    chat = world.amojo.find_chat(world.conversation)
    assert chat is not None
    assert chat.name == "Anna K"


@pytest.mark.parametrize(
    ("kind", "amo_type", "file_name"),
    [
        ("photo", "picture", ""),
        ("document", "file", "price.pdf"),
        ("video", "video", "clip.mp4"),
        ("animation", "video", "fun.mp4"),
        ("voice", "voice", ""),
        ("audio", "audio", "song.mp3"),
        ("video_note", "video", ""),
        ("sticker", "sticker", ""),
    ],
)
async def test_client_media_is_rehosted(world: World, kind: str, amo_type: str, file_name: str) -> None:
    content = f"the {kind}".encode()
    await world.telegram.client_sends(world.chat, kind, content, caption="look", file_name=file_name)
    await eventually(lambda: len(world.amo_messages()) == 1)
    (message,) = world.amo_messages()
    assert message.type == amo_type
    assert message.text == "look"
    media = message.content.media
    assert media is not None
    assert media.startswith(f"{PUBLIC}/media/")
    assert world.telegram.token not in media
    response = await world.runtime.client.get(media)
    assert (response.status_code, response.content) == (200, content)


async def test_location_and_contact(world: World) -> None:
    await world.telegram.client_sends_location(world.chat, 55.75, 37.61)
    await world.telegram.client_sends_contact(world.chat, "+79990001122", "Ivan")
    await eventually(lambda: len(world.amo_messages()) == 2)
    location, contact = world.amo_messages()
    assert location.type == "location"
    assert contact.type == "contact"


async def test_client_edit_and_reply(world: World) -> None:
    first = await world.client_message("helo")
    update = world.telegram.updates[-1]
    message_id = update["message"]["message_id"]
    await world.telegram.client_edits(world.chat, message_id, "hello")
    await eventually(lambda: first.text == "hello")
    await world.telegram.client_writes(world.chat, "as I said", reply_to=message_id)
    await eventually(lambda: len(world.amo_messages()) == 2)
    reply = world.amo_messages()[-1]
    assert reply.payload is not None
    assert reply.payload.reply_to is not None
    assert reply.payload.reply_to.message.msgid == first.msgid


async def test_button_press_carries_callback_data(world: World) -> None:
    await world.client_message("menu?")
    buttons = [[wire.Button(text="Delivery"), wire.Button(text="Site", url="https://shop.example")]]
    await world.manager_sends(world.amojo.emit_buttons, "Choose", buttons)
    (sent,) = world.telegram.sent_to(world.chat)
    assert sent.buttons == [
        [{"text": "Delivery", "callback_data": "Delivery"}, {"text": "Site", "url": "https://shop.example"}]
    ]
    await world.telegram.client_presses(world.chat, sent.message_id, "Delivery")
    await eventually(lambda: len(world.amo_messages()) == 3)
    press = world.amo_messages()[-1]
    assert press.text == "Delivery"
    assert getattr(press.content, "callback_data", None) == "Delivery"
    await eventually(lambda: len(world.telegram.answered_callbacks) == 1)


async def test_client_reaction_reaches_amocrm(world: World) -> None:
    await world.client_message("hi")
    await world.manager_sends(world.amojo.emit_text, "Your order is ready")
    (sent,) = world.telegram.sent_to(world.chat)
    await world.telegram.client_reacts(world.chat, sent.message_id, "🔥")
    await eventually(lambda: len(world.amojo.reactions) == 1)
    reaction = world.amojo.reactions[0].request
    assert (reaction.type, reaction.emoji) == ("react", "🔥")


# -- manager → client -------------------------------------------------------------------------------


async def test_manager_text_is_delivered(world: World) -> None:
    await world.client_message("hi")
    stored = await world.manager_sends(world.amojo.emit_text, "Hello! How can I help?")
    assert stored.delivery_status == 1
    assert [m.text for m in world.telegram.sent_to(world.chat)] == ["Hello! How can I help?"]


async def test_manager_media_by_url_and_by_upload(world: World) -> None:
    await world.client_message("photo please")
    url = "http://files.test/cat.jpg"
    await world.manager_sends(world.amojo.emit_media, "picture", url, file_name="cat.jpg", file_size=17, text="cat")
    world.telegram.fetch_http = None  # now Telegram cannot reach amoCRM's file links
    url = "http://files.test/report.pdf"
    stored = await world.manager_sends(world.amojo.emit_media, "file", url, file_name="report.pdf", file_size=18)
    assert stored.delivery_status == 1
    photo, document = world.telegram.sent_to(world.chat)
    assert (photo.kind, photo.media, photo.text) == ("photo", "http://files.test/cat.jpg", "cat")
    assert (document.kind, document.media, document.content) == ("document", None, b"%PDF-1.4 pdf bytes")


async def test_manager_media_pointing_inside_fails_with_the_reason(world: World) -> None:
    await world.client_message("send the file")
    world.telegram.fetch_http = None  # Telegram cannot fetch it: the connector downloads it to upload it
    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    stored = await world.manager_sends(world.amojo.emit_media, "file", url, file_name="creds.txt", file_size=10)
    (status,) = stored.statuses
    assert (status.delivery_status, status.error_code) == (-1, 905)
    assert status.error is not None and "169.254.169.254, a cloud metadata address" in status.error
    assert world.telegram.sent_to(world.chat) == [] and world.files.requests == []


async def test_manager_list_message(world: World) -> None:
    await world.client_message("sizes?")
    lm = wire.ListMessage(
        body="Pick a size",
        button="Sizes",
        sections=[wire.ListSection(title="All", rows=[wire.ListRow(callback_data="size-s", title="S")])],
    )
    await world.manager_sends(world.amojo.emit_list_message, lm)
    (sent,) = world.telegram.sent_to(world.chat)
    assert sent.buttons == [[{"text": "S", "callback_data": "size-s"}]]
    await world.telegram.client_presses(world.chat, sent.message_id, "size-s")
    await eventually(lambda: getattr(world.amo_messages()[-1].content, "callback_data", None) == "size-s")


async def test_long_row_data_comes_back_whole_and_an_expired_one_is_told(world: World) -> None:
    await world.client_message("which slot?")
    prefix = "slot:" + "x" * 59  # 64 bytes: the rows differ only after them
    data = [prefix + "-2026-12-05T10:00-cabinet-1", prefix + "-2026-12-05T10:00-cabinet-12"]
    assert [len(d.encode()) for d in data] == [91, 92]
    rows = [wire.ListRow(callback_data=d, title=f"Cabinet {i}") for i, d in enumerate(data, 1)]
    lm = wire.ListMessage(body="Pick a slot", button="Slots", sections=[wire.ListSection(title="All", rows=rows)])
    stored = await world.manager_sends(world.amojo.emit_list_message, lm)
    assert stored.delivery_status == 1
    (sent,) = world.telegram.sent_to(world.chat)
    keys = [row[0]["callback_data"] for row in sent.buttons]
    assert len(set(keys)) == 2 and all(len(k.encode()) <= 64 for k in keys)
    for key, expected in zip(reversed(keys), reversed(data), strict=True):
        await world.telegram.client_presses(world.chat, sent.message_id, key)
        await eventually(lambda e=expected: getattr(world.amo_messages()[-1].content, "callback_data", None) == e)
    assert [m.text for m in world.amo_messages()[-2:]] == ["Cabinet 2", "Cabinet 1"]
    # The second key's time runs out: a press is answered so, and amoCRM hears nothing of it.
    await world.runtime.store.put_button_data(keys[1], data[1], -1)
    before = len(world.amo_messages())
    press = await world.telegram.client_presses(world.chat, sent.message_id, keys[1])
    assert press is not None
    query = press["callback_query"]["id"]
    await eventually(lambda: query in world.telegram.callback_answers)
    assert world.telegram.callback_answers[query] == "This button has expired. Please type your answer instead."
    await world.client_message("ok, typing it")
    assert len(world.amo_messages()) == before + 1


async def test_manager_reply_quotes_the_client(world: World) -> None:
    question = await world.client_message("Is it in stock?")
    await world.manager_sends(world.amojo.emit_reply, question.id, "Yes, it is")
    (sent,) = world.telegram.sent_to(world.chat)
    asked = world.telegram.updates[-1]["message"]["message_id"]
    assert sent.reply_to == asked


async def test_manager_reaction_and_typing(world: World) -> None:
    question = await world.client_message("thanks!")
    await world.amojo.emit_reaction(SCOPE, world.conversation, question.id, "❤️")
    await eventually(lambda: len(world.telegram.reactions) == 1)
    assert world.telegram.reactions[0].emoji == ("❤",)
    await world.amojo.emit_typing(SCOPE, world.conversation)
    await eventually(lambda: len(world.telegram.chat_actions) == 1)
    assert world.telegram.chat_actions[0].action == "typing"


async def test_blocked_bot_fails_as_901(world: World) -> None:
    await world.client_message("bye")
    await world.telegram.client_blocks(world.chat)
    stored = await world.manager_sends(world.amojo.emit_text, "Please come back")
    assert stored.delivery_status == -1
    assert stored.statuses[-1].error_code == 901
    assert world.telegram.sent_to(world.chat) == []


async def test_a_client_who_never_started_the_bot_fails_as_904(world: World) -> None:
    await world.client_message("hello")
    description = "Forbidden: bot can't initiate conversation with a user"
    world.telegram.fail_next(1, 403, method="sendMessage", description=description)
    stored = await world.manager_sends(world.amojo.emit_text, "Hi there")
    assert stored.delivery_status == -1
    assert stored.statuses[-1].error_code == 904
    sent = await world.manager_sends(world.amojo.emit_text, "still there?")
    assert sent.delivery_status == 1, "no chat yet is not a block: the next message is tried"


async def test_429_storm_then_success(world: World) -> None:
    await world.client_message("hello")
    world.telegram.fail_next(2, 429, retry_after=1, method="sendMessage")
    stored = await world.manager_sends(world.amojo.emit_text, "eventually")
    assert stored.delivery_status == 1
    statuses = [call.status for call in world.telegram.calls_to("sendMessage")]
    assert statuses == [429, 429, 200]


async def test_other_refusal_shows_telegrams_text_as_905(world: World) -> None:
    await world.client_message("hello")
    description = "Bad Request: not enough rights to send text messages to the chat"
    world.telegram.fail_next(1, 400, method="sendMessage", description=description)
    stored = await world.manager_sends(world.amojo.emit_text, "hmm")
    assert stored.delivery_status == -1
    assert (stored.statuses[-1].error_code, stored.statuses[-1].error) == (905, description)


# -- restarts and polling ---------------------------------------------------------------------------


async def test_restart_mid_flow_delivers_once_telegram_is_back(
    tmp_path: Path, fake: FakeTelegram, amojo: FakeAmojo, files: Files
) -> None:
    chat = fake.add_client("Anna")
    conversation = f"bot:{chat}"
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        amojo.webhook_client = runtime.client
        fake.http = runtime.client
        await fake.client_writes(chat, "hello")
        await eventually(lambda: len(amojo.messages_in(conversation)) == 1)
        fake.fail_next(1000, 502, method="sendMessage")
        result = await amojo.emit_text(SCOPE, conversation, "sent while Telegram is down")
        await eventually(lambda: len(fake.calls_to("sendMessage")) >= 2)
    fake._faults.clear()
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        fake.http = runtime.client
        assert result.message_id is not None
        stored = amojo.message(result.message_id)
        await eventually(lambda: stored.delivery_status == 1)
    assert [m.text for m in fake.sent_to(chat)] == ["sent while Telegram is down"]


async def test_polling_mode_end_to_end(tmp_path: Path, fake: FakeTelegram, amojo: FakeAmojo, files: Files) -> None:
    chat = fake.add_client("Pat")
    conversation = f"bot:{chat}"
    async with build_runtime(tmp_path, fake, amojo, files, mode="polling", polling_timeout=1) as runtime:
        amojo.webhook_client = runtime.client
        await fake.client_writes(chat, "polled")
        await eventually(lambda: [m.text for m in amojo.messages_in(conversation)] == ["polled"])
        result = await amojo.emit_text(SCOPE, conversation, "answered")
        await eventually(lambda: [m.text for m in fake.sent_to(chat)] == ["answered"])
        assert result.message_id is not None
        await eventually(lambda: amojo.message(result.message_id or "").delivery_status == 1)
    assert fake.webhook_url == ""
    await fake.client_writes(chat, "while away")
    async with build_runtime(tmp_path, fake, amojo, files, mode="polling", polling_timeout=1) as runtime:
        await eventually(
            lambda: [m.text for m in amojo.messages_in(conversation)] == ["polled", "answered", "while away"]
        )


async def test_two_bots_run_side_by_side(tmp_path: Path, amojo: FakeAmojo, files: Files) -> None:
    shop, support = FakeTelegram("111:shop-token"), FakeTelegram("222:support-token")
    config = parse_config(
        {
            "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": "http://amojo.test"},
            "accounts": [{"name": "acme", "amojo_id": ACCOUNT}],
            "sources": [
                {
                    "name": "shop",
                    "plugin": "telegram",
                    "account": "acme",
                    "settings": shop.settings("http://shop.test"),
                },
                {
                    "name": "support",
                    "plugin": "telegram",
                    "account": "acme",
                    "settings": support.settings("http://support.test"),
                },
            ],
            "store": store_settings(tmp_path),
            "server": {"public_url": PUBLIC},
            "http": {"media_allow_networks": list(LOOPBACK_NETWORKS)},
        }
    )
    messenger = HostRouter(
        {"shop.test": httpx.ASGITransport(app=shop), "support.test": httpx.ASGITransport(app=support)}
    )
    runtime = Runtime(
        config,
        plugin_manager=get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect_telegram.plugin"]),
        amojo_http=httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo)),
        messenger_http=httpx.AsyncClient(transport=messenger),
        resolver=loopback_resolver,
    )
    async with runtime:
        amojo.webhook_client = shop.http = support.http = runtime.client
        assert (shop.webhook_url, support.webhook_url) == (
            f"{PUBLIC}/hooks/telegram/shop",
            f"{PUBLIC}/hooks/telegram/support",
        )
        buyer, asker = shop.add_client("Buyer"), support.add_client("Asker")
        await shop.client_writes(buyer, "I want to buy")
        await support.client_writes(asker, "I need help")
        await eventually(lambda: len(amojo.messages) == 2)
        by_conversation = {m.conversation_id: m for m in amojo.messages}
        assert by_conversation[f"shop:{buyer}"].text == "I want to buy"
        assert by_conversation[f"support:{asker}"].text == "I need help"
        await amojo.emit_text(SCOPE, f"support:{asker}", "How can I help?")
        await eventually(lambda: [m.text for m in support.sent_to(asker)] == ["How can I help?"])
    assert shop.sent == []
