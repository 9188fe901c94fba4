"""Pure logic: text splitting, error mapping, planning sends, parsing updates, settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiogram.types.reaction_type_emoji
import msgspec
import pytest
from amoconnect.adapter import validate_adapter
from amoconnect.buttondata import ButtonData
from amoconnect.errors import MessengerError, RateLimited, WebhookError
from amoconnect.model import (
    Attachment,
    Button,
    InboundEdit,
    InboundMessage,
    InboundReaction,
    ListMessage,
    ListRow,
    ListSection,
    OutgoingMessage,
)

from amoconnect_telegram.adapter import TelegramAdapter, TelegramSettings
from amoconnect_telegram.botapi import REACTION_EMOJI, split_text, truncate_bytes, utf16_length
from amoconnect_telegram.client import BotApiError, error_for
from amoconnect_telegram.compose import fits_callback_data, plan_message
from amoconnect_telegram.updates import AnswerCallback, ChatBlocked, decode_update, parse_update


def test_adapter_declarations_are_valid() -> None:
    validate_adapter(TelegramAdapter)
    assert "write_first" not in TelegramAdapter.capabilities
    assert "read_receipts" not in TelegramAdapter.capabilities


def test_reaction_list_is_the_bot_api_list() -> None:
    """Our list equals the one aiogram copied from the Bot API's ReactionTypeEmoji."""
    source = Path(aiogram.types.reaction_type_emoji.__file__).read_text(encoding="utf-8")
    listed = source.split("Currently, it can be one of ")[1].split('."""')[0]
    assert tuple(re.findall(r'"([^"]+)"', listed)) == REACTION_EMOJI
    assert TelegramAdapter.reactions.match("❤️") == "❤"  # amoCRM's heart has a variation selector


def test_utf16_length_counts_astral_characters_twice() -> None:
    assert utf16_length("abc") == 3
    assert utf16_length("a😀") == 3


def test_split_text_keeps_order_and_limits() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * 300 for i in range(10))
    chunks = split_text(text, 4096)
    assert len(chunks) > 1
    assert all(utf16_length(chunk) <= 4096 for chunk in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert chunks[0].startswith("paragraph 0")


def test_split_text_cuts_hard_without_spaces_and_respects_astral() -> None:
    chunks = split_text("😀" * 3000, 4096)
    assert [utf16_length(c) for c in chunks] == [4096, 1904]
    assert split_text("") == []
    assert split_text("short") == ["short"]


def test_truncate_bytes_keeps_whole_characters() -> None:
    assert truncate_bytes("я" * 40, 64) == "я" * 32
    assert truncate_bytes("a" * 10, 64) == "a" * 10
    assert len(truncate_bytes("😀" * 20, 63).encode()) == 60


@pytest.mark.parametrize(
    ("status", "description", "reason", "retryable"),
    [
        (403, "Forbidden: bot was blocked by the user", "blocked", False),
        (403, "Forbidden: user is deactivated", "blocked", False),
        (403, "Forbidden: bot can't initiate conversation with a user", "no_chat", False),
        (400, "Bad Request: chat not found", "no_chat", False),
        (401, "Unauthorized", "disabled", False),
        (500, "Internal Server Error", "other", True),
        (502, "Bad Gateway", "other", True),
        (400, "Bad Request: message is too long", "other", False),
        (403, "Forbidden: not enough rights to send text messages to the chat", "other", False),
    ],
)
def test_error_mapping(status: int, description: str, reason: str, retryable: bool) -> None:
    error = error_for(status, description)
    assert isinstance(error, BotApiError)
    assert (error.reason, error.retryable, error.code) == (reason, retryable, status)
    assert description in error.description


def test_429_becomes_rate_limited_with_retry_after() -> None:
    error = error_for(429, "Too Many Requests: retry after 7", {"retry_after": 7})
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert error.reason == "rate_limited"


def _message(**fields: Any) -> OutgoingMessage:
    return OutgoingMessage(chat="42", **fields)


def test_plan_long_text_with_buttons_and_reply() -> None:
    text = "a" * 5000
    buttons = ((Button(text="Site", url="https://example.com"), Button(text="Yes", callback_data="Yes")),)
    calls = plan_message(_message(text=text, buttons=buttons, reply_to="7"))
    assert [c.method for c in calls] == ["sendMessage", "sendMessage"]
    assert "".join(c.params["text"] for c in calls) == text
    assert calls[0].params["reply_parameters"] == {"message_id": 7, "allow_sending_without_reply": True}
    assert "reply_parameters" not in calls[1].params
    assert calls[1].params["reply_markup"] == {
        "inline_keyboard": [[{"text": "Site", "url": "https://example.com"}, {"text": "Yes", "callback_data": "Yes"}]]
    }
    assert calls[0].params["chat_id"] == 42


def test_plan_media_caption_overflow_goes_to_a_following_message() -> None:
    text = "word " * 400  # 2000 characters
    picture = Attachment(kind="picture", url="https://files.test/cat.jpg")
    calls = plan_message(_message(text=text, attachments=(picture,)))
    assert [c.method for c in calls] == ["sendPhoto", "sendMessage"]
    assert utf16_length(calls[0].params["caption"]) <= 1024
    assert " ".join((calls[0].params["caption"] + " " + calls[1].params["text"]).split()) == " ".join(text.split())
    assert calls[0].attachment is picture and calls[0].file_field == "photo"


def test_plan_sticker_text_follows() -> None:
    sticker = Attachment(kind="sticker", url="https://files.test/sticker.webp")
    calls = plan_message(_message(text="hi", attachments=(sticker,)))
    assert [c.method for c in calls] == ["sendSticker", "sendMessage"]
    assert "caption" not in calls[0].params


def test_plan_list_message_becomes_keyboard_of_rows() -> None:
    lm = ListMessage(
        body="Pick one",
        button="Menu",
        header="Header",
        footer="Footer",
        sections=(
            ListSection(title="A", rows=(ListRow(callback_data="r1", title="Row 1"),)),
            ListSection(title="B", rows=(ListRow(callback_data="r2", title="Row 2", description="two"),)),
        ),
    )
    (call,) = plan_message(_message(text="Pick one", list_message=lm))
    assert call.params["text"] == "Header\n\nPick one\n\nFooter"
    assert call.params["reply_markup"]["inline_keyboard"] == [
        [{"text": "Row 1", "callback_data": "r1"}],
        [{"text": "Row 2", "callback_data": "r2"}],
    ]


@pytest.mark.anyio
async def test_long_button_and_row_data_go_as_keys_that_give_them_back() -> None:
    long = "Да" * 40  # 160 bytes
    lm = ListMessage(
        body="b", button="m", sections=(ListSection(title="", rows=(ListRow(callback_data=long, title="R"),)),)
    )
    buttons = ((Button(text=long), Button(text="Site", url="https://x.test"), Button(text="Ok", callback_data="ok")),)
    button_data = ButtonData()
    keyed = await button_data.keyed(_message(text="x", buttons=buttons, list_message=lm), fits_callback_data)
    (call,) = plan_message(keyed)
    (first, site, ok), (row,) = call.params["reply_markup"]["inline_keyboard"]
    assert first["callback_data"] == row["callback_data"] and len(first["callback_data"].encode()) <= 64
    assert await button_data.resolve(first["callback_data"]) == long
    assert (site, ok) == ({"text": "Site", "url": "https://x.test"}, {"text": "Ok", "callback_data": "ok"})
    assert fits_callback_data("a" * 64) and fits_callback_data("Да" * 16)
    assert not fits_callback_data("a" * 65) and not fits_callback_data("Да" * 16 + "a") and not fits_callback_data("")


def test_plan_refuses_write_first_and_empty() -> None:
    with pytest.raises(MessengerError) as info:
        plan_message(OutgoingMessage(phone="+100"))
    assert info.value.reason == "no_chat"
    with pytest.raises(MessengerError):
        plan_message(_message(text=""))


def _update(**content: Any) -> bytes:
    return msgspec.json.encode({"update_id": 17, **content})


CHAT = {"id": 5, "type": "private", "first_name": "Anna"}
USER = {"id": 5, "is_bot": False, "first_name": "Anna", "last_name": "K", "username": "anna"}


def test_parse_message_with_reply_and_forward() -> None:
    quoted = {"message_id": 3, "date": 1, "chat": CHAT, "text": "old"}
    message = {
        "message_id": 4,
        "date": 1700000000,
        "chat": CHAT,
        "from": USER,
        "text": "hi",
        "reply_to_message": quoted,
        "forward_origin": {"type": "hidden_user", "sender_user_name": "X", "date": 1},
        "unknown_future_field": {"x": 1},
    }
    parsed = parse_update(decode_update(_update(message=message)), now=0)
    (event,) = parsed.events
    assert isinstance(event, InboundMessage)
    assert (event.chat, event.message_id, event.text, event.reply_to, event.forwarded) == ("5", "4", "hi", "3", True)
    assert event.dedup_key == "17"
    assert event.sender.name == "Anna K" and event.sender.username == "anna"
    assert event.sender.profile_link == "https://t.me/anna"


def test_parse_photo_takes_largest_and_big_files_become_a_note() -> None:
    photo = [
        {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 60},
        {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 853, "file_size": 1000},
    ]
    message = {"message_id": 1, "date": 1, "chat": CHAT, "from": USER, "photo": photo, "caption": "look"}
    (event,) = parse_update(decode_update(_update(message=message)), now=0).events
    assert isinstance(event, InboundMessage)
    assert event.attachments[0].fetch == "big" and event.text == "look"
    document = {"file_id": "d", "file_unique_id": "d", "file_name": "huge.zip", "file_size": 30 * 1024 * 1024}
    message = {"message_id": 2, "date": 1, "chat": CHAT, "from": USER, "document": document}
    (event,) = parse_update(decode_update(_update(message=message)), now=0).events
    assert isinstance(event, InboundMessage)
    assert event.attachments == () and "huge.zip" in event.text and "20 MB" in event.text


def test_parse_edit_unsupported_and_service_messages() -> None:
    edited = {"message_id": 1, "date": 1, "edit_date": 9, "chat": CHAT, "from": USER, "text": "new"}
    (event,) = parse_update(decode_update(_update(edited_message=edited)), now=0).events
    assert isinstance(event, InboundEdit) and event.timestamp == 9.0 and event.text == "new"
    poll = {"message_id": 2, "date": 1, "chat": CHAT, "from": USER, "poll": {"id": "p"}}
    (event,) = parse_update(decode_update(_update(message=poll)), now=0).events
    assert isinstance(event, InboundMessage) and "poll" in event.text
    service = {"message_id": 3, "date": 1, "chat": CHAT, "from": USER, "new_chat_title": "x"}
    assert parse_update(decode_update(_update(message=service)), now=0).events == ()


def test_parse_reaction_change_yields_removal_then_addition() -> None:
    reaction = {
        "chat": CHAT,
        "message_id": 9,
        "user": USER,
        "date": 5,
        "old_reaction": [{"type": "emoji", "emoji": "👍"}],
        "new_reaction": [{"type": "emoji", "emoji": "🔥"}, {"type": "custom_emoji", "custom_emoji_id": "1"}],
    }
    events = parse_update(decode_update(_update(message_reaction=reaction)), now=0).events
    assert [(e.emoji, e.removed, e.dedup_key) for e in events if isinstance(e, InboundReaction)] == [
        ("👍", True, "17"),
        ("🔥", False, "17.1"),
    ]


def test_parse_callback_and_member_updates() -> None:
    bot_message = {
        "message_id": 8,
        "date": 1,
        "chat": CHAT,
        "text": "Choose",
        "reply_markup": {"inline_keyboard": [[{"text": "Yes please", "callback_data": "yes"}]]},
    }
    query = {"id": "q1", "from": USER, "message": bot_message, "chat_instance": "c", "data": "yes"}
    parsed = parse_update(decode_update(_update(callback_query=query)), now=123.0)
    (event,) = parsed.events
    assert isinstance(event, InboundMessage)
    assert (event.text, event.callback_data, event.chat, event.timestamp) == ("Yes please", "yes", "5", 123.0)
    assert parsed.effects == (AnswerCallback("q1"),)
    member = {
        "chat": CHAT,
        "from": USER,
        "date": 1,
        "old_chat_member": {"status": "member", "user": USER},
        "new_chat_member": {"status": "kicked", "user": USER, "until_date": 0},
    }
    assert parse_update(decode_update(_update(my_chat_member=member)), now=0).effects == (ChatBlocked("5", True),)


def test_decode_refuses_what_is_not_an_update() -> None:
    with pytest.raises(WebhookError):
        decode_update(b"not json")
    with pytest.raises(WebhookError):
        decode_update(b'{"message": {}}')


@pytest.mark.parametrize(
    "settings",
    [
        {"token": "nonsense"},
        {"token": "1:abc", "secret_token": "has space"},
        {"token": "1:abc", "polling_timeout": 99},
        {"token": "1:abc", "mode": "push"},
        {"token": "1:abc", "typo": 1},
        {"token": "1:abc", "expired_button_text": ""},
        {"token": "1:abc", "expired_button_text": "x" * 201},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(settings, TelegramSettings)


def test_sandbox_factory_builds_a_sandbox_messenger() -> None:
    from amoconnect.sandbox import SandboxMessenger

    assert TelegramAdapter.sandbox_factory is not None
    fake = TelegramAdapter.sandbox_factory(http=None)
    assert isinstance(fake, SandboxMessenger)
    settings = msgspec.convert(fake.sandbox_settings("http://127.0.0.1:1"), TelegramSettings)
    assert settings.api_url == "http://127.0.0.1:1"
