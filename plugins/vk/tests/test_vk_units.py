"""Pure logic: splitting, ids, keyboards, the error table, send plans and event parsing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from amoconnect.buttondata import ButtonData
from amoconnect.errors import MessengerError, RateLimited, WebhookError
from amoconnect.model import (
    Attachment,
    Button,
    InboundComment,
    InboundMessage,
    InboundReaction,
    ListMessage,
    ListRow,
    ListSection,
    OutgoingMessage,
    Person,
)

from amoconnect_vk._fakeworld import ApiError, check_keyboard
from amoconnect_vk.adapter import VKSettings
from amoconnect_vk.compose import plan_message
from amoconnect_vk.events import CommentInfo, Event, Memory, PostInfo, decode_event, parse_event, person_from_user
from amoconnect_vk.vkapi import (
    EMOJI_REACTIONS,
    MAX_LABEL_LENGTH,
    MAX_PAYLOAD_LENGTH,
    REACTIONS,
    button_payload,
    buttons_keyboard,
    callback_data,
    comment_guid,
    error_for,
    fits_payload,
    list_keyboard,
    parse_post_key,
    post_url,
    split_text,
)

# -- vkapi ----------------------------------------------------------------------------------------


def test_split_text_prefers_paragraphs_then_lines_then_spaces() -> None:
    assert split_text("") == []
    assert split_text("short", 10) == ["short"]
    assert split_text("aaaa bbbb\n\ncccc", 12) == ["aaaa bbbb", "cccc"]
    assert split_text("aaaa bbbb\ncccc dddd", 16) == ["aaaa bbbb", "cccc dddd"]
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    text = ("word " * 2000).strip()
    chunks = split_text(text)
    assert all(len(chunk) <= 4096 for chunk in chunks)
    assert " ".join(chunks) == text


def test_payloads_round_trip_and_fit() -> None:
    assert callback_data(button_payload("Yes")) == "Yes"
    assert callback_data('{"command":"start"}') == '{"command":"start"}'
    assert callback_data("not json") == "not json"
    assert callback_data(None) is None
    assert callback_data(button_payload("ы" * 400)) == "ы" * 400  # never cut: a longer one goes as a key
    assert fits_payload("ы" * (MAX_PAYLOAD_LENGTH - 10))  # {"cb": ""} takes 10 characters
    assert not fits_payload("ы" * (MAX_PAYLOAD_LENGTH - 9))
    assert not fits_payload('"' * 123)  # each quote is escaped: 246 characters of data in the payload


@pytest.mark.anyio
async def test_long_button_and_row_data_go_as_keys_that_give_them_back() -> None:
    button_data = ButtonData()
    rows = ((Button(text="A", callback_data="a" * 300), Button(text="B"), Button(text="Site", url="https://x.test")),)
    keyed = await button_data.keyed(OutgoingMessage(chat="1", text="?", buttons=rows), fits_payload)
    keyboard = check_keyboard(buttons_keyboard(keyed.buttons))
    a, b, site = (callback_data(button["action"].get("payload")) for button in keyboard["buttons"][0])
    assert a is not None and await button_data.resolve(a) == "a" * 300 and (b, site) == ("B", None)
    menu = ListMessage(
        body="b", button="m", sections=(ListSection(title="", rows=(ListRow(callback_data="r" * 300, title="R"),)),)
    )
    keyed = await button_data.keyed(OutgoingMessage(chat="1", list_message=menu), fits_payload)
    assert keyed.list_message is not None
    _, raw = list_keyboard(keyed.list_message)
    row = callback_data(check_keyboard(raw)["buttons"][0][0]["action"]["payload"])
    assert row is not None and await button_data.resolve(row) == "r" * 300


def test_buttons_keyboard_keeps_within_vks_limits() -> None:
    rows = [[Button(text=f"b{r}{c}" * 20) for c in range(7)] for r in range(8)]
    keyboard = check_keyboard(buttons_keyboard(rows))
    assert keyboard["inline"] is True
    assert sum(len(row) for row in keyboard["buttons"]) == 10
    assert all(len(b["action"]["label"]) <= MAX_LABEL_LENGTH for row in keyboard["buttons"] for b in row)
    link = json.loads(buttons_keyboard([[Button(text="Site", url="https://shop.example")]]))
    assert link["buttons"][0][0]["action"] == {"type": "open_link", "link": "https://shop.example", "label": "Site"}


@pytest.mark.parametrize(("rows", "inline", "listed"), [(3, True, 0), (8, False, 0), (12, False, 2)])
def test_list_keyboard(rows: int, inline: bool, listed: int) -> None:
    menu = ListMessage(
        header="Delivery",
        body="Choose a slot",
        button="Slots",
        footer="Thank you",
        sections=(
            ListSection(title="", rows=tuple(ListRow(callback_data=f"s{n}", title=f"Slot {n}") for n in range(rows))),
        ),
    )
    text, raw = list_keyboard(menu)
    keyboard = check_keyboard(raw)
    assert bool(keyboard.get("inline")) is inline
    assert text.splitlines()[:2] == ["Delivery", "Choose a slot"] and text.endswith("Thank you")
    assert text.count("- Slot") == listed


def test_keyboard_check_refuses_what_vk_refuses() -> None:
    for bad in (
        "[]",
        '{"buttons": [[{"action": {"type": "text"}}]]}',
        '{"inline": true, "one_time": true, "buttons": []}',
        '{"buttons": [[{"action": {"type": "text", "label": "x", "payload": "not json"}}]]}',
        '{"buttons": [[{"action": {"type": "open_link", "label": "x", "link": "ftp://x"}}]]}',
    ):
        with pytest.raises(ApiError) as refused:
            check_keyboard(bad)
        assert refused.value.code == 911


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [
        (6, "rate_limited", True),
        (9, "rate_limited", True),
        (29, "rate_limited", True),
        (10, "other", True),
        (900, "blocked", False),
        (901, "blocked", False),
        (902, "blocked", False),
        (5, "disabled", False),
        (27, "disabled", False),
        (18, "no_chat", False),
        (936, "no_chat", False),
        (914, "other", False),
        (100, "other", False),
    ],
)
def test_error_table(code: int, reason: str, retryable: bool) -> None:
    error = error_for(code, "VK says so")
    assert (error.reason, error.retryable, error.code) == (reason, retryable, code)
    assert "VK says so" in error.description
    if reason == "rate_limited":
        assert isinstance(error, RateLimited) and error.retry_after > 0


def test_reaction_table_is_one_table_both_ways() -> None:
    assert all(EMOJI_REACTIONS[emoji] == number for number, emoji in REACTIONS.items())
    assert len(set(REACTIONS.values())) == len(REACTIONS)


def test_ids_and_links() -> None:
    assert parse_post_key("-218_45") == (-218, 45)
    assert post_url("-218_45") == "https://vk.com/wall-218_45"
    assert comment_guid("a") == comment_guid("a") != comment_guid("a", 1)
    with pytest.raises(ValueError, match="invalid literal"):
        parse_post_key("wall-1")


def test_settings_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="secret"):
        VKSettings(token="t", group_id=1)
    with pytest.raises(ValueError, match="group_id"):
        VKSettings(token="t", group_id=0, secret="s")
    assert VKSettings(token="t", group_id=1, mode="longpoll").secret == ""


# -- compose --------------------------------------------------------------------------------------


def test_plan_puts_media_first_and_the_keyboard_last() -> None:
    buttons = ((Button(text="Ok"),),)
    message = OutgoingMessage(chat="1", text="a " * 3000, buttons=buttons, reply_to="7", dedup_key="k")
    attachments = [f"doc-1_{n}" for n in range(12)]
    parts = plan_message(message, 1, attachments)
    assert len(parts) == 3
    assert parts[0]["attachment"].count(",") == 9 and "forward" in parts[0] and "message" in parts[0]
    assert parts[1]["attachment"] == "doc-1_10,doc-1_11" and "message" not in parts[1]
    assert "message" in parts[2] and "keyboard" in parts[2]
    assert len({p["random_id"] for p in parts}) == 3
    assert json.loads(parts[0]["forward"]) == {"peer_id": 1, "conversation_message_ids": [7], "is_reply": True}
    with pytest.raises(MessengerError, match="neither text nor media"):
        plan_message(OutgoingMessage(chat="1"), 1, [])


# -- events ---------------------------------------------------------------------------------------


def _event(kind: str, body: Any, event_id: str = "e1") -> Event:
    return Event(type=kind, object=body, group_id=1, event_id=event_id, v="5.199")


def _message(**fields: Any) -> dict[str, Any]:
    return {
        "message": {
            "id": 5,
            "conversation_message_id": 3,
            "date": 100,
            "from_id": 42,
            "peer_id": 42,
            "text": "",
            **fields,
        }
    }


def test_message_parts() -> None:
    memory = Memory()
    memory.people[42] = Person(id="42", name="Anna")
    photo = {"type": "photo", "photo": {"id": 1, "owner_id": 42, "orig_photo": {"url": "https://u/p.jpg"}}}
    doc = {"type": "doc", "doc": {"title": "price", "ext": "pdf", "url": "https://u/d", "size": 5}}
    poll = {"type": "poll", "poll": {"question": "Yes?"}}
    parsed = parse_event(
        _event("message_new", _message(text="hi", attachments=[photo, doc, poll], payload='{"cb":"x"}')), memory, now=1
    )
    (message,) = parsed.events
    assert isinstance(message, InboundMessage)
    assert message.sender.name == "Anna"
    assert message.text == "hi\n[poll] Yes?"
    assert [a.kind for a in message.attachments] == ["picture", "file"]
    assert message.attachments[1] == Attachment(
        kind="file", fetch="https://u/d", file_name="price.pdf", size=5, mime_type="application/pdf"
    )
    assert message.callback_data == "x"
    assert parse_event(_event("message_new", _message(out=1)), memory, now=1).events == ()


def test_message_new_of_an_old_api_version_is_the_message_itself() -> None:
    (message,) = parse_event(_event("message_new", _message(text="old")["message"]), Memory(), now=1).events
    assert isinstance(message, InboundMessage) and message.text == "old"


def test_unknown_reaction_ids_and_events_are_skipped_not_guessed() -> None:
    memory = Memory()
    skipped = parse_event(
        _event("message_reaction_event", {"reacted_id": 1, "peer_id": 1, "cmid": 2, "reaction_id": 63}), memory, now=1
    )
    assert skipped.events == () and "63" in skipped.skipped
    (known,) = parse_event(
        _event("message_reaction_event", {"reacted_id": 1, "peer_id": 1, "cmid": 2, "reaction_id": 4}), memory, now=1
    ).events
    assert isinstance(known, InboundReaction) and known.emoji == "👍"
    assert parse_event(_event("group_join", {"user_id": 1}), memory, now=1).events == ()


def test_comment_without_cached_post_still_links_it() -> None:
    memory = Memory()
    body = {"id": 9, "from_id": 42, "date": 5, "text": "hm", "post_id": 3, "owner_id": -1, "reply_to_comment": 8}
    (comment,) = parse_event(_event("wall_reply_new", body), memory, now=1).events
    assert isinstance(comment, InboundComment)
    assert (comment.post.id, comment.post.caption, comment.parent_id) == ("-1_3", None, "8")
    memory.posts["-1_3"] = PostInfo(caption="Post", preview_url="https://u/p.jpg")
    (cached,) = parse_event(_event("wall_reply_new", body, "e2"), memory, now=1).events
    assert isinstance(cached, InboundComment) and cached.post.preview_url == "https://u/p.jpg"


def test_deleted_comment_of_unknown_author_is_skipped() -> None:
    memory = Memory()
    body = {"owner_id": -1, "id": 9, "deleter_id": 5, "post_id": 3}
    assert parse_event(_event("wall_reply_delete", body), memory, now=1).events == ()
    memory.comments["-1_3_9"] = CommentInfo(from_id=5, text="bye")
    (note,) = parse_event(_event("wall_reply_delete", body), memory, now=1).events
    assert isinstance(note, InboundMessage) and note.text.endswith("«bye»") and note.message_id == "note:e1"


def test_bad_shapes_are_webhook_errors() -> None:
    with pytest.raises(WebhookError):
        decode_event(b"[]")
    with pytest.raises(WebhookError):
        parse_event(_event("message_new", {"message": {"text": 5}}), Memory(), now=1)
    with pytest.raises(WebhookError, match="event_id"):
        parse_event(_event("message_new", _message(), event_id=""), Memory(), now=1)


def test_person_from_users_get() -> None:
    person = person_from_user({"id": 7, "first_name": "Ivan", "last_name": "K", "domain": "ivan", "photo_100": "u"})
    assert person == Person(id="7", name="Ivan K", avatar="u", username="ivan", profile_link="https://vk.com/ivan")
    assert msgspec.json.decode(msgspec.json.encode(person), type=Person) == person
