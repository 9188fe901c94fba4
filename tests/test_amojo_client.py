"""AmojoClient against the fake amojo, in-process and over a real loopback port (spec §4–§7)."""

from __future__ import annotations

import hashlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx
import msgspec
import pytest

import amoconnect.signing
from amoconnect.amojo import wire
from amoconnect.amojo.client import AmojoClient, Sent, is_duplicate_msgid
from amoconnect.errors import AmojoError
from amoconnect.http import RetryPolicy
from amoconnect.signing import format_date, signature_for
from amoconnect.testing.fake_amojo import Chat, FakeAmojo
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio

SECRET = "0123456789abcdef0123456789abcdef01234567"
CHANNEL = "11111111-2222-3333-4444-555555555555"
ACCOUNT = "66666666-7777-8888-9999-000000000000"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
BOT_ID = "b0b0b0b0-0000-4000-8000-000000000001"
MANAGER_AMOJO_ID = "a1a1a1a1-0000-4000-8000-000000000002"
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.004)
CLIENT_USER = wire.Participant(id="tg-user-42", name="Ann", profile=wire.Profile(phone="+79001234567"))
_msec = itertools.count(1_700_000_000_000, 1000)


def payload(msgid: str, conversation_id: str = "tg-100", *, text: str = "Hi", **fields: Any) -> wire.MessagePayload:
    """A message from the client (no receiver) unless ``fields`` say otherwise; timestamps always increase."""
    msec = next(_msec)
    fields.setdefault("sender", CLIENT_USER)
    fields.setdefault("message", wire.MessageContent(type="text", text=text))
    return wire.MessagePayload(
        timestamp=msec // 1000, msec_timestamp=msec, msgid=msgid, conversation_id=conversation_id, **fields
    )


def in_process(app: Any, **options: Any) -> tuple[httpx.AsyncClient, AmojoClient]:
    """An AmojoClient on an ``httpx.AsyncClient`` that calls the ASGI ``app`` in-process."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    options.setdefault("retry", FAST)
    return http, AmojoClient(CHANNEL, SECRET, client=http, base_url="http://amojo.test", **options)


@pytest.fixture
def fake() -> FakeAmojo:
    return FakeAmojo(CHANNEL, SECRET, bot_id=BOT_ID)


@pytest.fixture
async def amojo(fake: FakeAmojo) -> AsyncIterator[AmojoClient]:
    http, client = in_process(fake.app)
    async with http, client:
        yield client


@pytest.fixture
async def scope(fake: FakeAmojo, amojo: AmojoClient) -> str:
    """Connected through the client; the requests it took are forgotten."""
    scope_id = (await amojo.connect(ACCOUNT)).scope_id
    fake.requests.clear()
    return scope_id


def chat_id(fake: FakeAmojo, conversation_id: str) -> str:
    """amoCRM's id of the chat of our ``conversation_id`` (the only id the history path takes)."""
    chat = fake.find_chat(conversation_id)
    assert chat is not None
    return chat.id


async def raises_amojo(awaitable: Any) -> AmojoError:
    with pytest.raises(AmojoError) as caught:
        await awaitable
    return caught.value


# -- connect / disconnect -----------------------------------------------------------------------------


async def test_connect_returns_the_scope_id(fake: FakeAmojo, amojo: AmojoClient) -> None:
    connected = await amojo.connect(ACCOUNT, title="Shop", time_window_disabled=True)
    assert connected.scope_id == SCOPE
    assert connected.account_id == ACCOUNT
    assert connected.hook_api_version == "v2"
    connection = fake.connections[SCOPE]
    assert (connection.connected, connection.title, connection.is_time_window_disabled) == (True, "Shop", True)
    assert connection.hook_api_version == "v2"
    [request] = fake.requests
    assert (request.method, request.path, request.status) == ("POST", f"/v2/origin/custom/{CHANNEL}/connect", 200)
    assert msgspec.json.decode(request.body) == {
        "account_id": ACCOUNT,
        "hook_api_version": "v2",
        "title": "Shop",
        "is_time_window_disabled": True,
    }


async def test_connect_to_an_unknown_channel_is_a_404(fake: FakeAmojo) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app))
    async with http, AmojoClient("not-our-channel", SECRET, client=http, retry=FAST) as other:
        error = await raises_amojo(other.connect(ACCOUNT))
    assert error.status == 404
    assert error.body["code"] == "unknown_channel"
    assert len(fake.requests) == 1


async def test_disconnect_uses_delete(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    await amojo.disconnect(ACCOUNT)
    [request] = fake.requests
    assert (request.method, request.path, request.status) == ("DELETE", f"/v2/origin/custom/{CHANNEL}/disconnect", 200)
    assert msgspec.json.decode(request.body) == {"account_id": ACCOUNT}
    assert not fake.connections[SCOPE].connected
    error = await raises_amojo(amojo.create_chat(scope, "tg-100", wire.ChatUser(id="u")))
    assert (error.status, error.body["code"]) == (404, "unknown_scope")


async def test_disconnect_by_post_is_refused_405(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mistake: disconnecting with POST, as for every other method. amojo wants DELETE."""
    request = amojo._request

    async def post_instead(method: str, path: str, *args: Any, **kwargs: Any) -> httpx.Response:
        return await request("POST" if method == "DELETE" else method, path, *args, **kwargs)

    monkeypatch.setattr(amojo, "_request", post_instead)
    error = await raises_amojo(amojo.disconnect(ACCOUNT))
    assert (error.status, error.body["code"]) == (405, "method_not_allowed")
    assert fake.connections[SCOPE].connected
    assert len(fake.requests) == 1


async def test_disconnect_of_an_unknown_account_is_a_404(fake: FakeAmojo, amojo: AmojoClient) -> None:
    error = await raises_amojo(amojo.disconnect("never-connected"))
    assert (error.status, error.body["code"]) == (404, "unknown_scope")
    assert len(fake.requests) == 1


# -- create chat ------------------------------------------------------------------------------------------


async def test_create_chat_is_idempotent_per_conversation(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    user = wire.ChatUser(
        id="tg-user-42",
        name="Ann",
        avatar="https://cdn.test/ann.jpg",
        profile=wire.Profile(phone="+79001234567", email="ann@example.com"),
        profile_link="https://t.me/ann",
    )
    first = await amojo.create_chat(scope, "tg-100", user, source_external_id="wa-main")
    again = await amojo.create_chat(scope, "tg-100", user)
    other = await amojo.create_chat(scope, "tg-200", wire.ChatUser(id="tg-user-7", name="Bob"))
    assert first.id == again.id != other.id
    assert first.user.client_id == "tg-user-42"
    assert (first.user.name, first.user.phone, first.user.email) == ("Ann", "+79001234567", "ann@example.com")
    assert first.user.avatar == "https://cdn.test/ann.jpg"
    assert first.user.id == again.user.id
    chat = fake.find_chat("tg-100", scope_id=scope)
    assert chat is not None and chat.id == first.id and chat.source_external_id == "wa-main"
    assert len(fake.chats) == 2
    assert "source" not in msgspec.json.decode(fake.requests[1].body)


async def test_create_chat_with_a_bad_scope_is_404(fake: FakeAmojo, amojo: AmojoClient) -> None:
    error = await raises_amojo(amojo.create_chat(SCOPE, "tg-100", wire.ChatUser(id="u")))
    assert error.status == 404
    assert error.body["code"] == "unknown_scope"
    assert "create chat" in str(error)


# -- send message -----------------------------------------------------------------------------------------


async def test_send_message_from_the_client(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    sent = await amojo.send_message(scope, payload("tg-100-1", text="Hello"))
    stored = fake.message(sent.amocrm_id or "")
    assert sent == Sent(msgid="tg-100-1", amocrm_id=stored.id, conversation_id=stored.chat_id, duplicate=False)
    assert (stored.msgid, stored.text, stored.from_client, stored.receiver_id) == ("tg-100-1", "Hello", True, None)
    assert stored.conversation_id == "tg-100"
    chat = fake.find_chat("tg-100")
    assert chat is not None and chat.client_id == "tg-user-42"
    body = msgspec.json.decode(fake.requests[-1].body)
    assert body["event_type"] == "new_message"
    assert "receiver" not in body["payload"]


async def test_send_message_from_a_known_amocrm_user(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    await amojo.send_message(scope, payload("tg-100-1"))
    outgoing = payload(
        "tg-100-2",
        text="Sent from the phone",
        sender=wire.Participant(ref_id=MANAGER_AMOJO_ID, name="Manager"),
        receiver=CLIENT_USER,
    )
    sent = await amojo.send_message(scope, outgoing)
    stored = fake.message(sent.amocrm_id or "")
    chat = fake.find_chat("tg-100")
    assert chat is not None
    assert (stored.from_client, stored.sender_id, stored.receiver_id) == (False, MANAGER_AMOJO_ID, chat.client_user_id)
    body = msgspec.json.decode(fake.requests[-1].body)["payload"]
    assert body["sender"] == {"ref_id": MANAGER_AMOJO_ID, "name": "Manager"}
    assert body["receiver"]["id"] == "tg-user-42"


async def test_send_message_from_the_channel_bot(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    bot = wire.Participant(ref_id=fake.bot_id, name="Bot")
    sent = await amojo.send_message(scope, payload("tg-100-1", sender=bot, receiver=CLIENT_USER, silent=True))
    stored = fake.message(sent.amocrm_id or "")
    assert (stored.sender_id, stored.from_client, stored.from_manager) == (BOT_ID, False, False)


async def test_silent_import_then_a_loud_newest_message(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    for n in range(3):
        await amojo.send_message(scope, payload(f"old-{n}", silent=True))
    await amojo.send_message(scope, payload("newest", silent=False))
    assert [m.silent for m in fake.messages] == [True, True, True, False]
    assert msgspec.json.decode(fake.requests[-1].body)["payload"]["silent"] is False


async def test_send_message_with_a_source(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    await amojo.send_message(scope, payload("wa-1", "wa-79001234567", source=wire.Source(external_id="wa-main")))
    chat = fake.find_chat("wa-79001234567")
    assert chat is not None and chat.source_external_id == "wa-main"


async def test_send_message_with_reply_to_and_forwards(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    first = await amojo.send_message(scope, payload("m-1", text="Question"))
    quoted = wire.ReplyTo(message=wire.EmbeddedMessage(msgid="m-1"))
    reply = await amojo.send_message(scope, payload("m-2", text="Answer", reply_to=quoted))
    forwarded = wire.Forwards(
        messages=[
            wire.EmbeddedMessage(
                type="text",
                text="From another chat",
                timestamp=1_700_000_000,
                msec_timestamp=1_700_000_000_000,
                sender=wire.EmbeddedSender(name="Carl"),
            )
        ],
        conversation_id="tg-999",
    )
    forward = await amojo.send_message(scope, payload("m-3", text="fwd", forwards=forwarded))
    by_amocrm_id = await amojo.send_message(
        scope, payload("m-4", text="Again", reply_to=wire.ReplyTo(message=wire.EmbeddedMessage(id=first.amocrm_id)))
    )
    reply_payload = fake.message(reply.amocrm_id or "").payload
    forward_payload = fake.message(forward.amocrm_id or "").payload
    again_payload = fake.message(by_amocrm_id.amocrm_id or "").payload
    assert reply_payload is not None and reply_payload.reply_to == quoted
    assert forward_payload is not None and forward_payload.forwards == forwarded
    assert again_payload is not None and again_payload.reply_to is not None
    assert again_payload.reply_to.message.id == first.amocrm_id


MESSAGE_KINDS = {
    "text": wire.MessageContent(type="text", text="Hello"),
    "picture": wire.MessageContent(
        type="picture", media="https://files.test/p.jpg", file_name="p.jpg", file_size=1024, text="caption"
    ),
    "file": wire.MessageContent(type="file", media="https://files.test/a.pdf", file_name="a.pdf", file_size=2048),
    "video": wire.MessageContent(
        type="video", media="https://files.test/v.mp4", file_name="v.mp4", file_size=4096, media_duration=12
    ),
    "voice": wire.MessageContent(type="voice", media="https://files.test/v.ogg", media_duration=3),
    "audio": wire.MessageContent(type="audio", media="https://files.test/a.mp3", file_name="a.mp3"),
    "sticker": wire.MessageContent(type="sticker", media="https://files.test/s.webp", sticker_id="CAAD-1"),
    "location": wire.MessageContent(type="location", location=wire.Location(lon=37.6173, lat=55.7558)),
    "contact": wire.MessageContent(type="contact", contact=wire.Contact(name="Bob", phone="+79007654321")),
    "list choice": wire.MessageContent(type="text", text="Option 2", callback_data="row-2"),
    "shared post": wire.MessageContent(
        type="text", text="look", shared_post=wire.SharedPost(url="https://insta.test/p/1", site_name="Insta")
    ),
}


@pytest.mark.parametrize("kind", list(MESSAGE_KINDS))
async def test_send_every_message_type(fake: FakeAmojo, amojo: AmojoClient, scope: str, kind: str) -> None:
    content = MESSAGE_KINDS[kind]
    sent = await amojo.send_message(scope, payload(f"msg-{kind}", message=content))
    stored = fake.message(sent.amocrm_id or "")
    assert stored.content == content
    assert msgspec.json.decode(fake.requests[-1].body)["payload"]["message"] == msgspec.to_builtins(content)


@pytest.mark.parametrize(
    "content",
    [
        wire.MessageContent(type="picture", media="https://files.test/p.jpg"),  # no file_name / file_size
        wire.MessageContent(type="voice"),  # no media
        wire.MessageContent(type="location"),
    ],
)
async def test_an_incomplete_message_is_a_400_not_retried(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, content: wire.MessageContent
) -> None:
    error = await raises_amojo(amojo.send_message(scope, payload("bad", message=content)))
    assert (error.status, error.body["code"]) == (400, "invalid_message")
    assert not error.retryable
    assert len(fake.requests) == 1
    assert fake.messages == []


async def test_edit_message(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    sent = await amojo.send_message(scope, payload("m-1", text="Helo"))
    edit = payload("m-1", text="Hello", id=sent.amocrm_id)
    edited = await amojo.send_message(scope, edit, event="edit_message")
    assert edited.amocrm_id == sent.amocrm_id
    assert edited.duplicate is False
    stored = fake.message(sent.amocrm_id or "")
    assert stored.text == "Hello"
    assert len(fake.messages) == 1
    assert msgspec.json.decode(fake.requests[-1].body)["event_type"] == "edit_message"


async def test_edit_message_carrying_a_delivery_status(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    sent = await amojo.send_message(scope, payload("m-1"))
    status = wire.EditDeliveryStatus(delivery_status=-1, error_code=905, error="Blocked by the client")
    content = wire.MessageContent(type="text", text="Hi", delivery_status=status)
    await amojo.send_message(scope, payload("m-1", id=sent.amocrm_id, message=content), event="edit_message")
    assert fake.message(sent.amocrm_id or "").delivery_status == -1


async def test_edit_of_an_unknown_message_is_a_404(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    error = await raises_amojo(amojo.send_message(scope, payload("m-x", id="no-such-id"), event="edit_message"))
    assert (error.status, error.body["code"]) == (404, "unknown_message")
    assert "edit message" in str(error)
    assert len(fake.requests) == 1


async def test_first_answer_after_write_first_ties_the_chat(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    chat = fake.add_chat(scope, None, phone="+79001234567")
    await amojo.send_message(scope, payload("wa-1", "wa-79001234567", conversation_ref_id=chat.id))
    assert chat.conversation_id == "wa-79001234567"
    assert fake.find_chat("wa-79001234567") is chat


async def test_send_comment(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    post = wire.Post(id="post-7", url="https://insta.test/p/7", username="shop", caption="New arrivals")
    content = wire.MessageContent(type="text", text="Nice!", post=post)
    sent = await amojo.send_comment(scope, payload("c-1", "ig-comments-7", message=content))
    stored = fake.message(sent.amocrm_id or "")
    assert isinstance(stored.content, wire.MessageContent)
    assert stored.content.post == post
    assert msgspec.json.decode(fake.requests[-1].body)["payload"]["message"]["post"]["id"] == "post-7"


async def test_send_comment_requires_a_post(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    with pytest.raises(ValueError, match=r"message\.post"):
        await amojo.send_comment(scope, payload("c-1"))
    assert fake.requests == []


# -- duplicate msgid -----------------------------------------------------------------------------------------


async def test_sending_the_same_msgid_twice_is_a_duplicate_success(
    fake: FakeAmojo, amojo: AmojoClient, scope: str
) -> None:
    message = payload("tg-100-1")
    first = await amojo.send_message(scope, message)
    second = await amojo.send_message(scope, message)
    assert first.duplicate is False and first.amocrm_id is not None
    assert second == Sent(msgid="tg-100-1", amocrm_id=None, conversation_id=None, duplicate=True)
    assert len(fake.messages) == 1
    assert [r.status for r in fake.requests] == [200, 400]


async def test_a_duplicate_edit_is_not_swallowed(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    """Only a new_message refusal means "already sent"; an edit's 400 is a real error."""
    fake.fail_next(400, body={"error": "message with msgid 'm-1' already exists", "code": "duplicate_msgid"})
    error = await raises_amojo(amojo.send_message(scope, payload("m-1", id="x"), event="edit_message"))
    assert error.status == 400


class LoseFirstAnswers:
    """ASGI middleware: the request reaches the app, but the first ``n`` answers are replaced by a 502."""

    def __init__(self, app: Any, n: int = 1) -> None:
        self.app, self.remaining = app, n

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or self.remaining <= 0:
            await self.app(scope, receive, send)
            return
        self.remaining -= 1

        async def swallow(message: dict[str, Any]) -> None:
            pass

        await self.app(scope, receive, swallow)
        await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"upstream went away"})


async def test_a_send_retried_after_a_lost_answer_never_duplicates(fake: FakeAmojo) -> None:
    fake.connect(ACCOUNT)
    http, amojo = in_process(LoseFirstAnswers(fake.app))
    async with http, amojo:
        sent = await amojo.send_message(SCOPE, payload("tg-100-1"))
    assert sent.duplicate is True
    assert len(fake.messages) == 1
    assert [r.status for r in fake.requests] == [200, 400]  # stored, answer lost, retry refused as duplicate


@pytest.mark.parametrize(
    ("status", "body", "duplicate"),
    [
        (400, {"code": "duplicate_msgid", "error": "whatever"}, True),
        (400, {"error": "message with msgid 'x' already exists"}, True),
        (400, {"message": "Duplicate msgid"}, True),
        (400, {"detail": "msgid exists"}, True),
        (400, "msgid already used", True),
        (400, {"code": "invalid_message", "error": "message.text is required"}, False),
        (400, {"error": "msgid is required"}, False),
        (400, None, False),
        (409, {"code": "duplicate_msgid"}, False),
        (500, "msgid already exists", False),
    ],
)
def test_is_duplicate_msgid(status: int, body: Any, duplicate: bool) -> None:
    assert is_duplicate_msgid(status, body) is duplicate


# -- delivery status -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_code", "error"),
    [(1, None, None), (2, None, None), (-1, 901, None), (-1, 905, "The number has no WhatsApp")],
)
async def test_update_delivery_status(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, status: Any, error_code: int | None, error: str | None
) -> None:
    sent = await amojo.send_message(scope, payload("m-1"))  # any message amoCRM knows
    amocrm_id = sent.amocrm_id or ""
    fake.requests.clear()
    await amojo.update_delivery_status(scope, amocrm_id, status, error_code=error_code, error=error)
    [request] = fake.requests
    assert request.path == f"/v2/origin/custom/{scope}/{amocrm_id}/delivery_status"
    assert request.status == 200
    expected: dict[str, Any] = {"msgid": amocrm_id, "delivery_status": status}
    expected |= {"error_code": error_code} if error_code else {}
    expected |= {"error": error} if error else {}
    assert msgspec.json.decode(request.body) == expected
    stored = fake.message(amocrm_id).statuses[-1]
    assert (stored.delivery_status, stored.error_code, stored.error) == (status, error_code, error)


async def test_delivery_status_905_needs_a_text(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    with pytest.raises(ValueError, match="905"):
        await amojo.update_delivery_status(scope, "some-id", -1, error_code=905)
    assert fake.requests == []


async def test_delivery_status_of_an_unknown_message_is_404_not_retried(
    fake: FakeAmojo, amojo: AmojoClient, scope: str
) -> None:
    error = await raises_amojo(amojo.update_delivery_status(scope, "no-such-message", 2))
    assert error.status == 404
    assert error.body["code"] == "unknown_message"
    assert not error.retryable
    assert len(fake.requests) == 1


# -- history -------------------------------------------------------------------------------------------------


async def test_history_pages_newest_first(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    for n in range(120):
        await amojo.send_message(scope, payload(f"h-{n:03}", text=f"message {n}"))
    fake.requests.clear()
    chat = chat_id(fake, "tg-100")
    first_page = await amojo.get_history(scope, chat)
    assert [m.message.client_id for m in first_page] == [f"h-{n:03}" for n in range(119, 69, -1)]
    second_page = await amojo.get_history(scope, chat, offset=50, limit=10)
    assert [m.message.client_id for m in second_page] == [f"h-{n:03}" for n in range(69, 59, -1)]
    assert first_page[0].message.text == "message 119"
    assert first_page[0].sender is not None and first_page[0].sender.client_id == "tg-user-42"
    assert [r.query for r in fake.requests] == ["offset=0&limit=50", "offset=50&limit=10"]

    fake.requests.clear()
    everything = [m async for m in amojo.iter_history(scope, chat)]
    assert [m.message.client_id for m in everything] == [f"h-{n:03}" for n in range(119, -1, -1)]
    assert [r.query for r in fake.requests] == ["offset=0&limit=50", "offset=50&limit=50", "offset=100&limit=50"]
    assert all(r.method == "GET" and r.body == b"" for r in fake.requests)


async def test_iter_history_stops_on_an_empty_page(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    for n in range(20):
        await amojo.send_message(scope, payload(f"h-{n}"))
    fake.requests.clear()
    assert len([m async for m in amojo.iter_history(scope, chat_id(fake, "tg-100"), page_size=10)]) == 20
    assert [r.status for r in fake.requests] == [200, 200, 204]


@pytest.mark.parametrize("limit", [0, 51, 100])
async def test_history_limit_out_of_range(fake: FakeAmojo, amojo: AmojoClient, scope: str, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await amojo.get_history(scope, "tg-100", limit=limit)
    with pytest.raises(ValueError, match="limit"):
        await anext(aiter(amojo.iter_history(scope, "tg-100", page_size=limit)))
    assert fake.requests == []


async def test_history_of_an_unknown_chat_is_empty(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    assert await amojo.get_history(scope, "no-such-chat") == []
    assert [m async for m in amojo.iter_history(scope, "no-such-chat")] == []
    assert [r.status for r in fake.requests] == [204, 204]


async def test_history_of_a_chat_id_that_needs_quoting(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    odd = "chat/7900 ?x=1&y#z:%25ü"
    fake.chats[odd] = Chat(odd, scope, "wa/7900 123?x=1&y#z", "user-1")
    await amojo.send_message(scope, payload("q-1", "wa/7900 123?x=1&y#z"))
    [entry] = await amojo.get_history(scope, odd)
    assert entry.message.client_id == "q-1"


async def test_history_of_an_unknown_scope_is_404(fake: FakeAmojo, amojo: AmojoClient) -> None:
    error = await raises_amojo(amojo.get_history(SCOPE, "tg-100"))
    assert (error.status, error.body["code"]) == (404, "unknown_scope")


async def test_find_message_looks_in_the_newest_pages(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    sent = [await amojo.send_message(scope, payload(f"h-{n:03}")) for n in range(120)]
    fake.requests.clear()
    chat = chat_id(fake, "tg-100")
    assert await amojo.find_message(scope, chat, "h-119") == sent[119].amocrm_id
    assert await amojo.find_message(scope, chat, "h-030") == sent[30].amocrm_id  # on the second page
    assert await amojo.find_message(scope, chat, "h-010") is None  # on the third
    assert await amojo.find_message(scope, chat, "h-010", pages=3) == sent[10].amocrm_id
    assert [r.query for r in fake.requests] == [
        "offset=0&limit=50",
        *("offset=0&limit=50", "offset=50&limit=50") * 3,
        "offset=100&limit=50",
    ]


async def test_find_message_in_a_short_or_unknown_chat(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    await amojo.send_message(scope, payload("h-1"))
    fake.requests.clear()
    assert await amojo.find_message(scope, chat_id(fake, "tg-100"), "h-2") is None
    assert await amojo.find_message(scope, "no-such-chat", "h-1") is None
    assert await amojo.find_message(scope, "tg-100", "h-1") is None  # our conversation_id names no chat
    assert [r.status for r in fake.requests] == [200, 204, 204]  # a short page is the last one


# -- typing and reactions ---------------------------------------------------------------------------------------


async def test_typing(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    assert await amojo.typing(scope, "tg-100", "tg-user-42") is None
    await amojo.typing(scope, "tg-100", "tg-user-42", duration_ms=3000)
    assert [r.status for r in fake.requests] == [204, 204]
    assert [(t.request.conversation_id, t.request.sender.id, t.request.duration_ms) for t in fake.typing] == [
        ("tg-100", "tg-user-42", None),
        ("tg-100", "tg-user-42", 3000),
    ]
    assert "duration_ms" not in msgspec.json.decode(fake.requests[0].body)


async def test_react_and_unreact(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    sent = await amojo.send_message(scope, payload("m-1"))
    chat = fake.find_chat("tg-100")
    assert chat is not None
    await amojo.react(scope, user_id="tg-user-42", emoji="👍", conversation_id="tg-100", msgid="m-1")
    await amojo.react(scope, user_id="tg-user-42", emoji=None, conversation_ref_id=chat.id, amocrm_id=sent.amocrm_id)
    await amojo.react(
        scope, user_id="x", user_ref_id=MANAGER_AMOJO_ID, emoji="❤️", conversation_id="tg-100", msgid="m-1"
    )
    assert [(r.message_id, r.request.type, r.request.emoji) for r in fake.reactions] == [
        (sent.amocrm_id, "react", "👍"),
        (sent.amocrm_id, "unreact", None),
        (sent.amocrm_id, "react", "❤️"),
    ]
    assert fake.reactions[2].request.user == wire.ReactUser(id="x", ref_id=MANAGER_AMOJO_ID)
    unreact = msgspec.json.decode(fake.requests[-2].body)
    assert unreact == {
        "user": {"id": "tg-user-42"},
        "type": "unreact",
        "conversation_ref_id": chat.id,
        "id": sent.amocrm_id,
    }


@pytest.mark.parametrize("emoji", ["👍", None])
async def test_react_to_an_unknown_message_is_404(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, emoji: str | None
) -> None:
    await amojo.send_message(scope, payload("m-1"))
    fake.requests.clear()
    error = await raises_amojo(
        amojo.react(scope, user_id="tg-user-42", emoji=emoji, conversation_id="tg-100", msgid="m-404")
    )
    assert (error.status, error.body["code"]) == (404, "unknown_message")
    assert len(fake.requests) == 1
    assert fake.reactions == []


async def test_react_needs_a_message_and_a_chat(amojo: AmojoClient, scope: str) -> None:
    with pytest.raises(ValueError, match="msgid or id"):
        await amojo.react(scope, user_id="u", emoji="👍", conversation_id="tg-100")
    with pytest.raises(ValueError, match="conversation_id or conversation_ref_id"):
        await amojo.react(scope, user_id="u", emoji="👍", msgid="m-1")


# -- retries ------------------------------------------------------------------------------------------------


async def test_429_twice_then_success(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    fake.fail_next(429, times=2, retry_after=0)
    sent = await amojo.send_message(scope, payload("m-1"))
    assert sent.amocrm_id is not None and not sent.duplicate
    assert [r.status for r in fake.requests] == [429, 429, 200]
    assert len(fake.messages) == 1


async def test_503_twice_then_success(fake: FakeAmojo, amojo: AmojoClient, scope: str) -> None:
    fake.fail_next(503, times=2)
    await amojo.typing(scope, "tg-100", "tg-user-42")
    assert [r.status for r in fake.requests] == [503, 503, 204]


@pytest.mark.parametrize("status", [429, 500, 502, 503])
async def test_a_storm_longer_than_the_policy_is_a_clear_error(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, status: int
) -> None:
    fake.fail_next(status, times=10, retry_after=0 if status == 429 else None)
    error = await raises_amojo(amojo.send_message(scope, payload("m-1")))
    assert error.status == status
    assert error.retryable
    assert error.body == {"error": f"injected fault {status}", "code": "injected"}
    assert (
        str(error)
        == f"amojo new message failed after 3 attempts: HTTP {status} (POST http://amojo.test/v2/origin/custom/{scope})"
    )
    assert len(fake.requests) == FAST.attempts == 3
    assert fake.messages == []


async def test_the_attempt_count_follows_the_policy(fake: FakeAmojo, scope: str) -> None:
    fake.fail_next(503, times=100)
    http, amojo = in_process(fake.app, retry=RetryPolicy(attempts=6, backoff=0.0005, max_backoff=0.001))
    async with http, amojo:
        error = await raises_amojo(amojo.get_history(scope, "tg-100"))
    assert "after 6 attempts" in str(error)
    assert len(fake.requests) == 6


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 422])
async def test_client_errors_are_never_repeated_within_the_call(
    fake: FakeAmojo, amojo: AmojoClient, scope: str, status: int
) -> None:
    """A 4xx is the caller's to judge: the relay retries the job on a timeout or a conflict (retryable), no other."""
    fake.fail_next(status, times=5, body={"error": f"refused {status}", "code": f"code_{status}"})
    error = await raises_amojo(amojo.send_message(scope, payload("m-1")))
    assert error.status == status
    assert error.body == {"error": f"refused {status}", "code": f"code_{status}"}
    assert error.retryable is (status in (408, 409))
    assert f"HTTP {status}" in str(error)
    assert len(fake.requests) == 1


class Unreachable:
    """A transport handler that never gets through."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise httpx.ConnectError("connection refused", request=request)


async def test_transport_errors_are_retried_then_a_statusless_error() -> None:
    handler = Unreachable()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        AmojoClient(CHANNEL, SECRET, client=http, retry=FAST) as amojo,
    ):
        error = await raises_amojo(amojo.typing(SCOPE, "tg-100", "tg-user-42"))
    assert handler.calls == 3
    assert error.status is None and error.body is None
    assert error.retryable
    assert str(error) == (
        "amojo typing failed after 3 attempts: ConnectError: connection refused "
        f"(POST https://amojo.amocrm.ru/v2/origin/custom/{SCOPE}/typing)"
    )
    assert isinstance(error.__cause__, httpx.ConnectError)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_a_closed_port_is_retried_then_a_statusless_error(transport: Any) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    async with AmojoClient(CHANNEL, SECRET, base_url=url, transport=transport, retry=FAST, timeout=2) as amojo:
        error = await raises_amojo(amojo.connect(ACCOUNT))
    assert error.status is None
    assert "failed after 3 attempts" in str(error)
    assert f"(POST {url}/v2/origin/custom/{CHANNEL}/connect)" in str(error)  # where it could not connect


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_a_hung_amojo_times_out_and_is_retried(transport: Any) -> None:
    release = anyio.Event()
    calls = 0

    async def hung(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        nonlocal calls
        if scope["type"] != "http":
            return
        calls += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    policy = RetryPolicy(attempts=2, backoff=0.001)
    async with serve_app(hung) as url:
        try:
            amojo = AmojoClient(CHANNEL, SECRET, base_url=url, transport=transport, retry=policy, timeout=0.05)
            async with amojo:
                with anyio.fail_after(5):
                    error = await raises_amojo(amojo.typing(SCOPE, "tg-100", "tg-user-42"))
        finally:
            release.set()
    assert error.status is None
    assert "ReadTimeout" in str(error)
    assert calls == 2


class HeaderRecorder:
    """ASGI middleware keeping the headers of every request before passing it on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http":
            self.headers.append({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def ticking_dates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The signing clock advances one second per signature (starting a minute ago), so every Date differs."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    ticks = (start + timedelta(seconds=n) for n in itertools.count())
    issued: list[str] = []

    def next_date(when: datetime | None = None) -> str:
        date = format_date(next(ticks) if when is None else when)
        issued.append(date)
        return date

    monkeypatch.setattr(amoconnect.signing, "format_date", next_date)
    return issued


async def test_a_call_hashes_its_body_once_for_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[int] = []
    md5 = hashlib.md5

    def counting(data: bytes = b"") -> Any:
        hashed.append(len(data))
        return md5(data)

    monkeypatch.setattr(hashlib, "md5", counting)
    sent = httpx.Response(200, json={"new_message": {"msgid": "a-1"}})
    answers = iter([httpx.Response(503), httpx.Response(503), sent])
    seen: list[str] = []

    def amojo(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Content-MD5"])
        return next(answers)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(amojo)) as http,
        AmojoClient(CHANNEL, SECRET, client=http, retry=FAST) as client,
    ):
        await client.send_message(SCOPE, payload("m-1", text="x" * 5000))
    assert len(hashed) == 1 and hashed[0] > 5000
    assert len(seen) == 3 and len(set(seen)) == 1


async def test_every_retry_is_signed_afresh(fake: FakeAmojo, ticking_dates: list[str]) -> None:
    fake.connect(ACCOUNT)
    recorder = HeaderRecorder(fake.app)
    http, amojo = in_process(recorder)
    fake.fail_next(503, times=2)
    async with http, amojo:
        await amojo.send_message(SCOPE, payload("m-1"))
    assert [r.status for r in fake.requests] == [503, 503, 200]
    dates = [headers["date"] for headers in recorder.headers]
    assert dates == ticking_dates and len(set(dates)) == 3
    signatures = {headers["x-signature"] for headers in recorder.headers}
    assert len(signatures) == 3
    for headers in recorder.headers:  # each attempt's signature matches its own Date
        expected = signature_for(
            SECRET,
            "POST",
            headers["content-md5"],
            headers["content-type"],
            headers["date"],
            f"/v2/origin/custom/{SCOPE}",
        )
        assert headers["x-signature"] == expected
    assert len({headers["content-md5"] for headers in recorder.headers}) == 1  # the same bytes every time


async def test_a_long_storm_outlasting_the_signature_ttl_would_still_be_signed_fresh(
    fake: FakeAmojo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake's clock jumps 20 minutes during a 503 storm: the retry must carry a new Date to pass."""
    now = [time.time()]
    fake.clock = lambda: now[0]
    fake.connect(ACCOUNT)
    recorder = HeaderRecorder(fake.app)

    def advance(when: datetime | None = None) -> str:
        return format_date(datetime.fromtimestamp(now[0], UTC) if when is None else when)

    monkeypatch.setattr(amoconnect.signing, "format_date", advance)
    http, amojo = in_process(recorder, retry=RetryPolicy(attempts=2, backoff=0.001))
    fake.fail_next(503)

    original_take = fake._take_fault

    def take_and_jump(path: str) -> Any:
        fault = original_take(path)
        if fault is not None:
            now[0] += 20 * 60  # twenty minutes pass while amojo is down
        return fault

    monkeypatch.setattr(fake, "_take_fault", take_and_jump)
    async with http, amojo:
        await amojo.typing(SCOPE, "tg-100", "tg-user-42")
    assert [r.status for r in fake.requests] == [503, 204]
    first, second = (parsedate_to_datetime(h["date"]) for h in recorder.headers)
    assert (second - first).total_seconds() == 20 * 60


@pytest.mark.parametrize("step", [-20 * 60, 20 * 60, 3 * 3600], ids=["20-min-behind", "20-min-ahead", "3-h-ahead"])
async def test_our_clock_off_amojo_s_costs_one_request_not_the_message(step: float) -> None:
    """Our clock is off amojo's by more than its 15-minute Date window: amojo refuses the signature
    (403, its own Date in the answer); the client signs with amojo's time from then on."""
    ours = [time.time() + step]
    fake = FakeAmojo(CHANNEL, SECRET)  # amojo keeps the right time
    fake.connect(ACCOUNT)
    http, amojo = in_process(fake.app, clock=lambda: ours[0])
    async with http, amojo:
        sent = await amojo.send_message(SCOPE, payload("m-1"))
        assert [r.status for r in fake.requests] == [403, 200]
        await amojo.send_message(SCOPE, payload("m-2"))  # signed right at once
        assert [r.status for r in fake.requests] == [403, 200, 200]
        ours[0] = time.time()  # our clock is set right again
        await amojo.send_message(SCOPE, payload("m-3"))
    assert [r.status for r in fake.requests] == [403, 200, 200, 403, 200]
    assert sent.amocrm_id is not None
    assert [m.msgid for m in fake.messages] == ["m-1", "m-2", "m-3"]


async def test_a_wrong_secret_is_refused_403(fake: FakeAmojo) -> None:
    fake.connect(ACCOUNT)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app))
    async with http, AmojoClient(CHANNEL, "f" * 40, client=http, retry=FAST) as amojo:
        error = await raises_amojo(amojo.typing(SCOPE, "tg-100", "tg-user-42"))
    assert (error.status, error.body["code"]) == (403, "bad_signature")
    assert "X-Signature" in error.body["error"]
    assert len(fake.requests) == 1  # amojo's Date agrees with ours: our clock is not the cause
    assert not error.retryable


async def test_an_unexpected_success_body_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>proxy</html>"))) as h,
        AmojoClient(CHANNEL, SECRET, client=h, retry=FAST) as amojo,
    ):
        error = await raises_amojo(amojo.connect(ACCOUNT))
    assert error.status == 200
    assert error.body == "<html>proxy</html>"
    assert "unexpected body" in str(error)
    assert error.retryable  # a proxy or a bad deploy on amoCRM's side: a delay, not a dead letter


# -- client construction ------------------------------------------------------------------------------------


async def test_base_url_and_ownership() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http:
        for base in ("https://amojo.amocrm.ru", "https://amojo.amocrm.com/", "https://amojo.kommo.com"):
            amojo = AmojoClient(CHANNEL, SECRET, base_url=base, client=http)
            await amojo.typing(SCOPE, "c", "u")
            await amojo.aclose()  # not ours to close: the shared client stays usable
        assert not http.is_closed
    assert seen == [
        f"{host}/v2/origin/custom/{SCOPE}/typing"
        for host in (
            "https://amojo.amocrm.ru",
            "https://amojo.amocrm.com",
            "https://amojo.kommo.com",
        )
    ]
    assert repr(AmojoClient(CHANNEL, SECRET, client=http)) == (
        f"AmojoClient(channel_id={CHANNEL!r}, base_url='https://amojo.amocrm.ru')"
    )


# -- over a real loopback port, on both transports --------------------------------------------------------------


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_every_method_over_a_real_port(fake: FakeAmojo, transport: Any) -> None:
    async with (
        serve_app(fake.app) as url,
        AmojoClient(CHANNEL, SECRET, base_url=url, transport=transport, retry=FAST) as amojo,
    ):
        scope = (await amojo.connect(ACCOUNT, title="Loopback")).scope_id
        assert scope == SCOPE
        chat = await amojo.create_chat(scope, "tg-100", wire.ChatUser(id="tg-user-42", name="Ann"))
        assert (await amojo.create_chat(scope, "tg-100", wire.ChatUser(id="tg-user-42"))).id == chat.id

        sent = await amojo.send_message(scope, payload("m-1", text="Hello"))
        assert sent.conversation_id == chat.id and sent.amocrm_id
        assert (await amojo.send_message(scope, payload("m-1", text="Hello"))).duplicate
        picture = wire.MessageContent(type="picture", media="https://f.test/p.jpg", file_name="p.jpg", file_size=9)
        await amojo.send_message(scope, payload("m-2", message=picture, silent=True))
        await amojo.send_message(scope, payload("m-1", text="Hello!", id=sent.amocrm_id), event="edit_message")
        post = wire.Post(id="post-1", url="https://insta.test/p/1")
        await amojo.send_comment(
            scope, payload("c-1", "ig-1", message=wire.MessageContent(type="text", text="c", post=post))
        )

        await amojo.update_delivery_status(scope, sent.amocrm_id, 2)
        history = await amojo.get_history(scope, chat.id, limit=10)
        assert [m.message.client_id for m in history] == ["m-2", "m-1"]
        assert [m.message.client_id async for m in amojo.iter_history(scope, chat.id, page_size=1)] == ["m-2", "m-1"]
        assert await amojo.get_history(scope, "no-such-chat") == []
        assert await amojo.get_history(scope, "tg-100") == []  # amojo knows the chat by its own id only

        await amojo.typing(scope, "tg-100", "tg-user-42")
        await amojo.react(scope, user_id="tg-user-42", emoji="👍", conversation_id="tg-100", msgid="m-1")
        await amojo.react(scope, user_id="tg-user-42", emoji=None, conversation_id="tg-100", msgid="m-1")
        error = await raises_amojo(
            amojo.react(scope, user_id="tg-user-42", emoji="👍", conversation_id="tg-100", msgid="nope")
        )
        assert error.status == 404

        await amojo.disconnect(ACCOUNT)
        error = await raises_amojo(amojo.typing(scope, "tg-100", "tg-user-42"))
        assert (error.status, error.body["code"]) == (404, "unknown_scope")

    assert fake.message(sent.amocrm_id).text == "Hello!"
    assert fake.message(sent.amocrm_id).delivery_status == 2
    assert [m.msgid for m in fake.messages] == ["m-1", "m-2", "c-1"]
    assert len(fake.typing) == 1 and [r.request.type for r in fake.reactions] == ["react", "unreact"]
    assert all(r.status != 403 for r in fake.requests)  # every request was signed right on the wire
    assert fake.requests_to("/disconnect")[0].method == "DELETE"


class Slow:
    """A slow ASGI amojo answering 204 that counts requests in flight."""

    def __init__(self) -> None:
        self.in_flight = self.most = self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await anyio.sleep(0.02)
        finally:
            self.in_flight -= 1
        self.served += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_requests_in_flight_are_capped_per_host_over_a_real_port(transport: Any) -> None:
    app = Slow()
    async with (
        serve_app(app) as url,
        AmojoClient(CHANNEL, SECRET, base_url=url, transport=transport, max_in_flight_per_host=3) as amojo,
        anyio.create_task_group() as tg,
    ):
        for n in range(12):
            tg.start_soon(amojo.typing, SCOPE, f"tg-{n}", "u")
    assert (app.served, app.most) == (12, 3)


async def test_on_aiohttp_the_client_sends_through_the_session_and_closes_it() -> None:
    """Transport aiohttp without a given client: no httpx client in between, the session ours to close."""
    async with serve_app(Slow()) as url:
        amojo = AmojoClient(CHANNEL, SECRET, base_url=url, transport="aiohttp")
        sender = amojo._client
        assert sender._client is None and sender._aiohttp is not None
        await amojo.typing(SCOPE, "tg-100", "u")
        session = sender._aiohttp.client
        await amojo.aclose()
    assert session.closed


async def test_on_aiohttp_an_answer_over_the_cap_is_a_network_error_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import amoconnect.http

    monkeypatch.setattr(amoconnect.http, "WHOLE_BODY_LIMIT", 1000)
    calls = 0

    async def chatty(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        nonlocal calls
        if scope["type"] != "http":
            return
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})  # chunked: no length said
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x" * 600, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with (
        serve_app(chatty) as url,
        AmojoClient(CHANNEL, SECRET, base_url=url, transport="aiohttp", retry=FAST) as amojo,
    ):
        error = await raises_amojo(amojo.connect(ACCOUNT))
    assert "over 1000 bytes" in str(error) and error.status is None and error.retryable
    assert calls == FAST.attempts


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_retries_over_a_real_port(fake: FakeAmojo, transport: Any) -> None:
    fake.connect(ACCOUNT)
    async with (
        serve_app(fake.app) as url,
        AmojoClient(CHANNEL, SECRET, base_url=url, transport=transport, retry=FAST) as amojo,
    ):
        fake.fail_next(429, times=2, retry_after=0)
        await amojo.send_message(SCOPE, payload("m-1"))
        fake.fail_next(503, times=FAST.attempts)  # exactly the storm the policy gives up on
        error = await raises_amojo(amojo.send_message(SCOPE, payload("m-2")))
        assert (error.status, error.body["code"]) == (503, "injected")
        fake.requests.clear()
        fake.fail_next(404, times=10)
        assert (await raises_amojo(amojo.typing(SCOPE, "tg-100", "u"))).status == 404
        assert len(fake.requests) == 1
    assert [m.msgid for m in fake.messages] == ["m-1"]
