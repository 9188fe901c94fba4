from __future__ import annotations

import inspect
import typing
from types import ModuleType

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from amoconnect import adapter, capabilities, model
from amoconnect.adapter import MessengerAdapter
from amoconnect.capabilities import CAPABILITY_METHODS, Capability, ReactionSet
from amoconnect.errors import MessengerError, RateLimited, WindowClosed
from amoconnect.model import (
    FAILURE_REASONS,
    Attachment,
    Button,
    Contact,
    Conversation,
    InboundComment,
    InboundEcho,
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
    MessageRef,
    OutgoingCommentReply,
    OutgoingEvent,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    Post,
    SendResult,
    Template,
    TemplateParam,
)

ANN = Person(
    id="42",
    name="Ann",
    avatar="https://example.org/a.jpg",
    phone="+15550100",
    email="ann@example.org",
    username="ann",
    profile_link="https://t.me/ann",
)
PHOTO = Attachment(kind="picture", fetch="file-1", file_name="a.jpg", size=1024, mime_type="image/jpeg")
VOICE = Attachment(kind="voice", url="https://example.org/v.ogg", duration=3.5)
COMMON = {"chat": "100", "timestamp": 1772443800.125}

INBOUND: list[InboundEvent] = [
    InboundMessage(
        **COMMON,
        dedup_key="u1",
        sender=ANN,
        message_id="7",
        text="hello",
        attachments=(PHOTO, VOICE),
        location=Location(lat=55.75, lon=37.62),
        contact=Contact(name="Bob", phone="+15550101"),
        callback_data="row-1",
        reply_to="6",
        forwarded=True,
    ),
    InboundEdit(**COMMON, dedup_key="u2", sender=ANN, message_id="7", text="hello again"),
    InboundStatus(
        **COMMON,
        dedup_key="wamid.1:failed",
        message_id="wamid.1",
        status="failed",
        reason="window_closed",
        error_code="131047",
        error="Re-engagement message",
    ),
    InboundReaction(**COMMON, dedup_key="u3", sender=ANN, message_id="7", emoji="👍"),
    InboundReaction(**COMMON, dedup_key="u4", sender=ANN, message_id="7", removed=True),
    InboundTyping(**COMMON, dedup_key="e5", sender=ANN),
    InboundComment(
        **COMMON,
        dedup_key="e6",
        sender=ANN,
        post=Post(id="-1_5", url="https://vk.com/wall-1_5", preview_url="https://example.org/p.jpg", caption="Sale"),
        comment_id="9",
        parent_id="8",
        text="price?",
        attachments=(PHOTO,),
    ),
    InboundEcho(
        **COMMON,
        dedup_key="e7",
        client=ANN,
        message_id="12",
        text="Your order is ready",
        attachments=(PHOTO,),
        reply_to="11",
        author=Person(id="77", name="Olga"),
    ),
    InboundEcho(**COMMON, dedup_key="e8", client=ANN, message_id="13", text="sent by us", ours=True),
]

OUTGOING: list[OutgoingEvent] = [
    OutgoingMessage(
        chat="100",
        dedup_key="amo-1",
        text="Hi",
        attachments=(Attachment(kind="file", url="https://amo.example/f.pdf", file_name="f.pdf", size=10),),
        buttons=((Button(text="Site", url="https://example.org"), Button(text="Yes", callback_data="yes")),),
        reply_to="7",
        media_group_id="g1",
    ),
    OutgoingMessage(
        phone="+15550100",
        list_message=ListMessage(
            header="Menu",
            body="Pick one",
            footer="Thanks",
            button="Open",
            sections=(ListSection(title="Sizes", rows=(ListRow(callback_data="s", title="S", description="Small"),)),),
        ),
    ),
    OutgoingMessage(
        phone="+15550100",
        template=Template(
            id="11",
            external_id="welcome",
            content="Hello {{name}}",
            params=(TemplateParam(key="{{name}}", value="Ann"),),
        ),
    ),
    OutgoingCommentReply(chat="100", post_id="-1_5", comment_id="9", text="10 USD", dedup_key="amo-2"),
    OutgoingReaction(chat="100", message_id="7", emoji="❤"),
    OutgoingReaction(chat="100", message_id="7", removed=True),
    OutgoingTyping(chat="100", until=1772443805.0, post_id="-1_5"),
]


@pytest.mark.parametrize("event", INBOUND, ids=lambda event: type(event).__name__)
def test_inbound_events_round_trip_through_json(event: InboundEvent) -> None:
    data = msgspec.json.encode(event)
    assert msgspec.json.decode(data, type=InboundEvent) == event


@pytest.mark.parametrize("event", OUTGOING, ids=lambda event: type(event).__name__)
def test_outgoing_events_round_trip_through_json(event: OutgoingEvent) -> None:
    data = msgspec.json.encode(event)
    assert msgspec.json.decode(data, type=OutgoingEvent) == event


@pytest.mark.parametrize(
    "value",
    [
        SendResult(message_ids=("1", "2"), status="delivered", chat="15550100"),
        MessageRef(
            conversation=Conversation(id="c1", messenger="echo", instance="main", chat="100", amocrm_chat_id="x"),
            direction="out",
            msgid="m1",
            amocrm_id="a1",
            messenger_id="7",
        ),
    ],
)
def test_results_and_references_round_trip(value: msgspec.Struct) -> None:
    assert msgspec.json.decode(msgspec.json.encode(value), type=type(value)) == value


@given(text=st.text(), timestamp=st.floats(min_value=0, max_value=4e9), chat=st.text(min_size=1))
def test_any_text_and_timestamp_round_trip(text: str, timestamp: float, chat: str) -> None:
    event = InboundMessage(chat=chat, timestamp=timestamp, dedup_key="k", sender=ANN, message_id="1", text=text)
    assert msgspec.json.decode(msgspec.json.encode(event), type=InboundEvent) == event


def test_events_are_tagged_and_omit_defaults() -> None:
    event = InboundTyping(chat="1", timestamp=2.0, dedup_key="k", sender=Person(id="3"))
    assert msgspec.json.decode(msgspec.json.encode(event)) == {
        "type": "typing",
        "chat": "1",
        "timestamp": 2.0,
        "dedup_key": "k",
        "sender": {"id": "3"},
    }
    assert msgspec.json.decode(msgspec.json.encode(OutgoingMessage(chat="1", text="x"))) == {
        "type": "message",
        "chat": "1",
        "text": "x",
    }


def test_model_values_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ANN.name = "Bob"  # type: ignore[misc]
    assert hash(INBOUND[0]) == hash(msgspec.json.decode(msgspec.json.encode(INBOUND[0]), type=InboundEvent))


@pytest.mark.parametrize("where", [{}, {"url": "https://example.org/x", "fetch": "h"}])
def test_attachment_needs_exactly_one_source(where: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one of url and fetch"):
        Attachment(kind="file", **where)
    with pytest.raises(msgspec.ValidationError, match=r"exactly one of url and fetch - at `\$.attachments\[0\]`"):
        msgspec.json.decode(
            msgspec.json.encode({**msgspec.to_builtins(INBOUND[1]), "attachments": [{"kind": "file", **where}]}),
            type=InboundEvent,
        )


@pytest.mark.parametrize("target", [{}, {"chat": "1", "phone": "+1"}])
def test_outgoing_message_needs_chat_or_phone(target: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one of chat and phone"):
        OutgoingMessage(text="x", **target)


def test_unknown_media_kind_and_status_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'gif'"):
        msgspec.convert({"kind": "gif", "url": "https://x"}, type=Attachment)
    status = {**msgspec.to_builtins(INBOUND[2]), "status": "seen"}
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'seen'"):
        msgspec.convert(status, type=InboundEvent)


def test_failure_reasons_are_shared_with_messenger_errors() -> None:
    assert set(typing.get_args(model.FailureReason)) == FAILURE_REASONS
    assert {"blocked", "disabled", "no_chat", "window_closed", "rate_limited", "other"} == FAILURE_REASONS
    errors = [MessengerError("x"), RateLimited("x", retry_after=1), WindowClosed("x")]
    assert {error.reason for error in errors} <= FAILURE_REASONS


def test_capability_vocabulary() -> None:
    assert {capability.value for capability in Capability} == {
        "write_first",
        "typing",
        "reactions",
        "comments",
        "templates",
        "list_messages",
        "buttons",
        "media",
        "edits",
        "replies",
        "delivery_receipts",
        "read_receipts",
        "time_window",
        "echoes",
    }
    assert set(CAPABILITY_METHODS) == set(Capability)
    for methods in CAPABILITY_METHODS.values():
        for method in methods:
            assert inspect.iscoroutinefunction(getattr(MessengerAdapter, method)), method


def test_reaction_sets() -> None:
    telegram = ReactionSet.of("👍", "❤")
    assert telegram.match("❤️") == "❤"  # amoCRM's spelling carries a variation selector
    assert "👍" in telegram
    assert "🦄" not in telegram
    assert telegram.match("") is None
    assert ReactionSet.any().match("🦄") == "🦄"
    assert not ReactionSet()
    assert not ReactionSet.of()
    assert ReactionSet.any()
    assert telegram


@pytest.mark.parametrize("module", [model, capabilities, adapter], ids=lambda module: module.__name__)
def test_all_lists_the_public_names(module: ModuleType) -> None:
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)
