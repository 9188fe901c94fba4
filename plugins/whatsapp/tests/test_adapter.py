"""The adapter against the fake Graph API, in-process: each kind both ways, and each error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import ConfigError, MessengerError, RateLimited, SignatureError, WindowClosed
from amoconnect.model import (
    Attachment,
    Button,
    InboundEdit,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    ListMessage,
    ListRow,
    ListSection,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Template,
    TemplateParam,
)
from amoconnect.testing.kit import eventually
from structlog.testing import capture_logs
from whatsapp_rig import PUBLIC, VERIFY, Files, Rig, running

from amoconnect_whatsapp.fake import FakeWhatsApp

pytestmark = pytest.mark.anyio

Make = Callable[..., Rig]


async def test_handshake_and_signature(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    assert await fake.verify_webhook(PUBLIC, VERIFY)
    assert not await fake.verify_webhook(PUBLIC, "wrong")
    hook = WebhookRequest(method="POST", body=b"{}", headers=httpx.Headers({"X-Hub-Signature-256": "sha256=00"}))
    with pytest.raises(SignatureError):
        await rig.adapter.verify(hook)
    with pytest.raises(SignatureError):
        await rig.adapter.verify(WebhookRequest(method="POST", body=b"{}"))
    good = WebhookRequest(
        method="POST", body=b"{}", headers=httpx.Headers({"X-Hub-Signature-256": fake.signature(b"{}")})
    )
    assert await rig.adapter.verify(good) is None


async def test_startup_registers_the_number_webhook_and_refuses_a_bad_token(
    make_adapter: Make, fake: FakeWhatsApp
) -> None:
    fake.set_webhook(None, phone_number_id="1000000001")
    rig = make_adapter(register_webhook="number")
    fake.numbers["1000000001"].webhook_url = None
    await rig.adapter.startup()
    async with running(rig.adapter):
        await eventually(lambda: fake.numbers["1000000001"].webhook_url == PUBLIC)
    bad = make_adapter(token="not-the-token")
    with pytest.raises(ConfigError, match="phone_number_id"):
        await bad.adapter.startup()


async def test_inbound_kinds_both_user_shapes(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001", name="Anna")
    ghost = fake.add_user(None, name="Ghost", username="ghost")
    old = fake.add_user("4915100000003", name="Old", legacy=True)
    text = await fake.client_writes(anna, "hello")
    await fake.client_writes(ghost, "no phone here")
    await fake.client_writes(old, "old shape", reply_to=text["id"])
    await fake.client_sends_media(anna, "image", b"JPEG", "image/jpeg", caption="a cat")
    await fake.client_sends_media(anna, "audio", b"OGG", "audio/ogg", voice=True)
    await fake.client_sends_media(anna, "document", b"PDF", "application/pdf", filename="a.pdf")
    await fake.client_sends_location(anna, 52.52, 13.4, name="Berlin")
    await fake.client_sends_contact(anna, "Bob", "+4915100000009")
    await fake.client_sends_unsupported(anna)
    events = rig.events
    assert all(isinstance(e, InboundMessage) for e in events)
    messages = [e for e in events if isinstance(e, InboundMessage)]
    assert messages[0].chat == "4915100000001" and messages[0].sender.phone == "+4915100000001"
    assert messages[0].sender.name == "Anna" and messages[0].dedup_key == f"msg:{text['id']}"
    assert messages[1].chat == ghost.user_id and messages[1].sender.username == "ghost"
    assert messages[1].sender.phone is None
    assert messages[2].chat == "4915100000003" and messages[2].reply_to == text["id"]
    image, voice, document = messages[3], messages[4], messages[5]
    assert image.text == "a cat" and image.attachments[0].kind == "picture" and image.attachments[0].fetch
    assert voice.attachments[0].kind == "voice"
    assert document.attachments[0].kind == "file" and document.attachments[0].file_name == "a.pdf"
    assert messages[6].location is not None and messages[6].location.lat == 52.52 and messages[6].text == "Berlin"
    assert messages[7].contact is not None and messages[7].contact.phone == "+4915100000009"
    assert "cannot show" in messages[8].text and "131051" in messages[8].text
    fetched = await rig.adapter.fetch_media(image.attachments[0].fetch or "")
    assert fetched.content == b"JPEG" and fetched.content_type == "image/jpeg"


async def test_edits_and_deletions(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    original = await fake.client_writes(anna, "Helo")
    edit = await fake.client_edits(anna, original["id"], "Hello")
    await fake._client_message(anna, {"type": "revoke", "revoke": {"original_message_id": original["id"]}})
    assert len(rig.events) == 2
    edited = rig.events[1]
    assert isinstance(edited, InboundEdit) and edited.message_id == original["id"] and edited.text == "Hello"
    assert edited.dedup_key == f"msg:{edit['id']}"


async def test_fetch_media_needs_the_token(fake: FakeWhatsApp, http: httpx.AsyncClient) -> None:
    anna = fake.add_user("4915100000001")
    message = await fake.client_sends_media(anna, "image", b"JPEG", "image/jpeg")
    info = await http.get(
        f"http://graph.test/v23.0/{message['image']['id']}", headers={"Authorization": "Bearer token-one"}
    )
    url = info.json()["url"]
    assert (await http.get(url)).status_code == 401
    assert (await http.get(url, headers={"Authorization": "Bearer token-one"})).content == b"JPEG"


async def test_send_text_reply_reaction_typing(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    first = await fake.client_writes(anna, "hi")
    result = await rig.adapter.send_message(
        OutgoingMessage(chat="4915100000001", text="see https://example.com", reply_to=first["id"])
    )
    sent = fake.sent[result.message_ids[0]]
    assert sent.body["text"] == {"body": "see https://example.com", "preview_url": True}
    assert sent.body["context"] == {"message_id": first["id"]}
    long = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="word " * 1000))
    assert len(long.message_ids) == 2
    await rig.adapter.send_reaction(OutgoingReaction(chat="4915100000001", message_id=first["id"], emoji="🦄"))
    await rig.adapter.send_reaction(OutgoingReaction(chat="4915100000001", message_id=first["id"], removed=True))
    reactions = [s.body["reaction"]["emoji"] for s in fake.sent_to(anna) if s.type == "reaction"]
    assert reactions == ["🦄", ""]
    await rig.adapter.send_typing(OutgoingTyping(chat="4915100000001", until=0))
    await rig.adapter.send_typing(OutgoingTyping(chat="4915100000001", until=0))  # still showing: no second call
    assert fake.typing == [first["id"]] and fake.read_marks == [first["id"]]


async def test_client_reactions_and_choices(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "menu please")
    lm = ListMessage(
        body="Pick one",
        button="Options",
        header="Menu",
        footer="Thanks",
        sections=(ListSection(title="Main", rows=(ListRow(callback_data="row-1", title="First", description="d"),)),),
    )
    listed = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", list_message=lm))
    buttons = (Button(text="Yes", callback_data="yes"), Button(text="No", callback_data="no"))
    pressed = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="Sure?", buttons=(buttons,)))
    await fake.client_picks(anna, listed.message_ids[0], "row-1")
    await fake.client_picks(anna, pressed.message_ids[0], "no")
    await fake.client_reacts(anna, listed.message_ids[0], "👍")
    await fake.client_reacts(anna, listed.message_ids[0], "")
    events = [e for e in rig.events[1:] if not isinstance(e, InboundStatus)]
    assert [getattr(e, "callback_data", None) for e in events[:2]] == ["row-1", "no"]
    assert isinstance(events[0], InboundMessage) and events[0].text == "First"
    react, unreact = events[2], events[3]
    assert isinstance(react, InboundReaction) and react.emoji == "👍" and not react.removed
    assert isinstance(unreact, InboundReaction) and unreact.removed
    assert react.message_id == listed.message_ids[0]


async def test_buttons_become_a_list_and_links(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter(list_button="Выбрать")
    fake.add_user("4915100000001")
    await fake.client_writes(fake.users["4915100000001"], "hi")
    many = tuple((Button(text=f"Option number {i}", callback_data=f"o{i}"),) for i in range(5))
    link = ((Button(text="Site", url="https://example.com"),),)
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="Choose", buttons=many + link))
    body = fake.sent[result.message_ids[0]].body["interactive"]
    assert body["type"] == "list" and body["action"]["button"] == "Выбрать"
    assert body["body"]["text"] == "Choose\nSite: https://example.com"
    assert [r["id"] for r in body["action"]["sections"][0]["rows"]] == ["o0", "o1", "o2", "o3", "o4"]


async def test_list_over_limits_is_refused_clearly(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    rows = tuple(ListRow(callback_data=f"r{i}", title=f"Row {i}") for i in range(11))
    lm = ListMessage(body="b", button="Open", sections=(ListSection(title="s", rows=rows),))
    with pytest.raises(MessengerError, match="11 rows") as caught:
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", list_message=lm))
    assert caught.value.reason == "other" and not caught.value.retryable
    long_title = ListMessage(
        body="b", button="Open", sections=(ListSection(title="s", rows=(ListRow(callback_data="x", title="t" * 30),)),)
    )
    with pytest.raises(MessengerError, match="row title"):
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", list_message=long_title))


async def test_fake_refuses_a_list_over_limits_with_131009(fake: FakeWhatsApp, http: httpx.AsyncClient) -> None:
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    rows = [{"id": f"r{i}", "title": "t"} for i in range(6)]
    sections = [{"title": "a", "rows": rows}, {"title": "b", "rows": [{**r, "id": r["id"] + "b"} for r in rows]}]
    body = {
        "messaging_product": "whatsapp",
        "to": "4915100000001",
        "type": "interactive",
        "interactive": {"type": "list", "body": {"text": "x"}, "action": {"button": "Open", "sections": sections}},
    }
    answer = await http.post(
        "http://graph.test/v23.0/1000000001/messages", json=body, headers={"Authorization": "Bearer token-one"}
    )
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == 131009 and "12" in error["error_data"]["details"]
    assert error["fbtrace_id"] and error["type"] == "OAuthException"


async def test_buttons_with_the_same_text_fail_before_sending(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    twins = ((Button(text="Yes", callback_data="yes-now"), Button(text="Yes", callback_data="yes-later")),)
    with pytest.raises(MessengerError, match="two buttons have the same text 'Yes'") as caught:
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="Sure?", buttons=twins))
    assert caught.value.reason == "other" and not caught.value.retryable
    assert fake.sent_to(anna) == []


async def test_fake_refuses_reply_buttons_with_the_same_title(fake: FakeWhatsApp, http: httpx.AsyncClient) -> None:
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    buttons = [{"type": "reply", "reply": {"id": f"id{i}", "title": "Yes"}} for i in range(2)]
    body = {
        "messaging_product": "whatsapp",
        "to": "4915100000001",
        "type": "interactive",
        "interactive": {"type": "button", "body": {"text": "Sure?"}, "action": {"buttons": buttons}},
    }
    answer = await http.post(
        "http://graph.test/v23.0/1000000001/messages", json=body, headers={"Authorization": "Bearer token-one"}
    )
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == 131009
    assert error["message"] == "(#131009) Parameter value is not valid"
    assert error["error_data"]["details"] == "Buttons titles must be unique"
    assert fake.sent_to(anna) == []


async def test_media_by_link_and_upload_fallback(make_adapter: Make, fake: FakeWhatsApp, files: Files) -> None:
    fake.media_link_errors = "sync"
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    photo = Attachment(kind="picture", url="http://files.test/cat.jpg", file_name="cat.jpg")
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="a cat", attachments=(photo,)))
    assert fake.sent[result.message_ids[0]].body["image"] == {"link": "http://files.test/cat.jpg", "caption": "a cat"}
    files.hidden.add("/report.pdf")
    doc = Attachment(kind="file", url="http://files.test/report.pdf", file_name="report.pdf")
    uploaded = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", attachments=(doc,)))
    body = fake.sent[uploaded.message_ids[0]].body["document"]
    assert set(body) == {"id", "filename"} and fake.media[body["id"]].content == b"%PDF-1.4 pdf bytes"
    voice = Attachment(kind="voice", url="http://files.test/note.ogg")
    both = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="listen", attachments=(voice,)))
    assert [fake.sent[m].type for m in both.message_ids] == ["audio", "text"]


async def test_templates_from_external_id(make_adapter: Make, fake: FakeWhatsApp) -> None:
    fake.add_template("order_ready", "ru", body="Заказ {{1}} готов, {{2}}")
    rig = make_adapter(default_language="ru")
    fake.add_user("4915100000001")
    template = Template(
        id="7",
        content="Заказ {{order}} готов, {{name}}",
        external_id="order_ready",
        params=(TemplateParam(key="{{name}}", value="Анна"), TemplateParam(key="{{order}}", value="42")),
    )
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=template))
    body = fake.sent[result.message_ids[0]].body["template"]
    assert body["name"] == "order_ready" and body["language"] == {"code": "ru"}
    assert body["components"][0]["parameters"] == [{"type": "text", "text": "42"}, {"type": "text", "text": "Анна"}]
    wrong = msgspec.structs.replace(template, external_id="order_ready:en_US")
    with pytest.raises(MessengerError, match="132001") as caught:
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=wrong))
    assert caught.value.code == 132001
    short = msgspec.structs.replace(
        template, content="Заказ {{order}}", params=(TemplateParam(key="order", value="1"),)
    )
    with pytest.raises(MessengerError, match="132000"):
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=short))
    nameless = msgspec.structs.replace(template, external_id=None)
    with pytest.raises(MessengerError, match="external_id"):
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=nameless))


async def test_named_templates_go_with_parameter_names(make_adapter: Make, fake: FakeWhatsApp) -> None:
    fake.add_template(
        "order_named",
        "en_US",
        components=[
            {"type": "HEADER", "format": "TEXT", "text": "Hi {{first_name}}"},
            {"type": "BODY", "text": "Order {{order_id}} is ready, {{first_name}}"},
        ],
    )
    fake.add_template("order_positional", "en_US", body="Order {{1}} is ready, {{2}}")
    rig = make_adapter()
    fake.add_user("4915100000001")
    params = (TemplateParam(key="{{order_id}}", value="42"), TemplateParam(key="{{first_name}}", value="Anna"))
    named = Template(
        id="8", content="Order {{order_id}} is ready, {{first_name}}", external_id="order_named:en_US", params=params
    )
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=named))
    header, body = fake.sent[result.message_ids[0]].body["template"]["components"]
    assert header["parameters"] == [{"type": "text", "parameter_name": "first_name", "text": "Anna"}]
    assert body["parameters"] == [
        {"type": "text", "parameter_name": "order_id", "text": "42"},
        {"type": "text", "parameter_name": "first_name", "text": "Anna"},
    ]
    positional = msgspec.structs.replace(named, external_id="order_positional:en_US")
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=positional))
    (body,) = fake.sent[result.message_ids[0]].body["template"]["components"]
    assert body["parameters"] == [{"type": "text", "text": "42"}, {"type": "text", "text": "Anna"}]
    lookups = [c for c in fake.calls if c.path.endswith("/message_templates")]
    await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=named))
    assert [c for c in fake.calls if c.path.endswith("/message_templates")] == lookups, "Meta's answer is kept"
    unnamed = msgspec.structs.replace(named, id="9", params=params[:1])
    with pytest.raises(MessengerError, match=r"template 9 has no value for \{\{first_name\}\}"):
        await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=unnamed))


async def test_template_list_unreadable_sends_by_position_and_says_so(make_adapter: Make, fake: FakeWhatsApp) -> None:
    fake.add_template("order_positional", "en_US", body="Order {{1}}")
    rig = make_adapter()
    fake.add_user("4915100000001")
    template = Template(
        id="1",
        content="Order {{order}}",
        external_id="order_positional:en_US",
        params=(TemplateParam(key="order", value="7"),),
    )
    fake.fail_next(10, status=403, message="Application does not have permission for this action")
    with capture_logs() as logs:
        result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", template=template))
    (body,) = fake.sent[result.message_ids[0]].body["template"]["components"]
    assert body["parameters"] == [{"type": "text", "text": "7"}]
    assert any("template list could not be read" in entry["event"] for entry in logs)
    fake.fail_next(131000, status=500)  # Meta is down: the send waits for the relay's next attempt
    with pytest.raises(MessengerError) as down:
        await rig.adapter.catalog.record("order_other", "en_US")
    assert down.value.retryable


async def test_fake_refuses_a_named_template_sent_by_position(fake: FakeWhatsApp, http: httpx.AsyncClient) -> None:
    fake.add_template("greeting", "en_US", body="Hello {{first_name}}")
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    template: dict[str, Any] = {"name": "greeting", "language": {"code": "en_US"}}
    body = {"messaging_product": "whatsapp", "to": "4915100000001", "type": "template", "template": template}
    url, auth = "http://graph.test/v23.0/1000000001/messages", {"Authorization": "Bearer token-one"}
    template["components"] = [{"type": "body", "parameters": [{"type": "text", "text": "Anna"}]}]
    answer = await http.post(url, json=body, headers=auth)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"], error["message"]) == (400, 100, "(#100) Invalid parameter")
    assert error["error_data"]["details"] == "Parameter name is missing or empty"
    named = {"type": "text", "parameter_name": "first_name", "text": "Anna"}
    template["components"] = [{"type": "body", "parameters": [named]}]
    assert (await http.post(url, json=body, headers=auth)).status_code == 200
    listed = await http.get(
        "http://graph.test/v23.0/2000000001/message_templates", params={"name": "greeting"}, headers=auth
    )
    assert listed.json()["data"][0]["parameter_format"] == "NAMED"


async def test_write_first_returns_the_wa_id(make_adapter: Make, fake: FakeWhatsApp) -> None:
    fake.add_template("hello", "en_US", body="Hello!")
    rig = make_adapter()
    bob = fake.add_user("4915100000007")
    template = Template(id="1", content="Hello!", external_id="hello:en_US")
    result = await rig.adapter.send_message(
        OutgoingMessage(phone="+49 151 00000007".replace(" ", ""), template=template)
    )
    assert result.chat == "4915100000007" and fake.sent_to(bob)[0].type == "template"


async def test_errors_map_to_reasons(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    message = OutgoingMessage(chat="4915100000001", text="x")
    fake.fail_next(131056)
    with pytest.raises(RateLimited) as rate:
        await rig.adapter.send_message(message)
    assert rate.value.retry_after == 6.0
    fake.fail_next(4, status=429, retry_after=2)
    with pytest.raises(RateLimited) as storm:
        await rig.adapter.send_message(message)
    assert storm.value.retry_after == 2.0
    fake.fail_next(131000, status=500)
    with pytest.raises(MessengerError) as server:
        await rig.adapter.send_message(message)
    assert server.value.retryable
    fake.fail_next(131047)
    with pytest.raises(WindowClosed, match="24-hour window closed, send a template"):
        await rig.adapter.send_message(message)
    fake.fail_next(131026)
    with pytest.raises(MessengerError) as gone:
        await rig.adapter.send_message(message)
    assert gone.value.reason == "no_chat"
    fake.fail_next(190, status=401)
    with pytest.raises(MessengerError) as token:
        await rig.adapter.send_message(message)
    assert token.value.reason == "disabled" and not token.value.retryable
    fake.numbers["1000000001"].registered = False
    with pytest.raises(MessengerError, match="133010") as unregistered:
        await rig.adapter.send_message(message)
    assert unregistered.value.reason == "disabled"


async def test_late_failures_arrive_as_statuses(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    stranger = fake.add_user("4915100000005")
    async with fake.running():
        result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000005", text="hi"))
        await rig.adapter.send_message(OutgoingMessage(chat="4915199999999", text="nobody"))
        statuses = await eventually(
            lambda: [e for e in rig.events if isinstance(e, InboundStatus)] if len(rig.events) >= 2 else None
        )
    window = next(s for s in statuses if s.message_id == result.message_ids[0])
    assert window.status == "failed" and window.reason == "window_closed" and window.error_code == "131047"
    assert window.error == "24-hour window closed, send a template"
    nobody = next(s for s in statuses if s.message_id != result.message_ids[0])
    assert nobody.reason == "no_chat" and nobody.error_code == "131026"
    assert fake.sent_to(stranger)[0].statuses == ["failed"]


async def test_statuses_duplicates_and_order(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="yo"))
    wamid = result.message_ids[0]
    fake.hold()
    for status in ("sent", "delivered", "read"):
        await fake.deliver_status(wamid, status)
    await fake.release(shuffle=True, duplicate=True)
    statuses = [e for e in rig.events if isinstance(e, InboundStatus)]
    assert len(statuses) == 6
    assert {s.dedup_key for s in statuses} == {f"status:{wamid}:{s}" for s in ("sent", "delivered", "read")}


async def test_throttled_after_acceptance_is_sent_again(make_adapter: Make, fake: FakeWhatsApp) -> None:
    rig = make_adapter()
    rig.adapter.resend_pauses = (0.01, 0.01)
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "hi")
    async with running(rig.adapter):
        result = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="again"))
        first = result.message_ids[0]
        await fake.deliver_status(first, "failed", error_code=131056)
        await eventually(lambda: len(fake.sent_to(anna)) == 2)
        second = fake.sent_to(anna)[1].wamid
        await fake.deliver_status(second, "delivered")
        await eventually(lambda: any(isinstance(e, InboundStatus) and e.status == "delivered" for e in rig.events))
        assert not any(isinstance(e, InboundStatus) and e.status == "failed" for e in rig.events)
        delivered = next(e for e in rig.events if isinstance(e, InboundStatus) and e.status == "delivered")
        assert delivered.message_id == first  # the core knows the first id
        other = await rig.adapter.send_message(OutgoingMessage(chat="4915100000001", text="twice"))
        fake.fail_next(131056, count=5)
        await fake.deliver_status(other.message_ids[0], "failed", error_code=130429)
        failed = await eventually(lambda: [e for e in rig.submitted if isinstance(e, InboundStatus)])
    assert failed[0].status == "failed" and failed[0].reason == "rate_limited"


async def test_events_of_other_numbers_are_left_out(make_adapter: Make, fake: FakeWhatsApp) -> None:
    other = fake.add_number("1000000009", waba_id="2000000001", token="token-nine")
    rig = make_adapter()
    fake.set_webhook(PUBLIC, phone_number_id=other.phone_number_id)
    anna = fake.add_user("4915100000001")
    await fake.client_writes(anna, "to the other number", to=other.phone_number_id)
    assert rig.events == []
