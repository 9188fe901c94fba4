"""Pure logic: settings, error mapping, planning sends, parsing webhooks, and pywa's reading of the fake."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from amoconnect.adapter import validate_adapter
from amoconnect.errors import MessengerError, RateLimited, WebhookError, WindowClosed
from amoconnect.model import (
    Attachment,
    Button,
    InboundEcho,
    InboundEdit,
    InboundMessage,
    InboundStatus,
    ListMessage,
    ListRow,
    ListSection,
    OutgoingMessage,
    Template,
    TemplateParam,
)
from amoconnect.plugins import collect_messengers, get_plugin_manager
from pywa.errors import ReEngagementMessage
from pywa.types import CallbackButton, CallbackSelection, Message, MessageStatus
from whatsapp_peer import check_request, check_webhook

from amoconnect_whatsapp.adapter import WhatsAppAdapter, WhatsAppSettings
from amoconnect_whatsapp.cloudapi import send_error, status_failure
from amoconnect_whatsapp.compose import TemplateRef, plan_message, split_text, template_ref
from amoconnect_whatsapp.webhooks import GraphError, check_signature, decode, handshake, parse

BASE = {"phone_number_id": "1", "waba_id": "2", "token": "t", "app_secret": "s", "verify_token": "v"}


def test_adapter_declarations_are_valid_and_the_entry_point_loads() -> None:
    validate_adapter(WhatsAppAdapter)
    messengers = collect_messengers(get_plugin_manager(only="whatsapp"))
    assert messengers["whatsapp"] is WhatsAppAdapter
    assert WhatsAppAdapter.reply_window == 86400
    assert WhatsAppAdapter.amocrm_service == "whatsapp"
    assert WhatsAppAdapter.error_reasons["131026"] == "no_chat"
    assert {r.path for r in WhatsAppAdapter.routes} == {"", "template-review"}


def test_buttons_must_differ_in_text_and_data() -> None:
    same_text = ((Button(text="Yes", callback_data="a"), Button(text="Yes", callback_data="b")),)
    with pytest.raises(MessengerError, match="same text 'Yes'"):
        plan_message(OutgoingMessage(chat="4915100000001", text="?", buttons=same_text))
    many = tuple((Button(text="Same", callback_data=f"d{i}"),) for i in range(5))  # as list rows too
    with pytest.raises(MessengerError, match="same text 'Same'"):
        plan_message(OutgoingMessage(chat="4915100000001", text="?", buttons=many))
    same_data = ((Button(text="Yes", callback_data="x"), Button(text="No", callback_data="x")),)
    with pytest.raises(MessengerError, match="same data 'x'"):
        plan_message(OutgoingMessage(chat="4915100000001", text="?", buttons=same_data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phone_number_id": "+15550001"}, "phone_number_id"),
        ({"token": ""}, "required"),
        ({"api_url": "graph.facebook.com"}, "api_url"),
        ({"messages_per_second": 2000}, "messages_per_second"),
        ({"list_button": "x" * 21}, "list_button"),
    ],
)
def test_settings_refuse_what_cannot_work(change: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({**BASE, **change}, WhatsAppSettings)


def test_signature_and_handshake() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    import hashlib
    import hmac

    good = "sha256=" + hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert check_signature("secret", body, good)
    assert check_signature("secret", body, good.upper().replace("SHA256=", "sha256="))
    assert not check_signature("secret", body + b" ", good)
    assert not check_signature("secret", body, None)
    assert not check_signature("secret", body, good[7:])
    ok = {"hub.mode": "subscribe", "hub.verify_token": "v", "hub.challenge": "123"}
    assert handshake(ok, "v") == (200, "123")
    assert handshake({**ok, "hub.verify_token": "x"}, "v")[0] == 403
    assert handshake({"hub.mode": "unsubscribe"}, "v")[0] == 400


def _envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": "1"},
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "2", "changes": [{"field": field, "value": value}]}],
    }


def _parse(payload: dict[str, Any]) -> list[Any]:
    return parse(decode(json.dumps(payload).encode()), "1", "2").events


def test_parse_batches_both_shapes_and_unknown_types() -> None:
    value = {
        "contacts": [
            {"profile": {"name": "A"}, "wa_id": "491"},
            {"profile": {"name": "B", "username": "bee"}, "user_id": "DE.9"},
        ],
        "messages": [
            {"from": "491", "id": "w1", "timestamp": "1700000000", "type": "text", "text": {"body": "hi"}},
            {
                "from_user_id": "DE.9",
                "id": "w2",
                "timestamp": "1700000001",
                "type": "order",
                "order": {"product_items": [1, 2]},
            },
            {
                "from": "491",
                "id": "w3",
                "timestamp": "1700000002",
                "type": "button",
                "button": {"payload": "P", "text": "Yes"},
            },
            {"from": "491", "id": "w4", "timestamp": "1700000003", "type": "request_welcome"},
        ],
    }
    events = _parse(_envelope(value))
    assert [e.chat for e in events] == ["491", "DE.9", "491", "491"]
    assert events[0].timestamp == 1700000000.0 and events[0].sender.name == "A"
    assert events[1].sender.username == "bee" and "order of 2 item(s)" in events[1].text
    assert events[2].callback_data == "P" and events[2].text == "Yes"
    assert "request_welcome" in events[3].text


def test_parse_business_app_echoes_new_edited_and_revoked() -> None:
    anna = {"profile": {"name": "Anna"}, "wa_id": "4915100000001", "user_id": "DE.1"}
    base = {"from": "1555", "to": "+49 151 00000001", "timestamp": "1700000000"}
    echoes = [
        {
            **base,
            "id": "wamid.A",
            "type": "image",
            "image": {"id": "m1", "mime_type": "image/jpeg", "sha256": "00", "caption": "A"},
        },
        {
            **base,
            "id": "wamid.B",
            "type": "edit",
            "edit": {"original_message_id": "wamid.A", "message": {"type": "text", "text": {"body": "B"}}},
        },
        {**base, "id": "wamid.C", "type": "revoke", "revoke": {"original_message_id": "wamid.A"}},
    ]
    new, edit = _parse(_envelope({"contacts": [anna], "message_echoes": echoes}, field="smb_message_echoes"))
    assert isinstance(new, InboundEcho)
    assert (new.chat, new.message_id, new.text, new.dedup_key) == ("4915100000001", "wamid.A", "A", "echo:wamid.A")
    assert (new.client.name, new.client.phone) == ("Anna", "+4915100000001")
    assert new.attachments[0].fetch == "m1"
    assert isinstance(edit, InboundEdit)
    assert (edit.message_id, edit.text, edit.sender.id) == ("wamid.A", "B", "1555")
    # Without contacts, the chat is the digits of "to".
    (bare,) = _parse(
        _envelope(
            {"message_echoes": [{**base, "id": "wamid.D", "type": "text", "text": {"body": "x"}}]},
            field="smb_message_echoes",
        )
    )
    assert bare.chat == "4915100000001"
    with pytest.raises(WebhookError, match="names no recipient"):
        _parse(_envelope({"message_echoes": [{"id": "wamid.E", "type": "text"}]}, field="smb_message_echoes"))
    # Another number's echoes are left out.
    other = _envelope({"message_echoes": echoes[:1]}, field="smb_message_echoes")
    other["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "9"
    assert _parse(other) == []
    for payload in (_envelope({"contacts": [anna], "message_echoes": [e]}, field="smb_message_echoes") for e in echoes):
        check_webhook(payload)  # pywa reads each the same way


def test_parse_statuses_map_errors() -> None:
    def failed(code: int) -> InboundStatus:
        item = {
            "id": "w",
            "status": "failed",
            "timestamp": "1",
            "recipient_id": "491",
            "errors": [{"code": code, "title": "T", "message": "M", "error_data": {"details": "D"}}],
        }
        (event,) = _parse(_envelope({"statuses": [item]}))
        assert isinstance(event, InboundStatus)
        return event

    assert (failed(131026).reason, failed(131047).reason) == ("no_chat", "window_closed")
    assert failed(131047).error == "24-hour window closed, send a template"
    older = failed(470)  # the older form of the 24-hour rule: the same case for the manager
    assert (older.reason, older.error_code) == ("window_closed", "470")
    assert older.error == "24-hour window closed, send a template"
    assert failed(132001).error.startswith("WhatsApp refused the template: T: D")
    assert (failed(131056).reason, failed(130429).reason) == ("rate_limited", "rate_limited")
    other = failed(131053)
    assert other.reason == "other" and other.error == "T: D (131053)" and other.error_code == "131053"
    (played,) = _parse(_envelope({"statuses": [{"id": "w", "status": "played", "recipient_id": "491"}]}))
    assert played.status == "read" and played.dedup_key == "status:w:played"
    assert _parse(_envelope({"statuses": [{"id": "w", "status": "deleted", "recipient_id": "491"}]})) == []


def test_parse_refuses_what_is_not_a_webhook_and_skips_other_fields() -> None:
    with pytest.raises(WebhookError):
        decode(b"not json")
    with pytest.raises(WebhookError):
        decode(b'{"object": "page"}')
    assert _parse(_envelope({"calls": []}, field="calls")) == []
    update = {
        "event": "APPROVED",
        "message_template_id": 5,
        "message_template_name": "n",
        "message_template_language": "en",
    }
    parsed = parse(decode(json.dumps(_envelope(update, "message_template_status_update")).encode()), "1", "2")
    assert parsed.templates[0].template_id == "5" and parsed.templates[0].event == "APPROVED"


def test_send_errors() -> None:
    def error(code: int, status: int = 400, **extra: Any) -> MessengerError:
        body = {"error": {"message": f"({code}) m", "type": "OAuthException", "code": code, "fbtrace_id": "x", **extra}}
        return send_error(status, json.dumps(body).encode())

    assert isinstance(error(131047), WindowClosed)
    assert isinstance(error(470), WindowClosed)
    assert error(470).description == error(131047).description == "24-hour window closed, send a template"
    rate = error(130429)
    assert isinstance(rate, RateLimited) and rate.retry_after == 1.0
    assert error(100, error_subcode=33).reason == "disabled"
    assert error(2, is_transient=True).retryable
    assert error(132000, error_data={"details": "expected 2"}).description.endswith("expected 2 (132000)")
    assert send_error(502, b"<html>bad gateway</html>").retryable
    assert not send_error(400, b"nope").retryable
    assert status_failure(None)[0] == "other"
    assert status_failure(GraphError(code=131026))[0] == "no_chat"


def test_split_text_keeps_everything() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 300 for i in range(10))
    pieces = split_text(text)
    assert all(len(p) <= 4096 for p in pieces) and len(pieces) > 1
    assert " ".join(" ".join(pieces).split()) == " ".join(text.split())
    assert split_text("x" * 5000) == ["x" * 4096, "x" * 904]


def test_plan_message_shapes() -> None:
    to_user = plan_message(OutgoingMessage(chat="DE.123", text="hello"))
    assert to_user[0].body["recipient"] == "DE.123" and "to" not in to_user[0].body
    doc = Attachment(kind="file", url="https://x.test/a.pdf", file_name="a.pdf")
    sticker = Attachment(kind="sticker", url="https://x.test/s.webp")
    parts = plan_message(
        OutgoingMessage(chat="4915100000001", text="caption", attachments=(doc, sticker), reply_to="w0")
    )
    assert [p.body["type"] for p in parts] == ["document", "sticker"]
    assert parts[0].body["document"] == {"link": "https://x.test/a.pdf", "caption": "caption", "filename": "a.pdf"}
    assert parts[0].body["context"] == {"message_id": "w0"} and "context" not in parts[1].body
    long_caption = plan_message(OutgoingMessage(chat="4915100000001", text="c" * 2000, attachments=(doc,)))
    assert [p.body["type"] for p in long_caption] == ["document", "text"]
    with pytest.raises(MessengerError, match="nothing to send"):
        plan_message(OutgoingMessage(chat="4915100000001"))
    for part in [*parts, *long_caption]:
        check_request(part.body)


def test_buttons_over_the_list_limit_and_long_titles() -> None:
    long = ((Button(text="A very long answer that is over twenty", callback_data="long"),),)
    (part,) = plan_message(OutgoingMessage(chat="4915100000001", text="?", buttons=long))
    row = part.body["interactive"]["action"]["sections"][0]["rows"][0]
    assert row["title"].endswith("…") and len(row["title"]) == 24 and row["description"].startswith("A very long")
    check_request(part.body)
    eleven = tuple((Button(text=f"b{i}", callback_data=f"b{i}"),) for i in range(11))
    with pytest.raises(MessengerError, match="11 buttons"):
        plan_message(OutgoingMessage(chat="4915100000001", text="?", buttons=eleven))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"button": "x" * 21}, "the button"),
        ({"header": "h" * 61}, "the header"),
        ({"body": ""}, "body text is empty"),
        ({"sections": ()}, "0 sections"),
        ({"sections": (ListSection(title="", rows=(ListRow(callback_data="a", title="a"),)),) * 2}, "needs a title"),
        (
            {
                "sections": (
                    ListSection(title="s", rows=(ListRow(callback_data="a", title="a", description="d" * 73),)),
                )
            },
            "row description",
        ),
        ({"sections": (ListSection(title="s", rows=(ListRow(callback_data="a", title="a"),) * 2),)}, "share the data"),
    ],
)
def test_list_limits(change: dict[str, Any], message: str) -> None:
    lm = ListMessage(
        body="b", button="Open", sections=(ListSection(title="s", rows=(ListRow(callback_data="a", title="a"),)),)
    )
    with pytest.raises(MessengerError, match=message):
        plan_message(OutgoingMessage(chat="4915100000001", list_message=msgspec.structs.replace(lm, **change)))


def test_template_names_and_parameters() -> None:
    template = Template(
        id="3",
        content="{{b}} then {{a}} then {{b}}",
        external_id="promo:de",
        params=(TemplateParam(key="{{a}}", value="A"), TemplateParam(key="b", value="B")),
    )
    ref = template_ref(template, "en_US")
    assert ref == TemplateRef("promo", "de", ("b", "a"))
    (part,) = plan_message(OutgoingMessage(chat="4915100000001", template=template), template=ref)
    assert part.body["template"] == {
        "name": "promo",
        "language": {"code": "de"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "B"}, {"type": "text", "text": "A"}]}],
    }
    check_request(part.body)
    assert template_ref(msgspec.structs.replace(template, external_id="promo"), "ru").language == "ru"
    with pytest.raises(MessengerError, match="not 'name:language'"):
        template_ref(msgspec.structs.replace(template, external_id="Promo Code"), "en")
    known = TemplateRef("made_by_review", "en_US", ("a",), ("b",))
    assert template_ref(msgspec.structs.replace(template, external_id=None), "en", known) is known
    missing = msgspec.structs.replace(template, params=())
    with pytest.raises(MessengerError, match="no value for"):
        plan_message(OutgoingMessage(chat="4915100000001", template=missing), template=ref)


def test_pywa_reads_what_the_fake_sends_as_meta_does() -> None:
    """pywa's own types for the kinds that matter, built from webhooks in the fake's shapes."""
    contact = {"profile": {"name": "A"}, "wa_id": "491", "user_id": "DE.1"}
    base = {"from": "491", "from_user_id": "DE.1", "timestamp": "1700000000"}
    context = {"from": "1555", "id": "wamid.list"}
    list_reply = {
        **base,
        "id": "w1",
        "type": "interactive",
        "context": context,
        "interactive": {"type": "list_reply", "list_reply": {"id": "tea", "title": "Tea"}},
    }
    (selection,) = check_webhook(_envelope({"contacts": [contact], "messages": [list_reply]}))
    assert isinstance(selection, CallbackSelection) and selection.data == "tea"
    button = {**base, "id": "w2", "type": "button", "context": context, "button": {"payload": "P", "text": "Yes"}}
    (pressed,) = check_webhook(_envelope({"contacts": [contact], "messages": [button]}))
    assert isinstance(pressed, CallbackButton) and pressed.data == "P"
    reaction = {**base, "id": "w3", "type": "reaction", "reaction": {"message_id": "wamid.x", "emoji": "👍"}}
    (reacted,) = check_webhook(_envelope({"contacts": [contact], "messages": [reaction]}))
    assert isinstance(reacted, Message) and reacted.reaction is not None and reacted.reaction.emoji == "👍"
    status = {
        "id": "w",
        "status": "failed",
        "timestamp": "1",
        "recipient_id": "491",
        "recipient_user_id": "DE.1",
        "errors": [{"code": 131047, "title": "Re-engagement message", "message": "x", "error_data": {"details": "d"}}],
    }
    (failed,) = check_webhook(_envelope({"contacts": [contact], "statuses": [status]}))
    assert isinstance(failed, MessageStatus) and isinstance(failed.error, ReEngagementMessage)
    ours = _parse(_envelope({"contacts": [contact], "messages": [list_reply]}))
    assert isinstance(ours[0], InboundMessage) and ours[0].callback_data == "tea"
