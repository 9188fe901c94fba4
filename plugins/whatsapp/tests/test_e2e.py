"""End to end through the core: the runtime between the fake amojo and the fake Graph API, two numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from amoconnect.amojo import wire
from amoconnect.ratelimit import RateLimiter
from amoconnect.testing.kit import eventually
from whatsapp_peer import peer_check
from whatsapp_rig import World, world

from amoconnect_whatsapp.fake import User

pytestmark = pytest.mark.anyio


@pytest.fixture
async def w(tmp_path: Path) -> AsyncIterator[World]:
    async with world(tmp_path) as w:
        yield w
    peer_check(w.fake)


async def _client_message(w: World, user: User, text: str, instance: str = "wa1") -> str:
    """The client writes; returns amoCRM's id of the message once it arrived."""
    to = w.adapter(instance).config.phone_number_id
    await w.fake.client_writes(user, text, to=to)
    conversation = w.conversation(user.chat, instance)
    found = await eventually(lambda: [m for m in w.amojo.messages_in(conversation) if m.text == text])
    # The relay records the mapping just after amoCRM answered: wait for it, as a manager would.
    await eventually(lambda: w.runtime.store.message_by_amocrm(w.scope_id, str(found[0].id)))
    return str(found[0].id)


async def test_each_kind_reaches_amocrm(w: World) -> None:
    anna = w.fake.add_user("4915100000001", name="Anna")
    ghost = w.fake.add_user(None, name="Ghost", username="ghost")
    await w.fake.client_writes(anna, "hello")
    await w.fake.client_sends_media(anna, "image", b"\xff\xd8 JPEG", "image/jpeg", caption="a cat")
    await w.fake.client_sends_media(anna, "audio", b"OggS", "audio/ogg", voice=True)
    await w.fake.client_sends_media(anna, "document", b"%PDF", "application/pdf", filename="offer.pdf")
    await w.fake.client_sends_location(anna, 55.75, 37.61)
    await w.fake.client_sends_contact(anna, "Bob", "+4915100000009")
    await w.fake.client_sends_unsupported(anna)
    await w.fake.client_writes(ghost, "I have no phone number")
    conversation = w.conversation("4915100000001")
    stored = await eventually(lambda: len(w.amojo.messages_in(conversation)) == 7 and w.amojo.messages_in(conversation))
    assert [m.type for m in stored] == ["text", "picture", "voice", "file", "location", "contact", "text"]
    assert stored[1].text == "a cat" and stored[3].content.file_name == "offer.pdf"
    media_url = stored[1].content.media
    assert media_url is not None and media_url.startswith("http://amoconnect/media/")
    downloaded = await w.runtime.client.get(media_url.removeprefix("http://amoconnect"))
    assert downloaded.content == b"\xff\xd8 JPEG"
    assert "cannot show" in (stored[6].text or "")
    payload = stored[0].payload
    assert payload is not None and payload.sender.name == "Anna"
    assert payload.sender.profile is not None and payload.sender.profile.phone == "+4915100000001"
    ghost_messages = await eventually(lambda: w.amojo.messages_in(w.conversation(ghost.user_id)))
    assert ghost_messages[0].text == "I have no phone number"


async def test_manager_kinds_reach_the_client(w: World) -> None:
    anna = w.fake.add_user("4915100000001", name="Anna")
    first = await _client_message(w, anna, "hi")
    conversation = w.conversation(anna.chat)
    await w.amojo.emit_text(w.scope_id, conversation, "plain text")
    await w.amojo.emit_reply(w.scope_id, conversation, first, "a reply")
    await w.amojo.emit_media(
        w.scope_id, conversation, "picture", "http://files.test/cat.jpg", file_name="cat.jpg", file_size=10, text="cat"
    )
    await w.amojo.emit_media(
        w.scope_id, conversation, "file", "http://files.test/report.pdf", file_name="report.pdf", file_size=10
    )
    await w.amojo.emit_buttons(
        w.scope_id,
        conversation,
        "Choose",
        [[wire.Button(text="Yes"), wire.Button(text="No")], [wire.Button(text="Site", url="https://example.com")]],
    )
    for kind, path in (("video", "clip.mp4"), ("voice", "note.ogg"), ("sticker", "sticker.webp")):
        await w.amojo.emit_media(
            w.scope_id, conversation, kind, f"http://files.test/{path}", file_name=path, file_size=9
        )
    sent = await eventually(lambda: len(w.fake.sent_to(anna)) == 8 and w.fake.sent_to(anna))
    assert [s.type for s in sent] == ["text", "text", "image", "document", "interactive", "video", "audio", "sticker"]
    assert sent[1].body["context"]["message_id"] == w.amojo.message(first).msgid.rsplit(":", 1)[-1]  # type: ignore[union-attr]
    assert sent[2].body["image"]["caption"] == "cat" and sent[3].body["document"]["filename"] == "report.pdf"
    buttons = sent[4].body["interactive"]
    assert buttons["type"] == "button" and "Site: https://example.com" in buttons["body"]["text"]


async def test_statuses_in_and_out_of_order(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    w.fake.auto_statuses = ()
    emitted = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "how are you")
    sent = await eventually(lambda: w.fake.sent_to(anna))
    wamid = sent[0].wamid
    await eventually(lambda: w.runtime.store and True)
    w.fake.hold()
    for status in ("sent", "delivered", "read"):
        await w.fake.deliver_status(wamid, status)
    await w.fake.release(shuffle=True, duplicate=True, seed=3)
    statuses = await eventually(lambda: w.amojo.message(emitted.message_id or "").statuses)
    await eventually(lambda: any(s.delivery_status == 2 for s in w.amojo.message(emitted.message_id or "").statuses))
    codes = [s.delivery_status for s in statuses]
    assert codes[-1] == 2 and codes.count(2) == 1  # never back from read, each status once
    late = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "second")
    second = await eventually(lambda: len(w.fake.sent_to(anna)) == 2 and w.fake.sent_to(anna)[1])
    await w.fake.deliver_status(second.wamid, "delivered")
    await w.fake.deliver_status(second.wamid, "failed", error_code=131026)
    failed = await eventually(
        lambda: [s for s in w.amojo.message(late.message_id or "").statuses if s.delivery_status == -1]
    )
    assert failed[0].error_code == 904


async def test_window_closed_template_and_free_text(w: World) -> None:
    template = w.fake.add_template("order_ready", "en_US", body="Order {{1}} is ready")
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    store = w.runtime.store
    conversation = w.conversation(anna.chat)
    record = await store.conversation_by_chat("wa1", anna.chat)
    assert record is not None
    await store.put_conversation(msgspec.structs.replace(record, last_client_at=1.0))
    refused = await w.amojo.emit_text(w.scope_id, conversation, "free text after a day")
    failed = await eventually(lambda: w.amojo.message(refused.message_id or "").statuses)
    assert failed[-1].delivery_status == -1 and "reply window" in (failed[-1].error or "")
    sent = await w.amojo.emit_template(
        w.scope_id, conversation, "Order {{order}} is ready", {"{{order}}": "42"}, external_id="order_ready:en_US"
    )
    out = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.type == "template"])
    assert out[0].body["template"]["components"][0]["parameters"] == [{"type": "text", "text": "42"}]
    assert template.status == "APPROVED" and sent.status == 200


async def test_a_named_template_chosen_by_external_id_is_delivered_outside_the_window(w: World) -> None:
    w.fake.add_template("visit_reminder", "ru", body="{{client}}, ждём вас {{day}} в {{time}}")
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    record = await w.runtime.store.conversation_by_chat("wa1", anna.chat)
    assert record is not None
    await w.runtime.store.put_conversation(msgspec.structs.replace(record, last_client_at=1.0))
    params = {"{{client}}": "Анна", "{{day}}": "в среду", "{{time}}": "10:00"}
    sent = await w.amojo.emit_template(
        w.scope_id,
        w.conversation(anna.chat),
        "{{client}}, ждём вас {{day}} в {{time}}",
        params,
        external_id="visit_reminder:ru",
    )
    statuses = await eventually(lambda: w.amojo.message(sent.message_id or "").statuses)
    assert statuses[-1].delivery_status in (1, 2), statuses[-1].error
    (out,) = [s for s in w.fake.sent_to(anna) if s.type == "template"]
    assert out.body["template"]["components"][0]["parameters"] == [
        {"type": "text", "parameter_name": "client", "text": "Анна"},
        {"type": "text", "parameter_name": "day", "text": "в среду"},
        {"type": "text", "parameter_name": "time", "text": "10:00"},
    ]


async def test_late_window_failure_is_reported(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    anna.last_message_at["1000000001"] = 1.0  # WhatsApp thinks otherwise than the core
    emitted = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "too late")
    statuses = await eventually(
        lambda: [s for s in w.amojo.message(emitted.message_id or "").statuses if s.delivery_status == -1]
    )
    assert statuses[0].error_code == 905 and statuses[0].error == "24-hour window closed, send a template"


async def test_error_470_is_the_closed_window_too(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    late = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "late failure")
    sent = await eventually(lambda: w.fake.sent_to(anna))
    await w.fake.deliver_status(sent[0].wamid, "failed", error_code=470)
    w.fake.fail_next(470)
    refused = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "refused at once")
    for emitted in (late, refused):
        statuses = await eventually(
            lambda e=emitted: [s for s in w.amojo.message(e.message_id or "").statuses if s.delivery_status == -1]
        )
        assert (statuses[0].error_code, statuses[0].error) == (905, "24-hour window closed, send a template")


async def test_list_message_round_trip_to_callback_data(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "menu?")
    lm = wire.ListMessage(
        header="Menu",
        body="Pick a dish",
        footer="Bon appétit",
        button="Open menu",
        sections=[
            wire.ListSection(title="Mains", rows=[wire.ListRow(callback_data="soup", title="Soup", description="hot")]),
            wire.ListSection(title="Drinks", rows=[wire.ListRow(callback_data="tea", title="Tea")]),
        ],
    )
    await w.amojo.emit_list_message(w.scope_id, w.conversation(anna.chat), lm)
    sent = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.type == "interactive"])
    await w.fake.client_picks(anna, sent[0].wamid, "tea")
    picked = await eventually(
        lambda: [
            m
            for m in w.amojo.messages_in(w.conversation(anna.chat))
            if getattr(m.content, "callback_data", None) == "tea"
        ]
    )
    assert picked[0].text == "Tea"
    rows = [wire.ListRow(callback_data=f"r{i}", title=f"Row {i}") for i in range(11)]
    too_big = wire.ListMessage(body="b", button="Open", sections=[wire.ListSection(title="s", rows=rows)])
    refused = await w.amojo.emit_list_message(w.scope_id, w.conversation(anna.chat), too_big)
    statuses = await eventually(lambda: w.amojo.message(refused.message_id or "").statuses)
    assert statuses[-1].error_code == 905 and "11 rows" in (statuses[-1].error or "")


async def test_long_row_data_comes_back_whole_and_an_expired_key_as_the_title(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "which slot?")
    prefix = "slot:" + "x" * 195  # 200 characters, WhatsApp's longest row id: the rows differ only after them
    data = [prefix + "-cabinet-1", prefix + "-cabinet-12"]
    rows = [wire.ListRow(callback_data=d, title=f"Cabinet {i}") for i, d in enumerate(data, 1)]
    lm = wire.ListMessage(body="Pick a slot", button="Slots", sections=[wire.ListSection(title="All", rows=rows)])
    await w.amojo.emit_list_message(w.scope_id, w.conversation(anna.chat), lm)
    (sent,) = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.type == "interactive"])
    ids = [r["id"] for r in sent.body["interactive"]["action"]["sections"][0]["rows"]]
    assert len(set(ids)) == 2 and all(len(i) <= 200 for i in ids)
    conversation = w.conversation(anna.chat)

    def last_data() -> object:
        return getattr(w.amojo.messages_in(conversation)[-1].content, "callback_data", None)

    for row_id, expected in zip(reversed(ids), reversed(data), strict=True):
        await w.fake.client_picks(anna, sent.wamid, row_id)
        await eventually(lambda e=expected: last_data() == e)
    await w.runtime.store.put_button_data(ids[0], data[0], -1)  # its time ran out
    before = len(w.amojo.messages_in(conversation))
    await w.fake.client_picks(anna, sent.wamid, ids[0])
    await eventually(lambda: len(w.amojo.messages_in(conversation)) == before + 1)
    late = w.amojo.messages_in(conversation)[-1]
    assert late.text == "Cabinet 1" and last_data() is None


async def test_reactions_both_ways(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    first = await _client_message(w, anna, "react to me")
    emitted = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "and to me")
    sent = await eventually(lambda: w.fake.sent_to(anna))
    await w.amojo.emit_reaction(w.scope_id, w.conversation(anna.chat), first, "🦄")
    reaction = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.type == "reaction"])
    assert reaction[0].body["reaction"]["emoji"] == "🦄"
    await w.fake.client_reacts(anna, sent[0].wamid, "❤️")
    reacts = await eventually(lambda: w.amojo.reactions)
    assert reacts[0].request.emoji == "❤️" and reacts[0].request.type == "react"
    await w.fake.client_reacts(anna, sent[0].wamid, "")
    await eventually(lambda: len(w.amojo.reactions) == 2)
    assert w.amojo.reactions[1].request.type == "unreact" and emitted.status == 200


async def test_typing_marks_read(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "typing?")
    await w.amojo.emit_typing(w.scope_id, w.conversation(anna.chat))
    await eventually(lambda: w.fake.typing)
    assert w.fake.read_marks == w.fake.typing


async def test_write_first_by_phone_and_the_answer_joins_the_chat(w: World) -> None:
    w.fake.add_template("hello", "en_US", body="Hello from the shop")
    bob = w.fake.add_user("4915100000007", name="Bob")
    plain = await w.amojo.emit_write_first(w.scope_id, "+4915100000007", "free text first", source_external_id="wa1")
    refused = await eventually(lambda: w.amojo.message(plain.message_id or "").statuses)
    assert refused[-1].delivery_status == -1 and "has not written yet" in (refused[-1].error or "")
    chat = w.amojo.add_chat(w.scope_id, None, phone="+4915100000007", source_external_id="wa1")
    sent = await w.amojo.emit_template(w.scope_id, chat.id, "Hello from the shop", {}, external_id="hello:en_US")
    await eventually(lambda: w.fake.sent_to(bob))
    await eventually(lambda: w.amojo.message(sent.message_id or "").statuses)
    await w.fake.client_writes(bob, "hi shop")
    answer = await eventually(lambda: [m for m in w.amojo.messages if m.text == "hi shop"])
    assert answer[0].chat_id == chat.id  # conversation_ref_id tied our conversation to amoCRM's chat


async def test_two_numbers_are_two_sources(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "to number one", "wa1")
    await _client_message(w, anna, "to number two", "wa2")
    one = w.amojo.find_chat(w.conversation(anna.chat, "wa1"))
    two = w.amojo.find_chat(w.conversation(anna.chat, "wa2"))
    assert one is not None and two is not None and one.id != two.id
    payloads = [m.payload for m in w.amojo.messages if m.payload is not None]
    assert {p.source.external_id for p in payloads if p.source} == {"wa1", "second-number"}
    await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat, "wa2"), "from number two")
    sent = await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.text == "from number two"])
    assert sent[0].phone_number_id == "1000000002"


async def test_rate_limit_storms_end_in_delivery(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    w.fake.fail_next(131056, count=2)
    w.fake.fail_next(4, count=2, status=429, retry_after=0.01)
    instance = w.runtime.routing.get("wa1")
    assert instance is not None
    # WhatsApp's clock, a hundred times faster: after a rate limit the chat goes one message per 0.06 s.
    instance.limiters = [(limit, RateLimiter(limit.count, limit.per / 100)) for limit, _ in instance.limiters]
    w.adapter("wa1").api.rate_waits = dict.fromkeys(w.adapter("wa1").api.rate_waits, 0.01)
    emitted = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "through the storm")
    await eventually(lambda: [s for s in w.fake.sent_to(anna) if s.text == "through the storm"], within=20)
    statuses = await eventually(lambda: w.amojo.message(emitted.message_id or "").statuses)
    assert statuses[-1].delivery_status in (1, 2)


async def test_restart_mid_flow_sends_only_what_is_left(tmp_path: Path) -> None:
    """A long answer is two WhatsApp messages; the connector stops after the first, and the restart sends the second."""
    text = "\n\n".join(f"paragraph {i} " + "word " * 150 for i in range(6))
    async with world(tmp_path, max_attempts=1000) as first:
        anna = first.fake.add_user("4915100000001")
        await _client_message(first, anna, "tell me everything")
        first.fake.fail_next(131000, status=500, count=10_000, after=1)
        emitted = await first.amojo.emit_text(first.scope_id, first.conversation(anna.chat), text)
        await eventually(lambda: len(first.fake.sent_to(anna)) == 1)
        await eventually(lambda: len(first.fake.calls) > 8)  # the second part keeps failing
    first.fake._faults.clear()
    async with world(tmp_path, again=first) as second:
        sent = await eventually(lambda: len(second.fake.sent_to(anna)) == 2 and second.fake.sent_to(anna))
        assert " ".join(" ".join(s.text for s in sent).split()) == " ".join(text.split())
        await eventually(lambda: second.amojo.message(emitted.message_id or "").statuses)
    peer_check(second.fake)


async def test_late_throughput_failures_are_sent_again(w: World) -> None:
    anna = w.fake.add_user("4915100000001")
    await _client_message(w, anna, "hi")
    w.adapter().resend_pauses = (0.01, 0.01)
    w.fake.auto_statuses = ()
    emitted = await w.amojo.emit_text(w.scope_id, w.conversation(anna.chat), "accepted, then throttled")
    first = await eventually(lambda: w.fake.sent_to(anna))
    await w.fake.deliver_status(first[0].wamid, "failed", error_code=131056)
    again = await eventually(lambda: len(w.fake.sent_to(anna)) == 2 and w.fake.sent_to(anna)[1])
    await w.fake.deliver_status(again.wamid, "delivered")
    statuses = await eventually(lambda: w.amojo.message(emitted.message_id or "").statuses)
    assert [s.delivery_status for s in statuses] == [1]
