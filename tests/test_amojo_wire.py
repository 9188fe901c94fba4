from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

import amoconnect.amojo as amojo_pkg
from amoconnect.amojo import wire
from amoconnect.amojo.wire import (
    Button,
    ChatUser,
    ChatUserInfo,
    ConnectRequest,
    ConnectResponse,
    Contact,
    Conversation,
    CreateChatRequest,
    CreateChatResponse,
    DeliveryStatusCode,
    DeliveryStatusRequest,
    DisconnectRequest,
    EditDeliveryStatus,
    EmbeddedMessage,
    EmbeddedSender,
    ErrorCode,
    Forwards,
    HistoryMessage,
    HistoryMessageBody,
    HistoryParticipant,
    HistoryResponse,
    HookMessage,
    HookMessageBody,
    HookPost,
    HookReceiver,
    HookSender,
    ListMessage,
    ListRow,
    ListSection,
    Location,
    Markup,
    MessageContent,
    MessageEvent,
    MessageHook,
    MessagePayload,
    Participant,
    Post,
    Profile,
    ReactionAction,
    ReactionHook,
    ReactionHookAction,
    ReactionMessageRef,
    ReactRequest,
    ReactUser,
    ReplyTo,
    SendMessageResponse,
    SentMessage,
    SharedPost,
    Source,
    Template,
    TemplateParam,
    TypingAction,
    TypingHook,
    TypingHookAction,
    TypingRequest,
    UserRef,
    decode,
    encode,
    parse_webhook,
)
from amoconnect.errors import WebhookError
from amoconnect.signing import verify_signature

SECRET = "0123456789abcdef0123456789abcdef01234567"
SPEC_HOOK = (
    b'{"account_id":"52e591f7-c98f-4255-8495-827210138c81","time":1639572261,"message":{"conversation":'
    b'{"id":"8e4d4baa","client_id":"tg-100200300"},"sender":{"id":"76fc2bea"},"receiver":{"id":"2ed64e26",'
    b'"client_id":"tg-user-42"},"timestamp":1639572260,"msec_timestamp":1639572260980,"message":'
    b'{"id":"0371a0ff","type":"text","text":"Hello"}}}'
)
SPEC_TYPING_BODY = b'{"conversation_id":"tg-100200300","sender":{"id":"tg-user-42"}}'


def _payload(**overrides: Any) -> MessagePayload:
    fields: dict[str, Any] = {
        "timestamp": 1639572260,
        "msec_timestamp": 1639572260980,
        "msgid": "tg-1-77",
        "conversation_id": "tg-100200300",
        "sender": Participant(id="tg-user-42", name="Ann", profile=Profile(phone="+79990000000")),
        "message": MessageContent(type="text", text="Hi"),
    }
    fields.update(overrides)
    return MessagePayload(**fields)


EMBEDDED = EmbeddedMessage(
    type="text", text="quoted", timestamp=1, msec_timestamp=1000, sender=EmbeddedSender(id="tg-user-42")
)

REQUESTS_AND_RESPONSES: list[msgspec.Struct] = [
    ConnectRequest(account_id="acc", title="Shop", is_time_window_disabled=True),
    ConnectRequest(account_id="acc"),
    ConnectResponse(account_id="acc", scope_id="ch_acc", hook_api_version="v2", title="Shop"),
    DisconnectRequest(account_id="acc"),
    CreateChatRequest(
        conversation_id="c1",
        source=Source(external_id="wa-1"),
        user=ChatUser(
            id="u1",
            name="Ann",
            avatar="https://x/a.png",
            profile=Profile(phone="+7999", email="a@b.c"),
            profile_link="https://t.me/ann",
        ),
    ),
    CreateChatResponse(
        id="chat-uuid",
        user=ChatUserInfo(id="user-uuid", client_id="u1", name="Ann", avatar="", phone="+7999", email="a@b.c"),
    ),
    MessageEvent(event_type="new_message", payload=_payload()),
    MessageEvent(
        event_type="new_message",
        payload=_payload(
            silent=False,
            source=Source(external_id="wa-1"),
            conversation_ref_id="amo-chat",
            receiver=Participant(id="tg-user-42"),
            message=MessageContent(
                type="picture", media="https://files/p.jpg", file_name="p.jpg", file_size=10, text="caption"
            ),
            reply_to=ReplyTo(message=EMBEDDED),
            forwards=Forwards(messages=[EmbeddedMessage(msgid="tg-1-1")], conversation_id="c0"),
        ),
    ),
    MessageEvent(
        event_type="edit_message",
        payload=_payload(
            id="amo-msg",
            message=MessageContent(
                type="text",
                text="Hi",
                delivery_status=EditDeliveryStatus(delivery_status=-1, error_code=905, error="boom"),
            ),
        ),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(message=MessageContent(type="location", location=Location(lon=37.6, lat=55.7))),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(message=MessageContent(type="contact", contact=Contact(name="Bob", phone="+1"))),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(message=MessageContent(type="sticker", media="https://s/1.webp", sticker_id="st1")),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(message=MessageContent(type="voice", media="https://v/1.ogg", media_duration=4)),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(message=MessageContent(type="text", text="Option 2", callback_data="row-2")),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(
            message=MessageContent(type="text", text="look", shared_post=SharedPost(url="https://p/1", site_name="P"))
        ),
    ),
    MessageEvent(
        event_type="new_message",
        payload=_payload(
            message=MessageContent(
                type="text", text="nice post", post=Post(id="post-1", url="https://ig/p/1", username="shop")
            )
        ),
    ),
    SendMessageResponse(
        new_message=SentMessage(
            conversation_id="amo-chat", sender_id="s", receiver_id="r", msgid="amo-msg", ref_id="tg-1-77"
        )
    ),
    DeliveryStatusRequest(msgid="amo-msg", delivery_status=DeliveryStatusCode.READ),
    DeliveryStatusRequest(msgid="amo-msg", delivery_status=-1, error_code=ErrorCode.OTHER, error="no route"),
    HistoryResponse(
        messages=[
            HistoryMessage(
                timestamp=1,
                sender=HistoryParticipant(id="a", client_id="u1", name="Ann"),
                receiver=HistoryParticipant(id="b"),
                message=HistoryMessageBody(id="m1", type="text", text="Hi"),
            )
        ]
    ),
    TypingRequest(conversation_id="c1", sender=UserRef(id="u1"), duration_ms=3000),
    ReactRequest(conversation_id="c1", msgid="m1", user=ReactUser(id="u1"), type="react", emoji="👍"),
    ReactRequest(conversation_ref_id="amo-chat", id="amo-msg", user=ReactUser(id="u1", ref_id="r"), type="unreact"),
]


@pytest.mark.parametrize("model", REQUESTS_AND_RESPONSES, ids=lambda m: type(m).__name__)
def test_round_trip(model: msgspec.Struct) -> None:
    data = encode(model)
    assert decode(data, type(model)) == model


@pytest.mark.parametrize("model", REQUESTS_AND_RESPONSES, ids=lambda m: type(m).__name__)
def test_no_nulls_in_encoded_requests(model: msgspec.Struct) -> None:
    assert b"null" not in encode(model)


def test_encode_is_compact_and_omits_defaults() -> None:
    assert encode(TypingRequest(conversation_id="tg-100200300", sender=UserRef(id="tg-user-42"))) == SPEC_TYPING_BODY
    assert encode(ConnectRequest(account_id="acc")) == b'{"account_id":"acc","hook_api_version":"v2"}'


def test_silent_false_is_sent() -> None:
    body = json.loads(encode(MessageEvent(event_type="new_message", payload=_payload(silent=False))))
    assert body["payload"]["silent"] is False
    assert "receiver" not in body["payload"]


def test_delivery_status_uses_ascii_names() -> None:
    body = encode(DeliveryStatusRequest(msgid="m", delivery_status=-1, error_code=901))
    assert body == b'{"msgid":"m","delivery_status":-1,"error_code":901}'
    assert body.isascii()


def test_unknown_fields_are_ignored() -> None:
    data = b'{"new_message":{"msgid":"m","ref_id":"r","extra":1,"conversation_id":"c"},"more":{"x":[1]}}'
    assert decode(data, SendMessageResponse).new_message.msgid == "m"


@pytest.mark.parametrize(
    ("data", "model", "path"),
    [
        (b'{"new_message":{"msgid":5}}', SendMessageResponse, "$.new_message.msgid"),
        (b'{"id":"c","user":{"id":null}}', CreateChatResponse, "$.user.id"),
        (b'{"messages":[{"message":{"id":1}}]}', HistoryResponse, "$.messages[0].message.id"),
        (b'{"event_type":"new_message","payload":{}}', MessageEvent, "$.payload"),
        (b'{"event_type":"delete","payload":{}}', MessageEvent, "$.event_type"),
    ],
)
def test_wrong_types_are_refused(data: bytes, model: type[Any], path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$").replace("[", r"\[")):
        decode(data, model)


def test_message_type_must_be_known() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.type"):
        decode(b'{"type":"hologram"}', MessageContent)


def test_forwards_carry_at_most_one_message() -> None:
    with pytest.raises(msgspec.ValidationError, match="length <= 1"):
        decode(b'{"messages":[{"id":"a"},{"id":"b"}]}', Forwards)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"msgid": "m", "user": ReactUser(id="u"), "type": "react", "emoji": "x"}, "conversation_id"),
        ({"conversation_id": "c", "user": ReactUser(id="u"), "type": "react", "emoji": "x"}, "msgid or id"),
        ({"conversation_id": "c", "msgid": "m", "user": ReactUser(id="u"), "type": "react"}, "emoji"),
    ],
)
def test_react_request_needs_chat_message_and_emoji(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ReactRequest(**kwargs)
    with pytest.raises(msgspec.ValidationError, match=problem):
        decode(json.dumps({**kwargs, "user": {"id": "u"}}), ReactRequest)


def test_delivery_status_values_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="delivery_status"):
        decode(b'{"msgid":"m","delivery_status":3}', DeliveryStatusRequest)
    with pytest.raises(ValueError, match="905"):
        DeliveryStatusRequest(msgid="m", delivery_status=-1, error_code=905)


def test_public_api_is_reexported() -> None:
    assert set(amojo_pkg.__all__) == set(wire.__all__)
    for name in wire.__all__:
        assert getattr(amojo_pkg, name) is getattr(wire, name)
    defined = {
        name
        for name, value in vars(wire).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == wire.__name__
    }
    assert defined <= set(wire.__all__)


# -- webhooks --------------------------------------------------------------------------------------


def _hook(message: dict[str, Any] | None = None, **top: Any) -> bytes:
    body: dict[str, Any] = {"account_id": "acc-uuid", "time": 1700000000}
    inner: dict[str, Any] = {
        "conversation": {"id": "amo-chat", "client_id": "tg-100"},
        "sender": {"id": "manager-uuid", "name": "Manager"},
        "receiver": {"id": "client-uuid", "client_id": "tg-user-42", "name": "Ann"},
        "timestamp": 1699999999,
        "msec_timestamp": 1699999999123,
        "message": {"id": "amo-msg", "type": "text", "text": "Hello"},
    }
    for key, value in (message or {}).items():
        if key == "message":
            inner["message"] = {**inner["message"], **value}
        else:
            inner[key] = value
    body["message"] = inner
    body.update(top)
    return json.dumps(body).encode()


def _message_hook(body: bytes) -> MessageHook:
    hook = parse_webhook(body)
    assert isinstance(hook, MessageHook)
    return hook


def test_spec_example_hook_parses_and_verifies() -> None:
    assert verify_signature(SECRET, SPEC_HOOK, "e4ee2370f5f76496e9a589cee24182cfc99d8373")
    hook = _message_hook(SPEC_HOOK)
    assert hook.account_id == "52e591f7-c98f-4255-8495-827210138c81"
    assert hook.time == 1639572261
    assert hook.amocrm_message_id == "0371a0ff"
    assert hook.conversation_id == "tg-100200300"
    assert hook.message.receiver.client_id == "tg-user-42"
    assert hook.message.message.text == "Hello"
    assert hook.message.msec_timestamp == 1639572260980
    assert not hook.is_write_first
    assert not hook.is_comment_reply


def test_text_hook() -> None:
    hook = _message_hook(_hook())
    assert hook.message.sender == HookSender(id="manager-uuid", name="Manager")
    assert hook.message.message.type == "text"
    assert hook.message.source is None


def test_media_hook() -> None:
    hook = _message_hook(
        _hook(
            {
                "message": {
                    "type": "picture",
                    "text": "",
                    "media": "https://amojo/files/p.jpg",
                    "thumbnail": "https://amojo/files/p_t.jpg",
                    "file_name": "p.jpg",
                    "file_size": 1234,
                    "tag": "",
                }
            }
        )
    )
    body = hook.message.message
    assert (body.type, body.media, body.file_name, body.file_size) == (
        "picture",
        "https://amojo/files/p.jpg",
        "p.jpg",
        1234,
    )
    assert body.thumbnail == "https://amojo/files/p_t.jpg"


def test_media_group_hook() -> None:
    hooks = [_message_hook(_hook({"message": {"id": f"m{i}", "type": "file", "media_group_id": "g1"}})) for i in (1, 2)]
    assert {h.message.message.media_group_id for h in hooks} == {"g1"}


def test_inline_buttons_markup() -> None:
    markup = {"mode": "inline", "buttons": [[{"text": "Site", "url": "https://x"}, {"text": "Call me"}]]}
    hook = _message_hook(_hook({"message": {"markup": markup}}))
    assert hook.message.message.markup == Markup(
        mode="inline", buttons=[[Button(text="Site", url="https://x"), Button(text="Call me")]]
    )


def test_list_message_markup() -> None:
    list_message = {
        "header": "Menu",
        "body": "Pick one",
        "footer": "Thanks",
        "button": "Options",
        "sections": [
            {"title": "Pizza", "rows": [{"callback_data": "p1", "title": "Margherita", "description": "cheese"}]}
        ],
    }
    hook = _message_hook(_hook({"message": {"markup": {"list_message": list_message}}}))
    markup = hook.message.message.markup
    assert markup is not None
    assert markup.list_message == ListMessage(
        header="Menu",
        body="Pick one",
        footer="Thanks",
        button="Options",
        sections=[
            ListSection(title="Pizza", rows=[ListRow(callback_data="p1", title="Margherita", description="cheese")])
        ],
    )


def test_template_hook() -> None:
    template = {
        "id": 42,
        "external_id": "order_ready",
        "content": "Order {{order}} is ready",
        "params": [{"key": "{{order}}", "value": "A-7"}],
    }
    hook = _message_hook(_hook({"message": {"template": template}}))
    assert hook.message.message.template == Template(
        id=42,
        external_id="order_ready",
        content="Order {{order}} is ready",
        params=[TemplateParam(key="{{order}}", value="A-7")],
    )


def test_reply_to_and_forwards_hook() -> None:
    quoted = {
        "id": "amo-old",
        "client_id": "tg-1-5",
        "type": "text",
        "text": "Earlier",
        "timestamp": 1,
        "sender": {"id": "x"},
    }
    forwards = {"messages": [{"id": "amo-f", "type": "text", "text": "fwd"}], "conversation": {"id": "other-chat"}}
    hook = _message_hook(_hook({"message": {"reply_to": {"message": quoted}, "forwards": forwards}}))
    reply_to = hook.message.message.reply_to
    assert reply_to is not None
    assert reply_to.message.client_id == "tg-1-5"
    assert reply_to.message.sender == EmbeddedSender(id="x")
    fwd = hook.message.message.forwards
    assert fwd is not None
    assert fwd.messages[0].id == "amo-f"
    assert fwd.conversation == Conversation(id="other-chat")


def test_source_hook() -> None:
    hook = _message_hook(_hook({"source": {"external_id": "wa-79990000000"}}))
    assert hook.message.source == Source(external_id="wa-79990000000")


def test_comment_reply_hook() -> None:
    hook = _message_hook(_hook({"message": {"post": {"id": "post-1"}}}))
    assert hook.is_comment_reply
    assert hook.message.message.post == HookPost(id="post-1")


def test_write_first_hook() -> None:
    hook = _message_hook(
        _hook(
            {
                "conversation": {"id": "amo-chat-new"},
                "receiver": {"id": "client-uuid", "phone": "+79990000000"},
                "source": {"external_id": "wa-1"},
            }
        )
    )
    assert hook.is_write_first
    assert hook.conversation_id is None
    assert hook.message.receiver.phone == "+79990000000"
    assert hook.message.receiver.client_id is None


def test_typing_hook() -> None:
    body = {
        "account_id": "acc",
        "time": 1700000000,
        "action": {
            "typing": {
                "user": {"id": "manager"},
                "conversation": {"id": "amo-chat", "client_id": "tg-100"},
                "expired_at": 1700000005,
                "post_id": "post-1",
            }
        },
    }
    hook = parse_webhook(json.dumps(body))
    assert isinstance(hook, TypingHook)
    assert hook.typing == TypingAction(
        user=UserRef(id="manager"),
        conversation=Conversation(id="amo-chat", client_id="tg-100"),
        expired_at=1700000005,
        post_id="post-1",
    )


def _reaction_body(reaction: dict[str, Any]) -> bytes:
    base = {"user": {"id": "manager"}, "conversation": {"id": "amo-chat", "client_id": "tg-100"}}
    return json.dumps({"account_id": "acc", "time": 1, "action": {"reaction": {**base, **reaction}}}).encode()


@pytest.mark.parametrize(
    "reaction",
    [
        {"msgid": "amo-msg", "type": "react", "emoji": "👍"},
        {"message": {"id": "amo-msg", "client_id": "tg-1-5", "type": "text"}, "type": "react", "emoji": "👍"},
    ],
    ids=["flat-msgid", "nested-message"],
)
def test_reaction_hook_both_shapes(reaction: dict[str, Any]) -> None:
    hook = parse_webhook(_reaction_body(reaction))
    assert isinstance(hook, ReactionHook)
    assert hook.reaction.message_id == "amo-msg"
    assert hook.reaction.type == "react"
    assert hook.reaction.emoji == "👍"


def test_unreact_without_emoji() -> None:
    hook = parse_webhook(_reaction_body({"message": {"id": "amo-msg"}, "type": "unreact"}))
    assert isinstance(hook, ReactionHook)
    assert hook.reaction.type == "unreact"
    assert hook.reaction.emoji is None
    assert hook.reaction.message == ReactionMessageRef(id="amo-msg")


def test_hook_unknown_fields_ignored() -> None:
    hook = _message_hook(_hook({"message": {"brand_new": {"x": 1}}, "later": True}, extra_top="x"))
    assert hook.amocrm_message_id == "amo-msg"


HOOK_MODELS: list[msgspec.Struct] = [
    MessageHook(
        account_id="a",
        time=1,
        message=HookMessage(
            conversation=Conversation(id="c"),
            source=Source(external_id="wa"),
            sender=HookSender(id="s"),
            receiver=HookReceiver(id="r", phone="+1"),
            timestamp=1,
            msec_timestamp=1000,
            message=HookMessageBody(
                id="m",
                type="text",
                text="t",
                markup=Markup(mode="inline", buttons=[[Button(text="b")]]),
                template=Template(id="7", content="c"),
                reply_to=ReplyTo(message=EmbeddedMessage(id="x")),
                forwards=Forwards(messages=[EmbeddedMessage(id="y")]),
                post=HookPost(id="p"),
            ),
        ),
    ),
    TypingHook(
        account_id="a",
        time=1,
        action=TypingHookAction(
            typing=TypingAction(user=UserRef(id="u"), conversation=Conversation(id="c"), expired_at=6)
        ),
    ),
    ReactionHook(
        account_id="a",
        time=1,
        action=ReactionHookAction(
            reaction=ReactionAction(user=UserRef(id="u"), conversation=Conversation(id="c"), type="unreact", msgid="m")
        ),
    ),
]


@pytest.mark.parametrize("hook", HOOK_MODELS, ids=lambda m: type(m).__name__)
def test_hook_models_round_trip_through_parse_webhook(hook: msgspec.Struct) -> None:
    data = encode(hook)
    assert b"null" not in data
    assert parse_webhook(data) == hook


def test_reaction_action_needs_a_message() -> None:
    with pytest.raises(ValueError, match="msgid or message"):
        ReactionAction(user=UserRef(id="u"), conversation=Conversation(id="c"), type="unreact")
    with pytest.raises(WebhookError, match="msgid or message"):
        parse_webhook(_reaction_body({"type": "unreact"}))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", "wrong shape"),
        (b'{"account_id":"a","time":1}', "neither 'message' nor 'action'"),
        (b'{"account_id":"a","time":1,"action":{}}', "exactly one of 'typing' or 'reaction'"),
        (b'{"account_id":"a","time":1,"action":{"other":{}}}', "exactly one of 'typing' or 'reaction'"),
        (_hook(hook_api_version="v1"), "only v2"),
        (_hook(version="v1"), "only v2"),
        (b'{"message":{"conversation":{"id":"c"}}}', "v1 hook"),
        (json.dumps({"time": 1, "message": json.loads(_hook())["message"]}).encode(), "lacks account_id"),
        (_hook({"sender": {"id": {"n": 5}}}), r"\$\.message\.sender\.id"),
        (_hook({"message": {"text": ["Hello"]}}), r"\$\.message\.message\.text"),
        (_hook(time="yesterday"), r"\$\.time"),
        (_reaction_body({"msgid": "m", "type": "like"}), r"\$\.action\.reaction\.type"),
    ],
)
def test_bad_webhooks_raise_webhook_error(body: bytes, problem: str) -> None:
    with pytest.raises(WebhookError, match=problem):
        parse_webhook(body)


def test_message_and_action_together_refused() -> None:
    body = json.loads(_hook())
    body["action"] = {"typing": {"user": {"id": "u"}, "conversation": {"id": "c"}, "expired_at": 1}}
    with pytest.raises(WebhookError, match="both"):
        parse_webhook(json.dumps(body))
