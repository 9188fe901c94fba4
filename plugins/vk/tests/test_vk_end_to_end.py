"""End to end through the core: FakeVK ⇄ amoconnect's Runtime (with this plugin) ⇄ FakeAmojo, in-process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from amoconnect.amojo import wire
from amoconnect.config import parse_config
from amoconnect.errors import RateLimited
from amoconnect.model import OutgoingMessage
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.testing.fake_amojo import FakeAmojo, StoredMessage
from amoconnect.testing.fakes import ClientMedia
from amoconnect.testing.kit import LOOPBACK_NETWORKS, HostRouter, eventually, loopback_resolver
from amoconnect.testing.stores import store_settings
from vk_rig import API, FILES, Files

from amoconnect_vk.adapter import VKAdapter
from amoconnect_vk.fake import FakeVK
from amoconnect_vk.vkapi import MAX_PAYLOAD_LENGTH, callback_data

pytestmark = pytest.mark.anyio

CHANNEL = str(uuid.uuid4())
SECRET = "channel-secret"
ACCOUNT = str(uuid.uuid4())
SCOPE = f"{CHANNEL}_{ACCOUNT}"
BOT = str(uuid.uuid4())
PUBLIC = "http://amoconnect"
VK_SECRET = "vk-callback-secret"
PICTURE = ClientMedia(kind="picture", content=b"\xff\xd8\xff a client's photo", file_name="photo.jpg")


@dataclass
class World:
    """A running connector between the two fakes."""

    runtime: Runtime
    vk: FakeVK
    amojo: FakeAmojo
    user: int

    @property
    def conversation(self) -> str:
        return f"shop:{self.user}"

    def amo_messages(self) -> list[StoredMessage]:
        return self.amojo.messages_in(self.conversation)

    async def arrived(self, count: int) -> list[StoredMessage]:
        await eventually(lambda: len(self.amo_messages()) >= count)
        return self.amo_messages()

    async def manager(self, emitted: Any) -> StoredMessage:
        """A manager's message, once its delivery status is known."""
        result = await emitted
        assert result.status == 200
        stored = self.amojo.message(result.message_id)
        await eventually(lambda: stored.delivery_status is not None)
        return stored


def build_runtime(tmp_path: Path, vk: FakeVK, amojo: FakeAmojo, files: Files, **settings: Any) -> Runtime:
    options = {"secret": VK_SECRET, "configure": True, **settings}
    config = parse_config(
        {
            "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": "http://amojo.test", "bot_id": BOT},
            "accounts": [{"name": "acme", "amojo_id": ACCOUNT}],
            "sources": [{"name": "shop", "plugin": "vk", "account": "acme", "settings": vk.settings(API, **options)}],
            "store": store_settings(tmp_path),
            "server": {"public_url": PUBLIC},
            "http": {"media_allow_networks": list(LOOPBACK_NETWORKS)},
            "relay": {"backoff": 0.02, "max_backoff": 0.2},
        }
    )
    messenger = HostRouter({"api.vk.test": vk, "files.test": httpx.MockTransport(files.handler)})
    return Runtime(
        config,
        plugin_manager=get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect_vk.plugin"]),
        amojo_http=httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo)),
        messenger_http=httpx.AsyncClient(transport=messenger),
        resolver=loopback_resolver,
    )


@pytest.fixture
def amojo() -> FakeAmojo:
    fake = FakeAmojo(CHANNEL, SECRET, bot_id=BOT)
    fake.connect(ACCOUNT, webhook_url=f"{PUBLIC}/amocrm/:scope_id")
    return fake


@pytest.fixture
async def world(tmp_path: Path, fake: FakeVK, amojo: FakeAmojo, files: Files) -> AsyncIterator[World]:
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        amojo.webhook_client = runtime.client
        fake.http = runtime.client
        yield World(runtime, fake, amojo, fake.add_user("Anna", "Petrova", domain="anna"))


# -- the community's call limit ----------------------------------------------------------------------


async def test_the_communitys_call_limit_is_the_stores(world: World) -> None:
    """VK's "too many requests" holds the community in the runtime's store: every process serving it waits."""
    instance = world.runtime.routing.get("shop")
    assert instance is not None
    await world.vk.client_writes(world.user, "hi")
    world.vk.fail_next(1, 6, method="messages.send")
    with pytest.raises(RateLimited):
        await instance.adapter.send_message(OutgoingMessage(chat=str(world.user), text="answer", dedup_key="r1"))
    shared = world.runtime.store.limiter("vk:shop:api", VKAdapter.api_rate, 1.0, burst=1)
    assert await shared.wait_time() == pytest.approx(1.0, abs=0.3)


# -- private messages -------------------------------------------------------------------------------


async def test_private_messages_both_ways_with_media(world: World) -> None:
    (server,) = world.vk.servers.values()
    assert server.url == f"{PUBLIC}/hooks/vk/shop"
    await world.vk.client_writes(world.user, "Do you have this in blue?", media=PICTURE)
    (photo,) = await world.arrived(1)
    assert (photo.type, photo.text) == ("picture", "Do you have this in blue?")
    chat = world.amojo.find_chat(world.conversation)
    assert chat is not None and chat.name == "Anna Petrova"
    media = photo.content.media
    assert media is not None and media.startswith(f"{PUBLIC}/media/")
    assert (await world.runtime.client.get(media)).content == PICTURE.content
    text = await world.manager(world.amojo.emit_text(SCOPE, world.conversation, "Yes, we do!"))
    catalogue = world.amojo.emit_media(
        SCOPE, world.conversation, "picture", f"{FILES}/cat.jpg", file_name="cat.jpg", file_size=17, text="Blue one"
    )
    picture = await world.manager(catalogue)
    invoice = world.amojo.emit_media(
        SCOPE, world.conversation, "file", f"{FILES}/report.pdf", file_name="invoice.pdf", file_size=18
    )
    document = await world.manager(invoice)
    assert [s.delivery_status for s in (text, picture, document)] == [1, 1, 1]
    got = world.vk.received(world.user)
    assert [(m.kind, m.text) for m in got] == [("text", "Yes, we do!"), ("picture", "Blue one"), ("file", "")]
    assert got[2].file_name == "invoice.pdf"


async def test_client_edits_quotes_and_button_presses(world: World) -> None:
    await world.vk.client_writes(world.user, "helo")
    (first,) = await world.arrived(1)
    await world.vk.client_edits(world.user, "1", "hello")
    await eventually(lambda: first.text == "hello")
    buttons = [[wire.Button(text="Pickup"), wire.Button(text="Site", url="https://shop.example")]]
    await world.manager(world.amojo.emit_buttons(SCOPE, world.conversation, "How do you want it?", buttons))
    (offer,) = world.vk.received(world.user)
    await world.vk.client_presses(world.user, "Pickup")
    await world.vk.client_writes(world.user, "and tomorrow?", reply_to=offer.message_id)
    _, _, press, quote = await world.arrived(4)
    assert getattr(press.content, "callback_data", None) == "Pickup"
    assert quote.payload is not None and quote.payload.reply_to is not None


async def test_long_row_data_comes_back_whole_and_an_expired_key_as_the_label(world: World) -> None:
    await world.vk.client_writes(world.user, "which slot?")
    await world.arrived(1)
    prefix = "slot:" + "ы" * 250  # 255 characters: the rows differ only after them
    data = [prefix + "-cabinet-1", prefix + "-cabinet-12"]
    rows = [wire.ListRow(callback_data=d, title=f"Cabinet {i}") for i, d in enumerate(data, 1)]
    lm = wire.ListMessage(body="Pick a slot", button="Slots", sections=[wire.ListSection(title="All", rows=rows)])
    assert (await world.manager(world.amojo.emit_list_message(SCOPE, world.conversation, lm))).delivery_status == 1
    (sent,) = [m for m in world.vk.sent if m.keyboard]
    payloads = [row[0]["action"]["payload"] for row in sent.keyboard["buttons"]]
    keys = [callback_data(p) for p in payloads]
    assert len(set(keys)) == 2 and all(len(p) <= MAX_PAYLOAD_LENGTH for p in payloads)
    for key, expected in zip(reversed(keys), reversed(data), strict=True):
        await world.vk.client_presses(world.user, key or "")
        await eventually(lambda e=expected: getattr(world.amo_messages()[-1].content, "callback_data", None) == e)
    assert [m.text for m in world.amo_messages()[-2:]] == ["Cabinet 2", "Cabinet 1"]
    # The key's time runs out: the press is what the client visibly sent, the label, as plain text.
    await world.runtime.store.put_button_data(keys[0] or "", data[0], -1)
    before = len(world.amo_messages())
    await world.vk.client_presses(world.user, keys[0] or "")
    await eventually(lambda: len(world.amo_messages()) == before + 1)
    late = world.amo_messages()[-1]
    assert late.text == "Cabinet 1" and getattr(late.content, "callback_data", None) is None


async def test_typing_both_ways(world: World) -> None:
    await world.vk.client_writes(world.user, "hi")
    await world.arrived(1)
    await world.vk.client_types(world.user)
    await eventually(lambda: len(world.amojo.typing) == 1)
    await world.amojo.emit_typing(SCOPE, world.conversation)
    await eventually(lambda: world.vk.received_typing(world.user) == 1)


async def test_reactions_both_ways(world: World) -> None:
    await world.vk.client_writes(world.user, "thanks!")
    (thanks,) = await world.arrived(1)
    await world.amojo.emit_reaction(SCOPE, world.conversation, thanks.id, "❤️")
    await eventually(lambda: len(world.vk.received_reactions(world.user)) == 1)
    assert world.vk.received_reactions(world.user)[0].emoji == "❤️"
    await world.manager(world.amojo.emit_text(SCOPE, world.conversation, "You are welcome"))
    (answer,) = world.vk.received(world.user)
    await world.vk.client_reacts(world.user, answer.message_id, "🔥")
    await eventually(lambda: len(world.amojo.reactions) == 1)
    assert (world.amojo.reactions[0].request.type, world.amojo.reactions[0].request.emoji) == ("react", "🔥")


async def test_read_receipts(world: World) -> None:
    await world.vk.client_writes(world.user, "hi")
    await world.arrived(1)
    sent = await world.manager(world.amojo.emit_text(SCOPE, world.conversation, "Hello"))
    await world.vk.client_reads(world.user)
    await eventually(lambda: sent.delivery_status == 2)


# -- comments ---------------------------------------------------------------------------------------


async def test_comments_thread_per_post_answered_in_public_and_in_private(world: World) -> None:
    coats = await world.vk.publish_post("Coats: -30%", picture=b"\xff\xd8\xff coats")
    boots = await world.vk.publish_post("Boots are back")
    await world.vk.client_comments(world.user, coats, "Size M?")
    await world.vk.client_comments(world.user, boots, "Price?")
    on_coats, on_boots = await world.arrived(2)
    assert isinstance(on_coats.content, wire.MessageContent) and on_coats.content.post is not None
    assert isinstance(on_boots.content, wire.MessageContent) and on_boots.content.post is not None
    assert (on_coats.content.post.id, on_boots.content.post.id) == (coats, boots)
    assert on_coats.content.post.caption == "Coats: -30%"
    assert on_coats.content.post.url == f"https://vk.com/wall{coats}"
    assert on_coats.chat_id == on_boots.chat_id, "comments and messages of one person meet in one amoCRM chat"
    public = await world.manager(world.amojo.emit_comment_reply(SCOPE, world.conversation, coats, "Yes, M is in"))
    assert public.delivery_status == 1
    assert world.vk.received_comment_replies(coats) == ["Yes, M is in"]
    (answer,) = [c for c in world.vk.comments.values() if c.from_id < 0]
    assert answer.reply_to_comment == int(on_coats.msgid.rsplit(":", 1)[-1] if on_coats.msgid else 0)
    refused = await world.manager(world.amojo.emit_text(SCOPE, world.conversation, "Sent you the size chart"))
    assert refused.delivery_status == -1
    assert refused.statuses[-1].error_code == 901
    assert "has not allowed the community to message them" in (refused.statuses[-1].error or "")
    await world.vk.client_allows(world.user)
    private = await world.manager(world.amojo.emit_text(SCOPE, world.conversation, "Sent you the size chart"))
    assert private.delivery_status == 1
    assert [m.text for m in world.vk.received(world.user)] == ["Sent you the size chart"]


async def test_comment_edits_and_deletions_reach_the_manager(world: World) -> None:
    post = await world.vk.publish_post("New collection")
    await world.vk.client_comments(world.user, post, "Ugly")
    (comment,) = await world.arrived(1)
    comment_id = max(world.vk.comments)
    await world.vk.client_edits_comment(comment_id, "Lovely")
    await eventually(lambda: comment.text == "Lovely")
    await world.vk.delete_comment(comment_id)
    _, note = await world.arrived(2)
    assert note.text == f"[comment deleted] https://vk.com/wall{post}: «Lovely»"


# -- VK's edge ------------------------------------------------------------------------------------


async def test_retries_and_duplicates_from_vk_arrive_once(world: World) -> None:
    world.vk.lose_answers(1)
    await world.vk.client_writes(world.user, "first")
    world.vk.duplicate_next()
    await world.vk.client_writes(world.user, "second")
    await world.arrived(2)
    retried = [d for d in world.vk.deliveries if d.headers.get("X-Retry-Counter")]
    assert retried and all(d.status == 200 for d in retried)
    assert [m.text for m in world.amo_messages()] == ["first", "second"]


async def test_foreign_requests_are_refused(world: World) -> None:
    response = await world.runtime.client.post("/hooks/vk/shop", json={"type": "message_new", "group_id": 1})
    assert response.status_code == 401
    confirmation = {"type": "confirmation", "group_id": world.vk.group_id, "secret": VK_SECRET}
    anyone = await world.runtime.client.post("/hooks/vk/shop", json={**confirmation, "secret": None})
    assert anyone.status_code == 401 and world.vk.confirmation_code not in anyone.text
    answered = await world.runtime.client.post("/hooks/vk/shop", json=confirmation)
    assert answered.text == world.vk.confirmation_code


async def test_restart_mid_flow_delivers_once_vk_is_back(
    tmp_path: Path, fake: FakeVK, amojo: FakeAmojo, files: Files
) -> None:
    user = fake.add_user("Ivan")
    conversation = f"shop:{user}"
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        amojo.webhook_client = runtime.client
        fake.http = runtime.client
        await fake.client_writes(user, "hello")
        await eventually(lambda: len(amojo.messages_in(conversation)) == 1)
        fake.fail_next(1000, 10, method="messages.send")
        result = await amojo.emit_text(SCOPE, conversation, "sent while VK is down")
        await eventually(lambda: len(fake.calls_to("messages.send")) >= 2)
    fake.faults.clear()
    async with build_runtime(tmp_path, fake, amojo, files) as runtime:
        fake.http = runtime.client
        assert result.message_id is not None
        stored = amojo.message(result.message_id)
        await eventually(lambda: stored.delivery_status == 1)
    assert [m.text for m in fake.received(user)] == ["sent while VK is down"]


async def test_long_poll_end_to_end_and_across_a_restart(
    tmp_path: Path, fake: FakeVK, amojo: FakeAmojo, files: Files
) -> None:
    user = fake.add_user("Pat")
    conversation = f"shop:{user}"
    async with build_runtime(tmp_path, fake, amojo, files, mode="longpoll", secret="", longpoll_wait=1) as runtime:
        amojo.webhook_client = runtime.client
        assert fake.longpoll_enabled and not fake.servers
        await eventually(lambda: fake.calls_to("groups.getLongPollServer"))  # events before that are not polled
        await fake.client_writes(user, "polled")
        await eventually(lambda: [m.text for m in amojo.messages_in(conversation)] == ["polled"])
        await amojo.emit_text(SCOPE, conversation, "answered")
        await eventually(lambda: [m.text for m in fake.received(user)] == ["answered"])
    await fake.client_writes(user, "while away")
    fake.expire_longpoll_key()
    async with build_runtime(tmp_path, fake, amojo, files, mode="longpoll", secret="", longpoll_wait=1):
        await eventually(
            lambda: [m.text for m in amojo.messages_in(conversation)] == ["polled", "answered", "while away"]
        )
