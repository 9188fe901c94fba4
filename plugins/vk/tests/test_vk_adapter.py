"""The adapter against the fake VK, in-process: Callback API in, API calls out."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
import structlog.testing
from amoconnect.adapter import WebhookRequest, WebhookResponse
from amoconnect.errors import ConfigError, MessengerError, RateLimited, SignatureError
from amoconnect.model import (
    Attachment,
    Button,
    InboundComment,
    InboundEcho,
    InboundEdit,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    ListMessage,
    ListRow,
    ListSection,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
)
from amoconnect.testing.fakes import ClientMedia
from amoconnect.testing.kit import eventually
from vk_rig import FILES, PUBLIC, SECRET, MemoryState, Rig

from amoconnect_vk.adapter import VKAdapter
from amoconnect_vk.fake import FakeVK, link, video
from amoconnect_vk.vkapi import random_id

pytestmark = pytest.mark.anyio

PICTURE = ClientMedia(kind="picture", content=b"\x89PNG\r\n\x1a\n photo", file_name="photo.png", mime_type="image/png")


def hook(body: dict[str, object] | bytes) -> WebhookRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return WebhookRequest(method="POST", headers=httpx.Headers({"Content-Type": "application/json"}), body=raw)


# -- the Callback API edge ----------------------------------------------------------------------------


async def test_confirmation_is_answered_with_the_communitys_code(
    make_adapter: Callable[..., Rig], fake: FakeVK
) -> None:
    rig = make_adapter()
    answer = await rig.adapter.verify(hook({"type": "confirmation", "group_id": fake.group_id, "secret": SECRET}))
    assert answer is not None
    assert answer.body == fake.confirmation_code.encode()
    assert fake.calls_to("groups.getCallbackConfirmationCode")


async def test_configured_confirmation_code_needs_no_call(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(confirmation_code="abc123")
    answer = await rig.adapter.verify(hook({"type": "confirmation", "group_id": fake.group_id, "secret": SECRET}))
    assert answer is not None
    assert answer.body == b"abc123"
    assert not fake.calls


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        {"type": "message_new", "group_id": 1, "event_id": "x", "secret": SECRET, "object": {}},
        {"type": "message_new", "group_id": "self", "event_id": "x", "secret": "wrong", "object": {}},
        {"type": "message_new", "group_id": "self", "event_id": "x", "object": {}},
        {"type": "confirmation", "group_id": "self", "secret": "wrong"},
        {"type": "confirmation", "group_id": "self"},
        {"type": "confirmation", "group_id": "self", "secret": None},
    ],
)
async def test_foreign_requests_are_refused(
    make_adapter: Callable[..., Rig], fake: FakeVK, body: dict[str, object] | bytes
) -> None:
    if isinstance(body, dict) and body["group_id"] == "self":
        body = {**body, "group_id": fake.group_id}
    rig = make_adapter()
    with pytest.raises(SignatureError):
        await rig.adapter.verify(hook(body))


async def test_the_confirmation_code_is_for_vk_alone_and_costs_one_lookup(
    make_adapter: Callable[..., Rig], fake: FakeVK, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VKAdapter, "confirmation_retry", 0.3)
    rig = make_adapter()
    asked = fake.calls_to
    anyone = hook({"type": "confirmation", "group_id": fake.group_id})
    for _ in range(20):
        with pytest.raises(SignatureError):
            await rig.adapter.verify(anyone)
    assert not asked("groups.getCallbackConfirmationCode")

    vk = hook({"type": "confirmation", "group_id": fake.group_id, "secret": SECRET})
    answers: list[WebhookResponse | None] = []

    async def confirm_many(n: int) -> None:
        async def one() -> None:
            answers.append(await rig.adapter.verify(vk))

        async with anyio.create_task_group() as tasks:
            for _ in range(n):
                tasks.start_soon(one)

    fake.fail_next(1, 15, method="groups.getCallbackConfirmationCode")  # a token without 'manage'
    await confirm_many(30)
    assert [(a.status, a.headers.get("Retry-After")) for a in answers if a] == [(503, "1")] * 30
    assert len(asked("groups.getCallbackConfirmationCode")) == 1  # failed once: no new lookup for a while
    answers.clear()
    await confirm_many(30)
    assert [a.status for a in answers if a] == [503] * 30
    assert len(asked("groups.getCallbackConfirmationCode")) == 1

    await anyio.sleep(0.35)
    answers.clear()
    await confirm_many(30)
    assert [(a.status, a.body) for a in answers if a] == [(200, fake.confirmation_code.encode())] * 30
    answers.clear()
    await confirm_many(30)
    assert [a.body for a in answers if a] == [fake.confirmation_code.encode()] * 30
    assert len(asked("groups.getCallbackConfirmationCode")) == 2  # one failed, one kept


async def test_longpoll_instance_takes_no_callbacks(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(mode="longpoll", secret="")
    with pytest.raises(SignatureError, match="Long Poll"):
        await rig.adapter.verify(hook({"type": "confirmation", "group_id": fake.group_id}))


async def test_a_message_arrives_with_the_clients_name(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    user = fake.add_user("Anna", "Petrova", domain="anna_p")
    await fake.client_writes(user, "Hello!")
    (event,) = rig.events
    assert isinstance(event, InboundMessage)
    assert (event.chat, event.message_id, event.text) == (str(user), "1", "Hello!")
    assert event.sender.name == "Anna Petrova"
    assert event.sender.username == "anna_p"
    assert event.sender.profile_link == "https://vk.com/anna_p"
    assert event.dedup_key == fake.events[-1]["event_id"]
    confirmations = [d for d in fake.deliveries if d.event_id == "confirmation"]
    assert len(confirmations) == 1
    await fake.client_writes(user, "again")
    assert len(fake.calls_to("users.get")) == 1, "names are kept"


async def test_retries_carry_x_retry_counter_and_are_deduplicated(
    make_adapter: Callable[..., Rig], fake: FakeVK
) -> None:
    rig = make_adapter()
    fake.lose_answers(2)
    await fake.client_writes(7, "one")
    fake.duplicate_next()
    await fake.client_writes(7, "two")
    assert [e.text for e in rig.events if isinstance(e, InboundMessage)] == ["one", "two"]
    counters = [d.headers.get("X-Retry-Counter") for d in fake.deliveries if d.event_id != "confirmation"]
    assert counters == [None, "1", "2", None, None]
    statuses = [d.status for d in fake.deliveries if d.event_id != "confirmation"]
    assert statuses == [None, None, 200, 200, 200], "a lost answer looks like no answer to VK"


async def test_overloaded_connector_asks_vk_to_come_back(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(7, "first")
    rig.receiver.status, rig.receiver.retry_after = 503, "1"
    fake.retry_after_cap = 0.05
    await fake.client_writes(7, "while busy")
    assert fake.pending, "VK keeps the event"
    rig.receiver.status = 200
    await fake.deliver_pending()
    assert [e.text for e in rig.events if isinstance(e, InboundMessage)] == ["first", "while busy"]


async def test_media_forwards_replies_and_places(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(5, "look", media=PICTURE)
    voice = ClientMedia(kind="voice", content=b"OggS", file_name="")
    await fake.client_writes(5, media=voice)
    await fake.client_writes(5, "doc", media=ClientMedia(kind="file", content=b"%PDF", file_name="price.pdf"))
    await fake.client_writes(5, media=ClientMedia(kind="sticker", content=b"\x89PNG sticker"))
    await fake.client_writes(5, "see https://shop.example", attachments=[link("https://shop.example", "Shop")])
    await fake.client_writes(5, attachments=[video(5, 77, "Unboxing")])
    await fake.client_writes(5, location=(55.75, 37.62))
    await fake.client_writes(5, forward=["1", "3"])
    await fake.client_writes(5, "about this", reply_to="1")
    photo, voice_event, doc, sticker, linked, clip, place, forwarded, reply = rig.events
    assert isinstance(photo, InboundMessage) and photo.attachments[0].kind == "picture"
    assert photo.attachments[0].fetch and photo.attachments[0].fetch.endswith("photo.png")
    assert isinstance(voice_event, InboundMessage) and voice_event.attachments[0].kind == "voice"
    assert voice_event.attachments[0].duration == 3
    assert isinstance(doc, InboundMessage) and doc.attachments[0].file_name == "price.pdf"
    assert isinstance(sticker, InboundMessage) and sticker.attachments[0].kind == "sticker"
    assert isinstance(linked, InboundMessage) and linked.text == "see https://shop.example"
    assert isinstance(clip, InboundMessage) and clip.text == "[video] Unboxing https://vk.com/video5_77"
    assert isinstance(place, InboundMessage) and place.location is not None and place.location.lat == 55.75
    assert isinstance(forwarded, InboundMessage) and forwarded.forwarded and "look" in forwarded.text
    assert len(forwarded.attachments) == 2
    assert isinstance(reply, InboundMessage) and reply.reply_to == "1"
    fetched = await rig.adapter.fetch_media(photo.attachments[0].fetch)
    assert fetched.content == PICTURE.content


async def test_edits_typing_reactions_and_reads(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(9, "helo")
    await fake.client_edits(9, "1", "hello")
    await fake.client_types(9)
    sent = await rig.adapter.send_message(OutgoingMessage(chat="9", text="Hi!", dedup_key="amo-1"))
    await fake.client_reacts(9, sent.message_ids[0], "👍")
    await fake.client_reacts(9, sent.message_ids[0], "", removed=True)
    await fake.client_reads(9)
    _, edit, typing, echo, reacted, unreacted, read = rig.events
    assert isinstance(edit, InboundEdit) and (edit.message_id, edit.text) == ("1", "hello")
    assert isinstance(typing, InboundTyping) and typing.chat == "9"
    assert isinstance(echo, InboundEcho) and echo.ours and echo.message_id == sent.message_ids[0]
    assert isinstance(reacted, InboundReaction) and (reacted.message_id, reacted.emoji) == ("2", "👍")
    assert isinstance(unreacted, InboundReaction) and unreacted.removed
    assert isinstance(read, InboundStatus) and (read.message_id, read.status) == ("2", "read")


@pytest.mark.parametrize("before_answer", [False, True])
async def test_the_community_s_messages_come_back_as_echoes(
    make_adapter: Callable[..., Rig], fake: FakeVK, before_answer: bool
) -> None:
    rig = make_adapter()
    await fake.client_writes(9, "When is it ready?")
    fake.echo_before_answer = before_answer
    sent = await rig.adapter.send_message(OutgoingMessage(chat="9", text="Checking", dedup_key="amo-7"))
    admin = fake.add_user("Olga", "Admin")
    await fake.admin_writes(9, "Tomorrow at noon", admin=admin, reply_to="1")
    await fake.admin_edits(9, rig.events[-1].message_id, "Tomorrow at 1 pm")  # type: ignore[union-attr]
    ours, theirs, edit = rig.events[1:]
    assert isinstance(ours, InboundEcho) and ours.ours
    assert ours.message_id == sent.message_ids[0] and ours.text == "Checking"
    assert isinstance(theirs, InboundEcho) and not theirs.ours
    assert (theirs.chat, theirs.text, theirs.reply_to) == ("9", "Tomorrow at noon", "1")
    assert theirs.client.id == "9" and theirs.client.name
    assert theirs.author is not None and (theirs.author.id, theirs.author.name) == (str(admin), "Olga Admin")
    assert isinstance(edit, InboundEdit) and (edit.message_id, edit.text) == (theirs.message_id, "Tomorrow at 1 pm")
    assert edit.sender.id == str(admin)
    assert {"message_reply", "message_edit"} <= {e["type"] for e in fake.events}


async def test_button_press_comes_back_as_callback_data(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(3, "menu?")
    buttons = ((Button(text="Delivery", callback_data="Delivery"), Button(text="Site", url="https://shop.example")),)
    await rig.adapter.send_message(OutgoingMessage(chat="3", text="Choose", buttons=buttons, dedup_key="amo-2"))
    (sent,) = fake.received(3)
    assert [[b.text for b in row] for row in sent.buttons] == [["Delivery", "Site"]]
    await fake.client_presses(3, "Delivery")
    press = rig.events[-1]
    assert isinstance(press, InboundMessage)
    assert (press.text, press.callback_data) == ("Delivery", "Delivery")


# -- comments ---------------------------------------------------------------------------------------


async def test_comment_carries_its_post_and_answers_go_under_it(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    post = await fake.publish_post("Autumn sale: -30% on coats", picture=b"\xff\xd8\xff coat")
    await fake.client_comments(11, post, "Is there size M?")
    (comment,) = rig.events
    assert isinstance(comment, InboundComment)
    assert comment.chat == "11"
    assert comment.post.id == post
    assert comment.post.url == f"https://vk.com/wall{post}"
    assert comment.post.caption == "Autumn sale: -30% on coats"
    assert comment.post.preview_url and "/files/" in comment.post.preview_url
    reply = OutgoingCommentReply(chat="11", post_id=post, comment_id=comment.comment_id, text="Yes!", dedup_key="a1")
    first = await rig.adapter.send_comment_reply(reply)
    again = await rig.adapter.send_comment_reply(reply)
    assert first == again, "the guid makes VK recognise the retry"
    assert fake.received_comment_replies(post) == ["Yes!"]
    (call,) = fake.calls_to("wall.createComment")[:1]
    assert call.params["reply_to_comment"] == comment.comment_id
    assert call.params["from_group"] == str(fake.group_id)


async def test_comment_post_survives_a_restart(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    state = MemoryState()
    make_adapter(state=state)
    post = await fake.publish_post("New arrivals")
    rig = make_adapter(state=state, server=False)  # a new process, the same store
    await fake.client_comments(12, post, "Price?")
    comment = rig.events[-1]
    assert isinstance(comment, InboundComment)
    assert comment.post.caption == "New arrivals"


async def test_comment_edits_deletes_and_restores(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    post = await fake.publish_post("Post")
    await fake.client_comments(13, post, "first try")
    comment_id = max(fake.comments)
    await fake.client_edits_comment(comment_id, "second try")
    await fake.delete_comment(comment_id, by_community=True)
    await fake.restore_comment(comment_id)
    _, edit, deleted, restored = rig.events
    assert isinstance(edit, InboundEdit) and edit.message_id == f"comment:{post}:{comment_id}"
    assert isinstance(deleted, InboundMessage) and deleted.chat == "13"
    assert deleted.text == f"[comment deleted] https://vk.com/wall{post}: «second try» (deleted by the community)"
    assert isinstance(restored, InboundMessage) and restored.text.startswith("[comment restored]")


async def test_the_communitys_own_comments_are_not_relayed(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    post = await fake.publish_post("Post")
    await fake.client_comments(14, post, "hi")
    reply = OutgoingCommentReply(chat="14", post_id=post, comment_id=str(max(fake.comments)), text="hello")
    await rig.adapter.send_comment_reply(reply)
    with pytest.raises(MessengerError, match="not on the wall"):
        await rig.adapter.send_comment_reply(OutgoingCommentReply(chat="14", post_id="-5_1", comment_id="1", text="x"))
    assert len(rig.events) == 1


# -- sends ------------------------------------------------------------------------------------------


async def test_long_text_goes_in_one_execute(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(21, "tell me everything")
    text = ("word " * 1000).strip() + "\n\n" + ("more " * 200).strip()
    result = await rig.adapter.send_message(OutgoingMessage(chat="21", text=text, dedup_key="amo-long"))
    assert len(result.message_ids) == 2
    assert [m.text for m in fake.received(21)] == [("word " * 819).strip(), text[len("word " * 819) :]]
    assert [c.method for c in fake.calls if not c.via_execute][-1] == "execute"
    again = await rig.adapter.send_message(OutgoingMessage(chat="21", text=text, dedup_key="amo-long"))
    assert again == result, "random_id makes VK recognise the retry"
    assert len(fake.received(21)) == 2


async def test_media_is_uploaded_through_vks_upload_servers(
    make_adapter: Callable[..., Rig], fake: FakeVK, files: object
) -> None:
    rig = make_adapter()
    await fake.client_writes(22, "send the catalogue")
    pictures = (Attachment(kind="picture", url=f"{FILES}/cat.jpg", file_name="cat.jpg"),)
    await rig.adapter.send_message(OutgoingMessage(chat="22", text="cat", attachments=pictures, dedup_key="m1"))
    document = (Attachment(kind="file", url=f"{FILES}/report.pdf", file_name="report.pdf"),)
    await rig.adapter.send_message(OutgoingMessage(chat="22", attachments=document, dedup_key="m2"))
    voice = (Attachment(kind="voice", url=f"{FILES}/note.ogg"),)
    await rig.adapter.send_message(OutgoingMessage(chat="22", attachments=voice, dedup_key="m3"))
    not_a_photo = (Attachment(kind="picture", url=f"{FILES}/notes.png"),)
    await rig.adapter.send_message(OutgoingMessage(chat="22", attachments=not_a_photo, dedup_key="m4"))
    got = fake.received(22)
    assert [(m.kind, m.text) for m in got] == [("picture", "cat"), ("file", ""), ("voice", ""), ("file", "")]
    assert got[1].file_name == "report.pdf"
    assert not [key for key in rig.state.data if key.startswith("upload:")], "upload notes are cleared"


async def test_retried_send_does_not_upload_twice(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(23, "hi")
    fake.fail_next(1, 10, method="messages.send")
    message = OutgoingMessage(
        chat="23", attachments=(Attachment(kind="file", url=f"{FILES}/report.pdf"),), dedup_key="m5"
    )
    with pytest.raises(MessengerError) as failed:
        await rig.adapter.send_message(message)
    assert failed.value.retryable
    await rig.adapter.send_message(message)
    assert len(fake.calls_to("docs.save")) == 1
    assert len(fake.received(23)) == 1


async def test_list_messages_and_quotes(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(24, "which slot?")
    rows = tuple(ListRow(callback_data=f"slot-{n}", title=f"Slot {n}") for n in range(8))
    menu = ListMessage(body="Choose a slot", button="Slots", sections=(ListSection(title="", rows=rows),))
    await rig.adapter.send_message(OutgoingMessage(chat="24", list_message=menu, dedup_key="l1"))
    await rig.adapter.send_message(OutgoingMessage(chat="24", text="noted", reply_to="1", dedup_key="l2"))
    menu_got, quote = fake.received(24)
    assert menu_got.list_message is not None and len(menu_got.list_message.sections[0].rows) == 8
    assert quote.reply_to == "1"
    await fake.client_presses(24, "slot-7")
    press = rig.events[-1]
    assert isinstance(press, InboundMessage) and press.callback_data == "slot-7"


async def test_reactions_and_typing_out(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(25, "thanks")
    await rig.adapter.send_reaction(OutgoingReaction(chat="25", message_id="1", emoji="❤"))
    await rig.adapter.send_reaction(OutgoingReaction(chat="25", message_id="1", removed=True))
    with pytest.raises(MessengerError, match="does not offer"):
        await rig.adapter.send_reaction(OutgoingReaction(chat="25", message_id="1", emoji="🦄"))
    with pytest.raises(MessengerError, match="comment"):
        await rig.adapter.send_reaction(OutgoingReaction(chat="25", message_id="comment:-1_2:3", emoji="👍"))
    await rig.adapter.send_typing(OutgoingTyping(chat="25", until=0))
    await rig.adapter.send_typing(OutgoingTyping(chat="25", until=0, post_id="-1_1"))
    assert [(r.message_id, r.emoji) for r in fake.received_reactions(25)] == [("1", "❤️"), ("1", "")]
    assert fake.received_typing(25) == 1


async def test_a_client_who_never_allowed_messages(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    post = await fake.publish_post("Post")
    await fake.client_comments(31, post, "details in private, please")
    with pytest.raises(MessengerError) as refused:
        await rig.adapter.send_message(OutgoingMessage(chat="31", text="Here you go", dedup_key="p1"))
    assert (refused.value.reason, refused.value.code) == ("blocked", 901)
    assert "answer in the comments" in refused.value.description
    calls = len(fake.calls_to("messages.send"))
    with pytest.raises(MessengerError, match="not allowed"):
        await rig.adapter.send_message(OutgoingMessage(chat="31", text="Here you go", dedup_key="p2"))
    assert len(fake.calls_to("messages.send")) == calls, "the second refusal needs no call"
    await fake.client_allows(31)
    await rig.adapter.send_message(OutgoingMessage(chat="31", text="Here you go", dedup_key="p3"))
    await fake.client_denies(31)
    with pytest.raises(MessengerError, match="not allowed"):
        await rig.adapter.send_message(OutgoingMessage(chat="31", text="one more", dedup_key="p4"))
    fake.client_blacklists(31)
    await fake.client_writes(31, "hi again")
    with pytest.raises(MessengerError, match="blacklisted") as blacklisted:
        await rig.adapter.send_message(OutgoingMessage(chat="31", text="sorry", dedup_key="p5"))
    assert blacklisted.value.reason == "blocked"
    assert [m.text for m in fake.received(31)] == ["Here you go"]


@pytest.mark.parametrize(
    ("code", "kind", "reason", "retryable"),
    [
        (6, RateLimited, "rate_limited", True),
        (9, RateLimited, "rate_limited", True),
        (29, RateLimited, "rate_limited", True),
        (10, MessengerError, "other", True),
        (5, MessengerError, "disabled", False),
        (27, MessengerError, "disabled", False),
        (14, MessengerError, "other", False),
        (15, MessengerError, "other", False),
    ],
)
async def test_errors_map_to_neutral_reasons(
    make_adapter: Callable[..., Rig], fake: FakeVK, code: int, kind: type[Exception], reason: str, retryable: bool
) -> None:
    rig = make_adapter()
    await fake.client_writes(41, "hi")
    fake.fail_next(1, code, method="messages.send")
    with structlog.testing.capture_logs() as logs, pytest.raises(kind) as failed:
        await rig.adapter.send_message(OutgoingMessage(chat="41", text="answer", dedup_key=f"e{code}"))
    assert isinstance(failed.value, MessengerError)
    assert any(log["log_level"] == "error" for log in logs) is (reason == "disabled"), "a bad token is loud"
    assert (failed.value.reason, failed.value.retryable, failed.value.code) == (reason, retryable, code)
    if code == 15:
        assert failed.value.description == "Access denied"


async def test_too_long_after_all_is_sent_shorter(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter()
    await fake.client_writes(42, "hi")
    fake.fail_next(1, 914, method="messages.send")
    result = await rig.adapter.send_message(OutgoingMessage(chat="42", text="x " * 1500, dedup_key="t1"))
    assert len(result.message_ids) == 3
    assert "".join(m.text for m in fake.received(42)).replace(" ", "") == "x" * 1500


def test_random_id_is_stable_and_an_int32() -> None:
    assert random_id("amo-1") == random_id("amo-1") != random_id("amo-1", 1)
    assert all(0 < random_id(f"k{n}") < 2**31 for n in range(1000))


# -- lifecycle --------------------------------------------------------------------------------------


async def test_startup_sets_up_the_callback_server(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(configure=True)
    await rig.adapter.startup()
    (server,) = fake.servers.values()
    assert (server.url, server.secret_key, server.title) == (PUBLIC, SECRET, "amoconnect")
    assert {"message_new", "wall_reply_new", "message_reaction_event", "message_read"} <= server.events
    assert "message_reply" in server.events  # capability echoes
    await fake.client_writes(51, "hello")
    assert [e.text for e in rig.events if isinstance(e, InboundMessage)] == ["hello"]
    rig2 = make_adapter(configure=True, server=False)  # a restart updates the same server
    await rig2.adapter.startup()
    assert len(fake.servers) == 1


async def test_startup_refuses_a_bad_token(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    rig = make_adapter(token="wrong")
    with pytest.raises(ConfigError, match="check token and group_id"):
        await rig.adapter.startup()


async def test_failed_setup_is_retried_in_the_background(make_adapter: Callable[..., Rig], fake: FakeVK) -> None:
    from vk_rig import running

    rig = make_adapter(configure=True)
    fake.fail_next(2, 10, method="groups.getCallbackServers")
    await rig.adapter.startup()
    assert not fake.servers
    async with running(rig.adapter):
        await eventually(lambda: bool(fake.servers))
