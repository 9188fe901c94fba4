from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from amoconnect.amojo import wire
from amoconnect.amojo.wire import MessageHook, ReactionHook, TypingHook, parse_webhook
from amoconnect.http import RetryPolicy, send_with_retries
from amoconnect.signing import EMPTY_MD5, format_date, sign_request, verify_signature
from amoconnect.testing.fake_amojo import Chat, FakeAmojo
from amoconnect.testing.servers import serve_app

SECRET = "0123456789abcdef0123456789abcdef01234567"
CHANNEL = "11111111-2222-3333-4444-555555555555"
ACCOUNT = "66666666-7777-8888-9999-000000000000"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
BASE = "/v2/origin/custom"
SPEC_DATE = "Mon, 02 Mar 2026 09:30:00 +0000"
SPEC_TIME = datetime(2026, 3, 2, 9, 30, tzinfo=UTC).timestamp()
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Receiver:
    """An integration's webhook endpoint that keeps what it got."""

    hooks: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    status: int = 200

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.hooks.append((request.path_params["scope_id"], await request.body(), dict(request.headers)))
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/amocrm/{scope_id}", hook, methods=["POST"])])


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def fake(receiver: Receiver) -> AsyncIterator[FakeAmojo]:
    transport = httpx.ASGITransport(app=receiver.app())
    async with httpx.AsyncClient(transport=transport) as hook_client:
        yield FakeAmojo(
            CHANNEL, SECRET, webhook_url="http://integration.test/amocrm/:scope_id", webhook_client=hook_client
        )


@pytest.fixture
async def client(fake: FakeAmojo) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://amojo.test") as c:
        yield c


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: msgspec.Struct | bytes | None = None,
    *,
    query: str = "",
    date: str | datetime | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Sign and send a request as a correct client does (``headers`` override the signed ones)."""
    raw = body if isinstance(body, bytes) else (b"" if body is None else wire.encode(body))
    signed = sign_request(SECRET, method, path, raw, date=date)
    signed.update(headers or {})
    return await client.request(method, path + query, content=raw, headers=signed)


def _hmac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\n".join(parts).encode(), hashlib.sha1).hexdigest()


async def connect(client: httpx.AsyncClient) -> None:
    response = await call(client, "POST", f"{BASE}/{CHANNEL}/connect", wire.ConnectRequest(account_id=ACCOUNT))
    assert response.status_code == 200, response.text


def client_message(msgid: str, conversation_id: str = "tg-100", text: str = "Hi", **payload: Any) -> wire.MessageEvent:
    return wire.MessageEvent(
        event_type="new_message",
        payload=wire.MessagePayload(
            timestamp=1700000000,
            msec_timestamp=payload.pop("msec_timestamp", 1700000000000),
            msgid=msgid,
            conversation_id=conversation_id,
            sender=wire.Participant(id="tg-user-42", name="Ann"),
            message=wire.MessageContent(type="text", text=text),
            **payload,
        ),
    )


async def send(client: httpx.AsyncClient, event: wire.MessageEvent) -> wire.SentMessage:
    response = await call(client, "POST", f"{BASE}/{SCOPE}", event)
    assert response.status_code == 200, response.text
    return wire.decode(response.content, wire.SendMessageResponse).new_message


# -- method happy paths -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_connect_returns_scope_id(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    request = wire.ConnectRequest(account_id=ACCOUNT, title="Shop", is_time_window_disabled=True)
    response = await call(client, "POST", f"{BASE}/{CHANNEL}/connect", request)
    assert response.status_code == 200
    answer = wire.decode(response.content, wire.ConnectResponse)
    assert answer.scope_id == SCOPE
    assert (answer.account_id, answer.title, answer.hook_api_version) == (ACCOUNT, "Shop", "v2")
    assert answer.is_time_window_disabled is True
    assert fake.connections[SCOPE].connected


@pytest.mark.anyio
async def test_disconnect_is_delete_only(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    path = f"{BASE}/{CHANNEL}/disconnect"
    body = wire.DisconnectRequest(account_id=ACCOUNT)
    posted = await call(client, "POST", path, body)
    assert posted.status_code == 405
    assert posted.json()["code"] == "method_not_allowed"
    deleted = await call(client, "DELETE", path, body)
    assert deleted.status_code == 200
    assert not fake.connections[SCOPE].connected
    after = await call(client, "POST", f"{BASE}/{SCOPE}", client_message("m1"))
    assert after.status_code == 404
    assert after.json()["code"] == "unknown_scope"


@pytest.mark.anyio
async def test_create_chat_is_idempotent_per_conversation(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    request = wire.CreateChatRequest(
        conversation_id="tg-100",
        source=wire.Source(external_id="bot-1"),
        user=wire.ChatUser(id="tg-user-42", name="Ann", profile=wire.Profile(phone="+7999")),
    )
    first = await call(client, "POST", f"{BASE}/{SCOPE}/chats", request)
    second = await call(client, "POST", f"{BASE}/{SCOPE}/chats", request)
    assert first.status_code == second.status_code == 200
    one, two = (wire.decode(r.content, wire.CreateChatResponse) for r in (first, second))
    assert one.id == two.id
    assert UUID_RE.match(one.id)
    assert UUID_RE.match(one.user.id)
    assert (one.user.client_id, one.user.name, one.user.phone) == ("tg-user-42", "Ann", "+7999")
    chat = fake.find_chat("tg-100")
    assert chat is not None
    assert chat.id == one.id
    assert chat.source_external_id == "bot-1"


@pytest.mark.anyio
async def test_send_client_and_imported_messages(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    sent = await send(client, client_message("tg-1-1", silent=True))
    assert sent.ref_id == "tg-1-1"
    assert UUID_RE.match(sent.msgid)
    chat = fake.find_chat("tg-100")
    assert chat is not None
    assert sent.conversation_id == chat.id
    assert sent.sender_id == chat.client_user_id
    imported = wire.MessageEvent(
        event_type="new_message",
        payload=wire.MessagePayload(
            timestamp=1700000001,
            msec_timestamp=1700000001000,
            msgid="tg-1-2",
            conversation_id="tg-100",
            sender=wire.Participant(ref_id=fake.bot_id),
            receiver=wire.Participant(id="tg-user-42"),
            message=wire.MessageContent(type="picture", media="https://f/p.jpg", file_name="p.jpg", file_size=3),
            silent=False,
        ),
    )
    bot = await send(client, imported)
    assert bot.sender_id == fake.bot_id
    assert bot.receiver_id == chat.client_user_id
    stored = fake.messages_in("tg-100")
    assert [m.msgid for m in stored] == ["tg-1-1", "tg-1-2"]
    assert [m.silent for m in stored] == [True, False]
    assert stored[0].from_client
    assert not stored[1].from_client
    assert stored[1].type == "picture"
    assert fake.message(sent.msgid) is stored[0]
    assert fake.message_by_msgid("tg-1-2") is stored[1]


@pytest.mark.anyio
async def test_edit_message_records_edit_and_status(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    sent = await send(client, client_message("tg-1-1"))
    edit = client_message("tg-1-1", text="Hi, edited")
    edit.event_type = "edit_message"
    edit.payload.id = sent.msgid
    edit.payload.message.delivery_status = wire.EditDeliveryStatus(delivery_status=2)
    answer = await send(client, edit)
    assert answer.msgid == sent.msgid
    message = fake.message(sent.msgid)
    assert message.text == "Hi, edited"
    assert len(message.edits) == 1
    assert message.delivery_status == 2
    edit.payload.id = str(uuid.uuid4())
    unknown = await call(client, "POST", f"{BASE}/{SCOPE}", edit)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "unknown_message"


@pytest.mark.anyio
async def test_duplicate_msgid_is_refused_with_its_own_body(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    await send(client, client_message("tg-1-1"))
    response = await call(client, "POST", f"{BASE}/{SCOPE}", client_message("tg-1-1"))
    assert response.status_code == 400
    assert response.json() == {
        "error": "message with msgid 'tg-1-1' already exists",
        "code": "duplicate_msgid",
        "msgid": "tg-1-1",
    }
    assert len(fake.messages) == 1


@pytest.mark.anyio
async def test_delivery_status(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    chat = fake.add_chat(SCOPE, "tg-100", client_id="tg-user-42")
    emitted = await fake.emit_text(SCOPE, chat.id, "Hello")
    assert emitted.message_id is not None
    path = f"{BASE}/{SCOPE}/{emitted.message_id}/delivery_status"
    for status in (1, 2):
        body = wire.DeliveryStatusRequest(msgid=emitted.message_id, delivery_status=status)
        assert (await call(client, "POST", path, body)).status_code == 200
    failed = wire.DeliveryStatusRequest(msgid=emitted.message_id, delivery_status=-1, error_code=905, error="no")
    assert (await call(client, "POST", path, failed)).status_code == 200
    assert [s.delivery_status for s in fake.message(emitted.message_id).statuses] == [1, 2, -1]
    unknown_id = str(uuid.uuid4())
    unknown = await call(
        client,
        "POST",
        f"{BASE}/{SCOPE}/{unknown_id}/delivery_status",
        wire.DeliveryStatusRequest(msgid=unknown_id, delivery_status=1),
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "unknown_message"
    mismatch = await call(client, "POST", path, wire.DeliveryStatusRequest(msgid="other", delivery_status=1))
    assert mismatch.status_code == 400


@pytest.mark.anyio
async def test_history(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    assert (await call(client, "GET", f"{BASE}/{SCOPE}/chats/tg-100/history")).status_code == 204  # no chat
    sent = [
        await send(client, client_message(f"tg-1-{i}", text=f"m{i}", msec_timestamp=1700000000000 + i))
        for i in range(3)
    ]
    path = f"{BASE}/{SCOPE}/chats/{sent[0].conversation_id}/history"  # amoCRM's chat id
    response = await call(client, "GET", path, query="?offset=1&limit=2")
    assert response.status_code == 200
    history = wire.decode(response.content, wire.HistoryResponse)
    assert [m.message.text for m in history.messages] == ["m1", "m0"]  # newest first
    assert [m.message.client_id for m in history.messages] == ["tg-1-1", "tg-1-0"]
    assert history.messages[0].sender is not None
    assert history.messages[0].sender.client_id == "tg-user-42"
    by_amocrm_id = await call(client, "GET", f"{BASE}/{SCOPE}/chats/{history.messages[0].message.id}/history")
    assert by_amocrm_id.status_code == 204  # a message id is no chat id
    assert (await call(client, "GET", path, query="?offset=3&limit=10")).status_code == 204
    too_many = await call(client, "GET", path, query="?offset=0&limit=51")
    assert too_many.status_code == 400
    assert too_many.json()["code"] == "bad_history_range"
    assert (await call(client, "GET", path, query="?offset=x")).status_code == 400


@pytest.mark.anyio
async def test_history_takes_amocrm_s_chat_id_never_our_conversation_id(client: httpx.AsyncClient) -> None:
    await connect(client)
    sent = await send(client, client_message("tg-1", conversation_id="tg-100"))
    ours = await call(client, "GET", f"{BASE}/{SCOPE}/chats/tg-100/history")
    assert (ours.status_code, ours.content) == (204, b"")  # as amoCRM: no chat by that id
    amocrm = await call(client, "GET", f"{BASE}/{SCOPE}/chats/{sent.conversation_id}/history")
    assert amocrm.status_code == 200


@pytest.mark.anyio
async def test_history_of_a_chat_id_that_needs_quoting(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    odd = "chat:+7 999/1%ü"
    fake.chats[odd] = Chat(odd, SCOPE, "wa-1", "user-1")
    await send(client, client_message("wa-1", conversation_id="wa-1"))
    response = await call(client, "GET", f"{BASE}/{SCOPE}/chats/{quote(odd, safe='')}/history")
    assert response.status_code == 200
    assert [m.message.client_id for m in wire.decode(response.content, wire.HistoryResponse).messages] == ["wa-1"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sent", "signed"),
    [
        ("/chats/shop%3A1003/history", "/chats/shop:1003/history"),
        ("/chats/shop:1003/history", "/chats/shop%3A1003/history"),
        ("/chats/a%2Fb/history", "/chats/a/b/history"),
        ("/chats/%C3%BC/history", "/chats/ü/history"),
        ("/chats/%c3%bc/history", "/chats/%C3%BC/history"),
    ],
)
async def test_the_signature_must_cover_the_path_exactly_as_sent(
    client: httpx.AsyncClient, sent: str, signed: str
) -> None:
    await connect(client)
    headers = sign_request(SECRET, "GET", f"{BASE}/{SCOPE}{signed}")
    request = client.build_request("GET", f"http://amojo.test{BASE}/{SCOPE}{sent}", headers=headers)
    assert request.url.raw_path == f"{BASE}/{SCOPE}{sent}".encode()
    refused = await client.send(request)
    assert refused.status_code == 403
    assert refused.json()["code"] == "bad_signature"
    headers = sign_request(SECRET, "GET", f"{BASE}/{SCOPE}{sent}")
    accepted = await client.send(client.build_request("GET", f"http://amojo.test{BASE}/{SCOPE}{sent}", headers=headers))
    assert accepted.status_code == 204


@pytest.mark.anyio
async def test_typing_and_react(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    sent = await send(client, client_message("tg-1-1"))
    typing = wire.TypingRequest(conversation_id="tg-100", sender=wire.UserRef(id="tg-user-42"))
    assert (await call(client, "POST", f"{BASE}/{SCOPE}/typing", typing)).status_code == 204
    assert fake.typing[0].request == typing
    react_path = f"{BASE}/{SCOPE}/react"
    user = wire.ReactUser(id="tg-user-42")
    by_msgid = wire.ReactRequest(conversation_id="tg-100", msgid="tg-1-1", user=user, type="react", emoji="👍")
    by_id = wire.ReactRequest(conversation_ref_id=sent.conversation_id, id=sent.msgid, user=user, type="unreact")
    assert (await call(client, "POST", react_path, by_msgid)).status_code == 200
    assert (await call(client, "POST", react_path, by_id)).status_code == 200
    assert [(r.message_id, r.request.type) for r in fake.reactions] == [(sent.msgid, "react"), (sent.msgid, "unreact")]
    unknown = wire.ReactRequest(conversation_id="tg-100", msgid="nope", user=user, type="react", emoji="👍")
    response = await call(client, "POST", react_path, unknown)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_message"


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Signature": "0" * 40}, "does not match"),
        ({"X-Signature": ""}, "missing"),
        ({"Content-MD5": EMPTY_MD5}, "Content-MD5"),
        ({"Date": "yesterday"}, "RFC 2822"),
        ({"Date": format_date(datetime.now(UTC) - timedelta(minutes=16))}, "15 minutes"),
    ],
    ids=["bad-signature", "no-signature", "md5-mismatch", "bad-date", "stale-date"],
)
async def test_signature_refusals(client: httpx.AsyncClient, headers: dict[str, str], problem: str) -> None:
    response = await call(
        client, "POST", f"{BASE}/{CHANNEL}/connect", wire.ConnectRequest(account_id=ACCOUNT), headers=headers
    )
    assert response.status_code == 403
    assert response.json()["code"] == "bad_signature"
    assert problem in response.json()["error"]


@pytest.mark.anyio
async def test_signature_with_a_date_14_minutes_old_passes(client: httpx.AsyncClient) -> None:
    date = datetime.now(UTC) - timedelta(minutes=14)
    response = await call(
        client, "POST", f"{BASE}/{CHANNEL}/connect", wire.ConnectRequest(account_id=ACCOUNT), date=date
    )
    assert response.status_code == 200


@pytest.mark.anyio
async def test_spec_test_vectors_and_gmt_date_are_accepted(receiver: Receiver) -> None:
    fake = FakeAmojo(CHANNEL, SECRET, clock=lambda: SPEC_TIME + 60)
    fake.connect(ACCOUNT)
    transport = httpx.ASGITransport(app=fake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://amojo.test") as client:
        typing_body = b'{"conversation_id":"tg-100200300","sender":{"id":"tg-user-42"}}'
        headers = {
            "Date": SPEC_DATE,
            "Content-Type": "application/json",
            "Content-MD5": "9235c12bc8aac90e7ea7370f494cc149",
            "X-Signature": "bda1f78e1179e743392cc41266133921faee612c",
        }
        typing = await client.post(f"{BASE}/{SCOPE}/typing", content=typing_body, headers=headers)
        assert typing.status_code == 204
        history = f"{BASE}/{SCOPE}/chats/8e4d4baa-9e6c-4a88-838a-5f62be227bdc/history"
        headers.update({"Content-MD5": EMPTY_MD5, "X-Signature": "22bef22760c0a819f9ff66d5d36902c2e23b59e1"})
        assert (await client.get(history, headers=headers)).status_code == 204
        gmt = "Mon, 02 Mar 2026 09:30:00 GMT"
        signed = sign_request(SECRET, "POST", f"{BASE}/{SCOPE}/typing", typing_body, date=gmt)
        assert signed["Date"] == gmt
        typing = await client.post(f"{BASE}/{SCOPE}/typing", content=typing_body, headers=signed)
        assert typing.status_code == 204


@pytest.mark.anyio
async def test_content_type_must_be_json(client: httpx.AsyncClient) -> None:
    path = f"{BASE}/{CHANNEL}/connect"
    body = wire.encode(wire.ConnectRequest(account_id=ACCOUNT))
    headers = sign_request(SECRET, "POST", path, body)
    headers["Content-Type"] = "text/plain"
    headers["X-Signature"] = _hmac(SECRET.encode(), "POST", headers["Content-MD5"], "text/plain", headers["Date"], path)
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_content_type"


@pytest.mark.anyio
async def test_unknown_scope_and_channel(client: httpx.AsyncClient) -> None:
    response = await call(client, "POST", f"{BASE}/{SCOPE}", client_message("m1"))
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_scope"
    other = await call(client, "POST", f"{BASE}/{uuid.uuid4()}/connect", wire.ConnectRequest(account_id=ACCOUNT))
    assert other.status_code == 404
    assert other.json()["code"] == "unknown_channel"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "code", "problem"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b'{"event_type":"new_message","payload":{"msgid":1}}', "invalid_body", "$.payload"),
        (
            b'{"event_type":"new_message","payload":{"timestamp":1,"msec_timestamp":1,"msgid":"m","conversation_id":"c",'
            b'"sender":{"id":"u"},"message":{"type":"text","text":42}}}',
            "invalid_body",
            "$.payload.message.text",
        ),
        (
            b'{"event_type":"new_message","payload":{"timestamp":1,"msec_timestamp":1,"msgid":"m","conversation_id":"c",'
            b'"sender":{"id":"u"},"message":{"type":"picture","media":"https://x/p.jpg"}}}',
            "invalid_message",
            "file_name",
        ),
        (
            b'{"event_type":"new_message","payload":{"timestamp":1,"msec_timestamp":1,"msgid":"m","conversation_id":"c",'
            b'"sender":{"id":"u"},"message":{"type":"text"}}}',
            "invalid_message",
            "message.text",
        ),
    ],
    ids=["bad-json", "wrong-type", "wrong-nested-type", "picture-without-file-name", "text-without-text"],
)
async def test_bad_bodies_are_400(client: httpx.AsyncClient, body: bytes, code: str, problem: str) -> None:
    await connect(client)
    response = await call(client, "POST", f"{BASE}/{SCOPE}", body)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert problem in response.json()["error"]


# -- fault injection and records -----------------------------------------------------------------


@pytest.mark.anyio
async def test_fault_injection(client: httpx.AsyncClient, fake: FakeAmojo) -> None:
    await connect(client)
    typing = wire.TypingRequest(conversation_id="tg-100", sender=wire.UserRef(id="u"))
    fake.fail_next(429, retry_after=2, path_contains="/typing")
    other = await call(client, "POST", f"{BASE}/{CHANNEL}/connect", wire.ConnectRequest(account_id=ACCOUNT))
    assert other.status_code == 200  # the fault waits for a matching path
    limited = await call(client, "POST", f"{BASE}/{SCOPE}/typing", typing)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert (await call(client, "POST", f"{BASE}/{SCOPE}/typing", typing)).status_code == 204
    assert [r.status for r in fake.requests_to("/typing")] == [429, 204]
    assert fake.requests[0].method == "POST"
    assert fake.requests[0].body.startswith(b'{"account_id"')

    fake.fail_next(503, times=2)
    path = f"{BASE}/{SCOPE}/typing"
    body = wire.encode(typing)

    def build() -> httpx.Request:
        return client.build_request("POST", path, content=body, headers=sign_request(SECRET, "POST", path, body))

    response = await send_with_retries(client, build, policy=RetryPolicy(attempts=3, backoff=0.001))
    assert response.status_code == 204
    assert [r.status for r in fake.requests_to("/typing")][-3:] == [503, 503, 204]


# -- write first ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_write_first_then_client_answer_ties_the_chat(
    client: httpx.AsyncClient, fake: FakeAmojo, receiver: Receiver
) -> None:
    await connect(client)
    emitted = await fake.emit_write_first(SCOPE, "+79990000000", "Hello from the shop", source_external_id="wa-1")
    assert emitted.status == 200
    hook = parse_webhook(receiver.hooks[-1][1])
    assert isinstance(hook, MessageHook)
    assert hook.is_write_first
    assert hook.message.receiver.phone == "+79990000000"
    assert hook.message.source == wire.Source(external_id="wa-1")
    assert emitted.chat_id == hook.message.conversation.id
    answer = await send(
        client, client_message("wa-1-1", conversation_id="wa-79990000000", conversation_ref_id=emitted.chat_id)
    )
    assert answer.conversation_id == emitted.chat_id
    assert [m.text for m in fake.messages_in("wa-79990000000")] == ["Hello from the shop", "Hi"]
    later = await fake.emit_text(SCOPE, "wa-79990000000", "Welcome")
    assert later.status == 200
    tied = parse_webhook(receiver.hooks[-1][1])
    assert isinstance(tied, MessageHook)
    assert tied.conversation_id == "wa-79990000000"
    mismatch = await call(
        client,
        "POST",
        f"{BASE}/{SCOPE}",
        client_message("wa-1-2", conversation_id="other", conversation_ref_id=emitted.chat_id),
    )
    assert mismatch.status_code == 400
    assert mismatch.json()["code"] == "conversation_mismatch"


# -- emitters ---------------------------------------------------------------------------------------

LIST_MESSAGE = wire.ListMessage(
    header="Menu",
    body="Pick one",
    footer="Thanks",
    button="Options",
    sections=[wire.ListSection(title="Pizza", rows=[wire.ListRow(callback_data="p1", title="Margherita")])],
)


async def _emit_all(fake: FakeAmojo, conversation: str, target: str) -> list[tuple[str, Any]]:
    return [
        ("text", await fake.emit_text(SCOPE, conversation, "Привет 👋")),
        (
            "media",
            await fake.emit_media(SCOPE, conversation, "file", "https://amojo/f.pdf", file_name="f.pdf", file_size=9),
        ),
        (
            "buttons",
            await fake.emit_buttons(SCOPE, conversation, "Pick", [[wire.Button(text="Site", url="https://x")]]),
        ),
        ("list", await fake.emit_list_message(SCOPE, conversation, LIST_MESSAGE)),
        ("template", await fake.emit_template(SCOPE, conversation, "Order {{n}}", {"{{n}}": "7"}, external_id="ord")),
        ("comment", await fake.emit_comment_reply(SCOPE, conversation, "post-1", "Thanks!")),
        ("reply", await fake.emit_reply(SCOPE, conversation, target, "Answering")),
        ("react", await fake.emit_reaction(SCOPE, conversation, target, "👍")),
        ("react-nested", await fake.emit_reaction(SCOPE, conversation, target, "👍", nested=True)),
        ("unreact", await fake.emit_reaction(SCOPE, conversation, target, unreact=True, nested=True)),
        ("typing", await fake.emit_typing(SCOPE, conversation)),
    ]


@pytest.mark.anyio
async def test_every_emitter_sends_a_signed_parsable_hook(
    client: httpx.AsyncClient, fake: FakeAmojo, receiver: Receiver
) -> None:
    await connect(client)
    target = (await send(client, client_message("tg-1-1"))).msgid
    now = int(fake.clock())
    results = await _emit_all(fake, "tg-100", target)
    assert len(receiver.hooks) == len(results) == len(fake.webhooks)
    hooks: dict[str, Any] = {}
    for (kind, result), (scope_id, body, headers) in zip(results, receiver.hooks, strict=True):
        assert result.status == 200
        assert scope_id == SCOPE
        assert headers["content-type"] == "application/json"
        assert verify_signature(SECRET, body, headers["x-signature"]), kind
        assert result.body == body
        hooks[kind] = parse_webhook(body)
    messages = {k: h for k, h in hooks.items() if isinstance(h, MessageHook)}
    assert set(messages) == {"text", "media", "buttons", "list", "template", "comment", "reply"}
    for kind, hook in messages.items():
        result = dict(results)[kind]
        assert hook.amocrm_message_id == result.message_id
        assert hook.conversation_id == "tg-100"
        assert hook.message.receiver.client_id == "tg-user-42"
        assert hook.message.sender.id == fake.manager_id
        assert fake.message(result.message_id).from_manager
    assert messages["text"].message.message.text == "Привет 👋"
    media = messages["media"].message.message
    assert (media.type, media.media, media.file_name, media.file_size) == ("file", "https://amojo/f.pdf", "f.pdf", 9)
    buttons = messages["buttons"].message.message.markup
    assert buttons == wire.Markup(mode="inline", buttons=[[wire.Button(text="Site", url="https://x")]])
    list_markup = messages["list"].message.message.markup
    assert list_markup is not None
    assert list_markup.list_message == LIST_MESSAGE
    template = messages["template"].message.message
    assert template.text == "Order 7"
    assert template.template == wire.Template(
        id=1, external_id="ord", content="Order {{n}}", params=[wire.TemplateParam(key="{{n}}", value="7")]
    )
    assert messages["comment"].is_comment_reply
    reply_to = messages["reply"].message.message.reply_to
    assert reply_to is not None
    assert (reply_to.message.id, reply_to.message.client_id) == (target, "tg-1-1")
    for kind in ("react", "react-nested", "unreact"):
        reaction = hooks[kind]
        assert isinstance(reaction, ReactionHook)
        assert reaction.reaction.message_id == target
    assert hooks["react"].reaction.msgid == target
    assert hooks["react-nested"].reaction.message.client_id == "tg-1-1"
    assert hooks["unreact"].reaction.type == "unreact"
    assert hooks["unreact"].reaction.emoji is None
    typing = hooks["typing"]
    assert isinstance(typing, TypingHook)
    assert typing.typing.conversation.client_id == "tg-100"
    assert now + 5 <= typing.typing.expired_at <= now + 6
    # every emitted message can be given a delivery status at once
    for kind in messages:
        message_id = dict(results)[kind].message_id
        body = wire.DeliveryStatusRequest(msgid=message_id, delivery_status=1)
        assert (await call(client, "POST", f"{BASE}/{SCOPE}/{message_id}/delivery_status", body)).status_code == 200


@pytest.mark.anyio
async def test_media_group(client: httpx.AsyncClient, fake: FakeAmojo, receiver: Receiver) -> None:
    await connect(client)
    await send(client, client_message("tg-1-1"))
    for name in ("a.jpg", "b.jpg"):
        await fake.emit_media(
            SCOPE, "tg-100", "picture", f"https://amojo/{name}", file_name=name, file_size=1, media_group_id="g"
        )
    groups = set()
    for _, body, _ in receiver.hooks:
        hook = parse_webhook(body)
        assert isinstance(hook, MessageHook)
        groups.add(hook.message.message.media_group_id)
    assert groups == {"g"}


@pytest.mark.anyio
async def test_emitter_reports_the_receivers_status(fake: FakeAmojo, receiver: Receiver) -> None:
    fake.connect(ACCOUNT)
    chat = fake.add_chat(SCOPE, "tg-100", client_id="tg-user-42")
    receiver.status = 500
    assert (await fake.emit_text(SCOPE, chat.id, "x")).status == 500
    fake.set_webhook_url(SCOPE, "http://127.0.0.1:9/nothing-listens/:scope_id")
    fake.webhook_client = None
    result = await fake.emit_text(SCOPE, "tg-100", "y")
    assert result.status is None
    assert fake.webhooks[-1].url == "http://127.0.0.1:9/nothing-listens/" + SCOPE


# -- mistakes other amojo clients make ----------------------------------------------------------------


@pytest.mark.anyio
async def test_verifying_reencoded_json_fails(client: httpx.AsyncClient, fake: FakeAmojo, receiver: Receiver) -> None:
    fake.connect(ACCOUNT)
    fake.add_chat(SCOPE, "tg-100", client_id="tg-user-42")
    await fake.emit_text(SCOPE, "tg-100", "Привет 👋")
    _, raw, headers = receiver.hooks[-1]
    signature = headers["x-signature"]
    assert verify_signature(SECRET, raw, signature)
    decoded = json.loads(raw)
    for reencoded in (json.dumps(decoded).encode(), json.dumps(decoded, separators=(",", ":")).encode()):
        assert reencoded != raw
        assert not verify_signature(SECRET, reencoded, signature)


@pytest.mark.anyio
async def test_stripping_a_trailing_newline_fails(receiver: Receiver) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver.app())) as hook_client:
        fake = FakeAmojo(
            CHANNEL,
            SECRET,
            webhook_url="http://i.test/amocrm/:scope_id",
            webhook_client=hook_client,
            trailing_newline=True,
        )
        fake.connect(ACCOUNT)
        fake.add_chat(SCOPE, "tg-100")
        await fake.emit_typing(SCOPE, "tg-100")
    _, raw, headers = receiver.hooks[-1]
    assert raw.endswith(b"\n")
    assert verify_signature(SECRET, raw, headers["x-signature"])
    assert not verify_signature(SECRET, raw.rstrip(b"\n"), headers["x-signature"])
    assert not verify_signature(SECRET, raw.strip(), headers["x-signature"])
    assert isinstance(parse_webhook(raw), TypingHook)


HISTORY = f"{BASE}/{SCOPE}/chats/tg-100/history"


@pytest.mark.anyio
@pytest.mark.parametrize("hashed", [b'""', b"[]", b"{}", b"null"])
async def test_get_must_hash_the_empty_string(client: httpx.AsyncClient, hashed: bytes) -> None:
    await connect(client)
    headers = sign_request(SECRET, "GET", HISTORY, hashed)  # MD5 of a JSON empty value, sent without a body
    response = await client.get(HISTORY, headers=headers)
    assert response.status_code == 403
    assert "Content-MD5" in response.json()["error"]
    assert (await call(client, "GET", HISTORY)).status_code == 204


@pytest.mark.anyio
async def test_query_string_in_the_signed_path_is_refused(client: httpx.AsyncClient) -> None:
    await connect(client)
    date = format_date()
    query = "?offset=0&limit=50"
    signature = _hmac(SECRET.encode(), "GET", EMPTY_MD5, "application/json", date, HISTORY + query)
    headers = {"Date": date, "Content-Type": "application/json", "Content-MD5": EMPTY_MD5, "X-Signature": signature}
    assert (await client.get(HISTORY + query, headers=headers)).status_code == 403
    assert (await call(client, "GET", HISTORY, query=query)).status_code == 204


@pytest.mark.anyio
async def test_hex_decoded_secret_is_refused(client: httpx.AsyncClient) -> None:
    path = f"{BASE}/{CHANNEL}/connect"
    body = wire.encode(wire.ConnectRequest(account_id=ACCOUNT))
    date = format_date()
    md5 = hashlib.md5(body).hexdigest()
    wrong = _hmac(bytes.fromhex(SECRET), "POST", md5, "application/json", date, path)
    headers = {"Date": date, "Content-Type": "application/json", "Content-MD5": md5, "X-Signature": wrong}
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 403
    right = _hmac(SECRET.encode("ascii"), "POST", md5, "application/json", date, path)
    assert (await client.post(path, content=body, headers={**headers, "X-Signature": right})).status_code == 200


@pytest.mark.anyio
async def test_body_reencoded_after_signing_is_refused(client: httpx.AsyncClient) -> None:
    path = f"{BASE}/{CHANNEL}/connect"
    body = wire.encode(wire.ConnectRequest(account_id=ACCOUNT))
    headers = sign_request(SECRET, "POST", path, body)
    reserialised = json.dumps(json.loads(body)).encode()  # e.g. a dict handed to another JSON library
    response = await client.post(path, content=reserialised, headers=headers)
    assert response.status_code == 403


# -- a real port ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_on_a_real_port_with_hooks_to_a_real_port(receiver: Receiver) -> None:
    async with serve_app(receiver.app()) as hooks_url, httpx.AsyncClient() as hook_client:
        fake = FakeAmojo(CHANNEL, SECRET, webhook_url=hooks_url + "/amocrm/:scope_id", webhook_client=hook_client)
        async with serve_app(fake.app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            assert base_url.startswith("http://127.0.0.1:")
            await connect(client)
            sent = await send(client, client_message("tg-1-1"))
            emitted = await fake.emit_text(SCOPE, "tg-100", "Hello")
            assert emitted.status == 200
            body = wire.DeliveryStatusRequest(msgid=emitted.message_id or "", delivery_status=2)
            path = f"{BASE}/{SCOPE}/{emitted.message_id}/delivery_status"
            assert (await call(client, "POST", path, body)).status_code == 200
    assert fake.message(sent.msgid).msgid == "tg-1-1"
    assert verify_signature(SECRET, receiver.hooks[0][1], receiver.hooks[0][2]["x-signature"])


@pytest.mark.anyio
async def test_serve_app_reports_a_failed_startup() -> None:
    async def broken(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "boom"})

    with pytest.raises(RuntimeError, match="did not start"):
        async with serve_app(broken, log_level="critical"):
            pass  # pragma: no cover
