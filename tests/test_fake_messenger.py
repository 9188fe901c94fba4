"""fakechat: the Bot API's refusals, signed webhook delivery, and the reference adapter against it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amoconnect.adapter import AdapterContext, WebhookRequest, validate_adapter
from amoconnect.capabilities import Capability
from amoconnect.errors import MessengerError, RateLimited, SignatureError, WebhookError
from amoconnect.model import (
    Attachment,
    Button,
    Contact,
    InboundComment,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    ListMessage,
    ListRow,
    ListSection,
    Location,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    Post,
    Template,
    TemplateParam,
)
from amoconnect.plugins import collect_messengers, get_plugin_manager
from amoconnect.testing.fake_messenger import FakeChatAdapter, FakeChatSettings
from amoconnect.testing.fakechat_api import REACTIONS, SIGNATURE_HEADER, ClientMedia, FakeChat

pytestmark = pytest.mark.anyio

TOKEN = "42:test-token"
SECRET = "webhook-secret"
API = "http://fakechat.test"
HOOK = "http://connector.test/hooks/fake/main"


class _State:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


async def _submit(events: Sequence[InboundEvent]) -> None:
    return None


def _adapter(http: httpx.AsyncClient, *, token: str = TOKEN, public_url: str | None = None) -> FakeChatAdapter:
    context = AdapterContext(
        instance="main",
        http=http,
        log=structlog.get_logger(),
        state=_State(),
        submit=_submit,
        public_url=public_url,
    )
    return FakeChatAdapter(FakeChatSettings(token=token, secret=SECRET, api_url=API), context)


@dataclass
class Connector:
    """A stand-in for amoconnect's webhook endpoint: verify, parse, record."""

    adapter: FakeChatAdapter | None = None
    answers: list[int] = field(default_factory=list)
    """Statuses to answer before handling requests normally."""
    events: list[InboundEvent] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.bodies.append(body)
        if self.answers:
            return Response(status_code=self.answers.pop(0))
        assert self.adapter is not None
        webhook = WebhookRequest(method="POST", headers=httpx.Headers(list(request.headers.items())), body=body)
        try:
            await self.adapter.verify(webhook)
        except SignatureError:
            return Response(status_code=403)
        self.events.extend(await self.adapter.parse(webhook))
        return Response()


@dataclass
class World:
    fake: FakeChat
    adapter: FakeChatAdapter
    connector: Connector
    bot: httpx.AsyncClient

    async def call(self, method: str, token: str = TOKEN, **params: Any) -> tuple[int, dict[str, Any]]:
        response = await self.bot.post(f"/bot{token}/{method}", json=params)
        return response.status_code, response.json()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    connector = Connector()
    app = Starlette(routes=[Route("/hooks/fake/main", connector.hook, methods=["POST"])])
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as hooks,
        FakeChatHttp(TOKEN, hooks) as (fake, bot),
    ):
        connector.adapter = _adapter(bot)
        fake.set_webhook(HOOK, SECRET)
        yield World(fake, connector.adapter, connector, bot)


class FakeChatHttp:
    """A FakeChat delivering through ``hooks`` and a client of its Bot API."""

    def __init__(self, token: str, hooks: httpx.AsyncClient, **options: Any) -> None:
        self.fake = FakeChat(token, http=hooks, delivery_backoff=0.0, **options)
        self.bot = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.fake.app), base_url=API)

    async def __aenter__(self) -> tuple[FakeChat, httpx.AsyncClient]:
        await self.bot.__aenter__()
        return self.fake, self.bot

    async def __aexit__(self, *exc: Any) -> None:
        await self.bot.__aexit__(*exc)


def _refused(description: str, status: int = 400) -> dict[str, Any]:
    return {"ok": False, "error_code": status, "description": description}


# -- the Bot API ---------------------------------------------------------------------------------


async def test_wrong_token_is_unauthorized(world: World) -> None:
    await world.fake.client_writes("c1", "hi")
    assert await world.call("sendMessage", token="42:wrong", chat_id="c1", text="x") == (
        401,
        _refused("Unauthorized", 401),
    )
    assert world.fake.sent_to("c1") == []


async def test_unknown_method_and_bad_parameters(world: World) -> None:
    assert await world.call("sendCarrierPigeon") == (404, _refused("Not Found: method not found", 404))
    await world.fake.client_writes("c1", "hi")
    status, body = await world.call("sendMessage", chat_id="c1", txt="typo")
    assert status == 400 and body["description"].startswith("Bad Request: Object contains unknown field `txt`")
    status, body = await world.call("sendMessage", chat_id="c1", text=5)
    assert status == 400 and "Expected `str`" in body["description"]


async def test_chat_not_found_and_blocked(world: World) -> None:
    assert await world.call("sendMessage", chat_id="nobody", text="x") == (400, _refused("Bad Request: chat not found"))
    await world.fake.client_writes("c1", "hi")
    world.fake.block("c1")
    blocked = _refused("Forbidden: bot was blocked by the user", 403)
    assert await world.call("sendMessage", chat_id="c1", text="x") == (403, blocked)
    assert await world.call("sendTyping", chat_id="c1") == (403, blocked)
    world.fake.block("c1", blocked=False)
    status, body = await world.call("sendMessage", chat_id="c1", text="x")
    assert status == 200 and body == {
        "ok": True,
        "result": {"message_id": body["result"]["message_id"], "chat_id": "c1"},
    }


async def test_text_length_and_reply_to(world: World) -> None:
    await world.fake.client_writes("c1", "hi")
    asked = world.fake.messages("c1")[0].message_id
    too_long = _refused("Bad Request: message is too long")
    assert await world.call("sendMessage", chat_id="c1", text="x" * 4097) == (400, too_long)
    assert (await world.call("sendMessage", chat_id="c1", text="x" * 4096))[0] == 200
    assert await world.call("sendMessage", chat_id="c1", text="") == (
        400,
        _refused("Bad Request: message text is empty"),
    )
    no_reply = _refused("Bad Request: message to reply not found")
    assert await world.call("sendMessage", chat_id="c1", text="re", reply_to="999") == (400, no_reply)
    assert (await world.call("sendMessage", chat_id="c1", text="re", reply_to=asked))[0] == 200
    assert world.fake.sent_to("c1")[-1].reply_to == asked


async def test_reactions_only_from_the_set(world: World) -> None:
    await world.fake.client_writes("c1", "hi")
    message_id = world.fake.messages("c1")[0].message_id
    invalid = _refused("Bad Request: REACTION_INVALID")
    assert await world.call("setReaction", chat_id="c1", message_id=message_id, emoji="🦄") == (400, invalid)
    assert await world.call("setReaction", chat_id="c1", message_id=message_id, emoji="❤") == (400, invalid)
    assert (await world.call("setReaction", chat_id="c1", message_id=message_id, emoji="❤️"))[0] == 200
    assert (await world.call("setReaction", chat_id="c1", message_id=message_id, emoji=""))[0] == 200
    assert [(r.message_id, r.emoji) for r in world.fake.reactions] == [(message_id, "❤️"), (message_id, "")]


async def test_rate_limit_answers_429_with_retry_after() -> None:
    now = [1000.0]
    async with (
        httpx.AsyncClient() as hooks,
        FakeChatHttp(TOKEN, hooks, rate_limit=2, clock=lambda: now[0]) as (fake, bot),
    ):
        fake.set_webhook(HOOK, SECRET)
        chat = fake.register_phone("+100")
        send = {"chat_id": chat, "text": "x"}
        assert [(await bot.post(f"/bot{TOKEN}/sendMessage", json=send)).status_code for _ in range(2)] == [200, 200]
        now[0] += 0.4
        response = await bot.post(f"/bot{TOKEN}/sendMessage", json=send)
        assert response.status_code == 429
        assert response.json() == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        now[0] += 0.6
        assert (await bot.post(f"/bot{TOKEN}/sendMessage", json=send)).status_code == 200
        assert len(fake.sent_to(chat)) == 3


async def test_fail_next(world: World) -> None:
    await world.fake.client_writes("c1", "hi")
    world.fake.fail_next(2, 502)
    assert await world.call("sendMessage", chat_id="c1", text="x") == (502, _refused("Bad Gateway", 502))
    assert (await world.call("sendTyping", chat_id="c1"))[0] == 502
    assert (await world.call("sendMessage", chat_id="c1", text="x"))[0] == 200
    world.fake.fail_next(1, 429, retry_after=7, method="sendMessage")
    assert (await world.call("sendTyping", chat_id="c1"))[0] == 200
    status, body = await world.call("sendMessage", chat_id="c1", text="x")
    assert status == 429 and body["parameters"] == {"retry_after": 7}
    assert body["description"] == "Too Many Requests: retry after 7"
    assert [(method, status) for method, _, status in world.fake.calls[-2:]] == [
        ("sendTyping", 200),
        ("sendMessage", 429),
    ]


async def test_open_chat_needs_a_registered_phone(world: World) -> None:
    unregistered = _refused("Bad Request: phone is not registered")
    assert await world.call("openChat", phone="+79990000000") == (400, unregistered)
    chat = world.fake.register_phone("+79990000000", name="Anna")
    assert await world.call("openChat", phone="+79990000000") == (200, {"ok": True, "result": {"chat_id": chat}})
    assert (await world.call("sendMessage", chat_id=chat, text="Hello, Anna"))[0] == 200


async def test_files_need_the_token(world: World) -> None:
    await world.fake.client_writes("c1", media=ClientMedia(kind="picture", content=b"\x89PNG", file_name="a.png"))
    file_id = world.fake.last_update["message"]["media"]["file_id"]
    status, body = await world.call("getFile", file_id=file_id)
    assert status == 200 and body["result"]["file_size"] == 4
    path = body["result"]["file_path"]
    download = await world.bot.get(f"/file/bot{TOKEN}/{path}")
    assert download.content == b"\x89PNG" and download.headers["content-type"] == "image/png"
    assert (await world.bot.get(f"/file/bot42:wrong/{path}")).status_code == 401
    assert (await world.call("getFile", file_id="nope"))[0] == 400


async def test_answer_comment_needs_the_comment(world: World) -> None:
    await world.fake.client_comments("c1", "p1", "nice")
    comment_id = world.fake.last_update["comment"]["comment_id"]
    assert await world.call("answerComment", post_id="p2", comment_id=comment_id, text="t") == (
        400,
        _refused("Bad Request: post not found"),
    )
    assert (await world.call("answerComment", post_id="p1", comment_id="cm0", text="t"))[0] == 400
    status, body = await world.call("answerComment", post_id="p1", comment_id=comment_id, text="thanks")
    assert status == 200 and world.fake.comment_answers[0].answer_id == body["result"]["comment_id"]


# -- webhook delivery ----------------------------------------------------------------------------


async def test_updates_are_signed_and_numbered(world: World) -> None:
    assert await world.fake.client_writes("c1", "one") == 200
    assert await world.fake.client_types("c1") == 200
    first, second = world.fake.deliveries
    for delivery in (first, second):
        expected = "sha256=" + hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert delivery.headers[SIGNATURE_HEADER] == expected
    assert [msgspec.json.decode(d.body)["update_id"] for d in (first, second)] == [1, 2]
    assert [event.dedup_key for event in world.connector.events] == ["1", "2"]


async def test_delivery_is_retried(world: World) -> None:
    world.connector.answers = [500, 503]
    assert await world.fake.client_writes("c1", "hi") == 200
    assert [(d.update_id, d.attempt, d.status) for d in world.fake.deliveries] == [
        (1, 1, 500),
        (1, 2, 503),
        (1, 3, 200),
    ]
    assert len({d.body for d in world.fake.deliveries}) == 1
    world.connector.answers = [500, 500, 500]
    assert await world.fake.client_writes("c1", "lost") == 500
    assert len(world.fake.deliveries) == 6 and len(world.connector.events) == 1


async def test_delivery_survives_connection_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as hooks:
        fake = FakeChat(TOKEN, http=hooks, delivery_attempts=2, delivery_backoff=0.0)
        fake.set_webhook(HOOK, SECRET)
        assert await fake.client_writes("c1", "hi") is None
        assert [(d.attempt, d.status) for d in fake.deliveries] == [(1, None), (2, None)]


async def test_duplicate_next_delivers_the_same_update_twice(world: World) -> None:
    world.fake.duplicate_next()
    await world.fake.client_writes("c1", "hi")
    await world.fake.client_writes("c1", "again")
    assert world.connector.bodies[0] == world.connector.bodies[1] != world.connector.bodies[2]
    assert [event.dedup_key for event in world.connector.events] == ["1", "1", "2"]


async def test_no_webhook_no_delivery() -> None:
    fake = FakeChat(TOKEN)
    with pytest.raises(RuntimeError, match="setWebhook"):
        await fake.client_writes("c1", "hi")


async def test_set_webhook_through_the_api_and_startup(world: World) -> None:
    status, _ = await world.call("setWebhook", url="ftp://x")
    assert status == 400
    adapter = _adapter(world.bot, public_url="https://example.org/hooks/fake/main")
    await adapter.startup()
    assert (world.fake.webhook_url, world.fake.webhook_secret) == ("https://example.org/hooks/fake/main", SECRET)
    calls = len(world.fake.calls)
    await _adapter(world.bot).startup()
    assert len(world.fake.calls) == calls


# -- the adapter: receiving ----------------------------------------------------------------------


async def test_verify(world: World) -> None:
    body = b'{"update_id": 1}'
    good = httpx.Headers({SIGNATURE_HEADER: "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()})
    assert await world.adapter.verify(WebhookRequest(method="POST", headers=good, body=body)) is None
    with pytest.raises(SignatureError, match="does not match"):
        await world.adapter.verify(WebhookRequest(method="POST", headers=good, body=body + b" "))
    with pytest.raises(SignatureError, match="missing"):
        await world.adapter.verify(WebhookRequest(method="POST", body=body))
    world.fake.set_webhook(HOOK, "another-secret")
    assert await world.fake.client_writes("c1", "hi") == 403


async def test_parse_messages(world: World) -> None:
    fake = world.fake
    await fake.client_writes("c1", "hello", name="Anna", username="anna")
    first = fake.messages("c1")[0].message_id
    await fake.client_writes("c1", "see", media=ClientMedia(kind="file", content=b"%PDF", file_name="cv.pdf"))
    await fake.client_writes("c1", reply_to=first, location=(55.75, 37.61), contact=("Bob", "+7999"))
    await fake.client_edits("c1", first, "hello!")
    anna = Person(id="uc1", name="Anna", username="anna")
    message, media, extras, edit = world.connector.events
    assert message == InboundMessage(
        chat="c1", timestamp=message.timestamp, dedup_key="1", sender=anna, message_id=first, text="hello"
    )
    assert isinstance(media, InboundMessage)
    (attachment,) = media.attachments
    file_id = fake.updates[1]["message"]["media"]["file_id"]
    assert attachment == Attachment(kind="file", fetch=file_id, file_name="cv.pdf", size=4, mime_type="application/pdf")
    assert media.text == "see"
    assert isinstance(extras, InboundMessage)
    assert extras.reply_to == first and extras.location == Location(lat=55.75, lon=37.61)
    assert extras.contact == Contact(name="Bob", phone="+7999")
    assert isinstance(edit, InboundEdit) and (edit.message_id, edit.text, edit.dedup_key) == (first, "hello!", "4")


async def test_parse_presses(world: World) -> None:
    fake = world.fake
    await fake.client_writes("c1", "menu?")
    rows = [{"callback_data": "tea", "title": "Tea"}, {"callback_data": "cof", "title": "Coffee"}]
    menu = {"body": "Pick", "button": "Open", "sections": [{"title": "Drinks", "rows": rows}]}
    buttons = [[{"text": "Yes", "callback_data": "yes"}, {"text": "Site", "url": "https://example.org"}]]
    assert (await world.call("sendMessage", chat_id="c1", text="Sure?", buttons=buttons))[0] == 200
    assert (await world.call("sendMessage", chat_id="c1", list=menu))[0] == 200
    await fake.client_presses("c1", "yes")
    await fake.client_presses("c1", "cof")
    with pytest.raises(LookupError):
        await fake.client_presses("c1", "nothing")
    yes, coffee = world.connector.events[1:]
    assert isinstance(yes, InboundMessage) and (yes.text, yes.callback_data) == ("Yes", "yes")
    assert isinstance(coffee, InboundMessage) and (coffee.text, coffee.callback_data) == ("Coffee", "cof")
    assert yes.message_id != coffee.message_id and yes.sender.id == "uc1"


async def test_parse_reactions_typing_statuses_comments(world: World) -> None:
    fake = world.fake
    await fake.client_writes("c1", "hi")
    _, body = await world.call("sendMessage", chat_id="c1", text="hello")
    sent = body["result"]["message_id"]
    await fake.client_reacts("c1", sent, "👍")
    await fake.client_reacts("c1", sent, "", removed=True)
    await fake.client_types("c1")
    await fake.deliver_status("c1", sent, "delivered")
    await fake.deliver_status("c1", sent, "read")
    await fake.deliver_status("c1", sent, "failed", error="Forbidden: bot was blocked by the user", error_code=403)
    fake.add_post("p1", caption="New menu", url="https://fakechat.test/p/p1")
    await fake.client_comments("c1", "p1", "Tasty?")
    parent = fake.last_update["comment"]["comment_id"]
    await fake.client_comments("c2", "p1", "Yes!", parent_id=parent, name="Bob")
    events = world.connector.events[1:]
    react, unreact, typing, delivered, read, failed, comment, answer = events
    assert isinstance(react, InboundReaction) and (react.message_id, react.emoji, react.removed) == (sent, "👍", False)
    assert isinstance(unreact, InboundReaction) and unreact.removed
    assert isinstance(typing, InboundTyping) and typing.sender.id == "uc1"
    assert isinstance(delivered, InboundStatus) and (delivered.status, delivered.reason) == ("delivered", None)
    assert isinstance(read, InboundStatus) and read.status == "read"
    assert isinstance(failed, InboundStatus)
    assert (failed.status, failed.reason, failed.error_code) == ("failed", "blocked", "403")
    assert failed.error == "Forbidden: bot was blocked by the user"
    assert isinstance(comment, InboundComment)
    assert comment.post == Post(id="p1", url="https://fakechat.test/p/p1", caption="New menu")
    assert (comment.chat, comment.text, comment.comment_id, comment.parent_id) == ("c1", "Tasty?", parent, None)
    assert isinstance(answer, InboundComment) and (answer.chat, answer.parent_id) == ("c2", parent)
    assert answer.sender == Person(id="uc2", name="Bob")
    with pytest.raises(ValueError, match="reactions"):
        await fake.client_reacts("c1", sent, "🦄")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"update_id": "one"}', b'{"update_id": 1, "message": {"chat": {"id": "c1"}}}'],
)
async def test_parse_refuses_malformed_bodies(world: World, body: bytes) -> None:
    with pytest.raises(WebhookError):
        await world.adapter.parse(WebhookRequest(method="POST", body=body))


async def test_parse_ignores_unknown_update_kinds(world: World) -> None:
    body = b'{"update_id": 9, "poll": {"id": "x"}}'
    assert await world.adapter.parse(WebhookRequest(method="POST", body=body)) == []


async def test_fetch_media(world: World) -> None:
    await world.fake.client_writes("c1", media=ClientMedia(kind="voice", content=b"OggS", mime_type="audio/ogg"))
    (event,) = world.connector.events
    assert isinstance(event, InboundMessage)
    handle = event.attachments[0].fetch
    assert handle is not None
    media = await world.adapter.fetch_media(handle)
    assert (media.content, media.content_type, media.size) == (b"OggS", "audio/ogg", 4)
    with pytest.raises(MessengerError, match="wrong file_id"):
        await world.adapter.fetch_media("F404")
    world.fake.fail_next(1, 500, method="file")
    with pytest.raises(MessengerError) as failed:
        await world.adapter.fetch_media(handle)
    assert failed.value.retryable


# -- the adapter: sending ------------------------------------------------------------------------


async def test_send_text_buttons_list_template_reply(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    await fake.client_writes("c1", "hi")
    asked = fake.messages("c1")[0].message_id
    buttons = ((Button(text="Yes", callback_data="yes"), Button(text="Site", url="https://example.org")),)
    result = await adapter.send_message(OutgoingMessage(chat="c1", text="Sure?", buttons=buttons, reply_to=asked))
    menu = ListMessage(
        body="Pick",
        button="Open",
        sections=(ListSection(title="Drinks", rows=(ListRow(callback_data="tea", title="Tea"),)),),
    )
    await adapter.send_message(OutgoingMessage(chat="c1", list_message=menu))
    template = Template(
        id="7", content="Hi {{name}}", external_id="greeting", params=(TemplateParam(key="name", value="Ann"),)
    )
    await adapter.send_message(OutgoingMessage(chat="c1", text="Hi Ann", template=template))
    text, listed, templated = fake.sent_to("c1")
    assert result.message_ids == (text.message_id,) and result.chat is None
    assert (text.text, text.reply_to) == ("Sure?", asked)
    assert text.buttons == [[{"text": "Yes", "callback_data": "yes"}, {"text": "Site", "url": "https://example.org"}]]
    assert listed.kind == "list" and listed.list_menu is not None
    assert listed.list_menu["sections"][0]["rows"] == [{"callback_data": "tea", "title": "Tea"}]
    assert templated.kind == "template" and templated.template == {"name": "greeting", "params": ["Ann"]}


async def test_long_row_data_goes_as_keys_and_comes_back_whole(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    await fake.client_writes("c1", "slot?")
    data = ["x" * 64 + "-1", "x" * 64 + "-12"]  # they differ only after the 64 bytes fakechat holds
    rows = tuple(ListRow(callback_data=d, title=f"Slot {i}") for i, d in enumerate(data, 1))
    await adapter.send_message(
        OutgoingMessage(
            chat="c1",
            list_message=ListMessage(body="Pick", button="Open", sections=(ListSection(title="", rows=rows),)),
        )
    )
    (listed,) = fake.sent_to("c1")
    assert listed.list_menu is not None
    keys = [row["callback_data"] for row in listed.list_menu["sections"][0]["rows"]]
    assert len(set(keys)) == 2 and all(len(k.encode()) <= 64 for k in keys)
    for key in keys:
        await fake.client_presses("c1", key)
    presses = [e for e in world.connector.events if isinstance(e, InboundMessage) and e.callback_data]
    assert [(p.text, p.callback_data) for p in presses] == [("Slot 1", data[0]), ("Slot 2", data[1])]


async def test_send_media_with_caption_on_the_first(world: World) -> None:
    await world.fake.client_writes("c1", "hi")
    attachments = (
        Attachment(kind="picture", url="https://media.example/a.jpg", file_name="a.jpg"),
        Attachment(kind="file", url="https://media.example/b.pdf", file_name="b.pdf"),
    )
    result = await world.adapter.send_message(OutgoingMessage(chat="c1", text="Both", attachments=attachments))
    first, second = world.fake.sent_to("c1")
    assert result.message_ids == (first.message_id, second.message_id)
    assert (first.kind, first.url, first.text, first.file_name) == (
        "picture",
        "https://media.example/a.jpg",
        "Both",
        "a.jpg",
    )
    assert (second.kind, second.text) == ("file", "")


async def test_send_write_first(world: World) -> None:
    chat = world.fake.register_phone("+79990000000")
    result = await world.adapter.send_message(OutgoingMessage(phone="+79990000000", text="Hello"))
    assert result.chat == chat and result.message_ids == (world.fake.sent_to(chat)[0].message_id,)
    with pytest.raises(MessengerError) as refused:
        await world.adapter.send_message(OutgoingMessage(phone="+10000000000", text="Hello"))
    assert refused.value.reason == "no_chat"


async def test_send_error_mapping(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    with pytest.raises(MessengerError) as no_chat:
        await adapter.send_message(OutgoingMessage(chat="nobody", text="x"))
    assert (no_chat.value.reason, no_chat.value.retryable, no_chat.value.code) == ("no_chat", False, 400)
    await fake.client_writes("c1", "hi")
    with pytest.raises(MessengerError) as too_long:
        await adapter.send_message(OutgoingMessage(chat="c1", text="x" * 4097))
    assert (too_long.value.reason, too_long.value.description) == ("other", "Bad Request: message is too long")
    fake.fail_next(1, 429, retry_after=3)
    with pytest.raises(RateLimited) as limited:
        await adapter.send_message(OutgoingMessage(chat="c1", text="x"))
    assert limited.value.retry_after == 3 and limited.value.retryable
    fake.fail_next(1, 500)
    with pytest.raises(MessengerError) as down:
        await adapter.send_message(OutgoingMessage(chat="c1", text="x"))
    assert down.value.retryable and down.value.code == 500
    fake.block("c1")
    with pytest.raises(MessengerError) as blocked:
        await adapter.send_message(OutgoingMessage(chat="c1", text="x"))
    assert (blocked.value.reason, blocked.value.retryable) == ("blocked", False)
    with pytest.raises(MessengerError, match="check the instance's token") as unauthorized:
        await _adapter(world.bot, token="42:wrong").send_message(OutgoingMessage(chat="c1", text="x"))
    assert TOKEN not in str(unauthorized.value)


async def test_send_network_error_is_retryable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(MessengerError) as failed:
            await _adapter(http).send_message(OutgoingMessage(chat="c1", text="x"))
    assert failed.value.retryable and TOKEN not in str(failed.value)


async def test_send_reaction_typing_comment_reply(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    await fake.client_writes("c1", "hi")
    message_id = fake.messages("c1")[0].message_id
    await adapter.send_reaction(OutgoingReaction(chat="c1", message_id=message_id, emoji="❤"))
    await adapter.send_reaction(OutgoingReaction(chat="c1", message_id=message_id, removed=True))
    assert [r.emoji for r in fake.reactions] == ["❤️", ""]
    with pytest.raises(MessengerError, match="REACTION_INVALID"):
        await adapter.send_reaction(OutgoingReaction(chat="c1", message_id=message_id, emoji="🦄"))
    await adapter.send_typing(OutgoingTyping(chat="c1", until=0.0))
    assert [t.chat for t in fake.typing_events] == ["c1"]
    await fake.client_comments("c1", "p1", "Price?")
    comment_id = fake.last_update["comment"]["comment_id"]
    result = await adapter.send_comment_reply(
        OutgoingCommentReply(chat="c1", post_id="p1", comment_id=comment_id, text="10 EUR")
    )
    (answer,) = fake.comment_answers
    assert result.message_ids == (answer.answer_id,) and (answer.comment_id, answer.text) == (comment_id, "10 EUR")


# -- the plugin ----------------------------------------------------------------------------------


def test_plugin_registers_the_adapter() -> None:
    pm = get_plugin_manager(load_entrypoints=False, extra_modules=["amoconnect.testing.fake_messenger"])
    assert collect_messengers(pm) == {"fake": FakeChatAdapter}
    assert Capability.time_window not in FakeChatAdapter.capabilities
    assert all(emoji in FakeChatAdapter.reactions for emoji in REACTIONS)


def test_a_subclass_adds_a_reply_window() -> None:
    class WindowedFakeChat(FakeChatAdapter):
        capabilities = FakeChatAdapter.capabilities | {Capability.time_window}
        reply_window = 24 * 3600.0

    validate_adapter(WindowedFakeChat)


async def test_sandbox_factory_builds_a_sandbox_messenger() -> None:
    factory = FakeChatAdapter.sandbox_factory
    assert factory is not None
    connector = Connector()
    app = Starlette(routes=[Route("/hooks/fake/sandbox", connector.hook, methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        sandbox = factory(http=http)
        assert isinstance(sandbox, FakeChat)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as bot:
            settings = msgspec.convert(sandbox.sandbox_settings("http://127.0.0.1:9"), FakeChatSettings)
            context = AdapterContext(
                instance="sandbox",
                http=bot,
                log=structlog.get_logger(),
                state=_State(),
                submit=_submit,
                public_url="http://connector.test/hooks/fake/sandbox",
            )
            adapter = connector.adapter = FakeChatAdapter(msgspec.structs.replace(settings, api_url=API), context)
            await adapter.startup()
            await sandbox.sandbox_client_writes("sandbox-client", "Hello")
            (event,) = connector.events
            assert isinstance(event, InboundMessage) and event.text == "Hello"
            await adapter.send_message(OutgoingMessage(chat=event.chat, text="Hi there"))
            assert sandbox.sandbox_received("sandbox-client") == ["Hi there"]
