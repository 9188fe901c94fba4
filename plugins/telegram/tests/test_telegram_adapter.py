"""The adapter against the fake Bot API, in-process: webhooks in, every kind of send out, errors mapped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from amoconnect.adapter import WebhookRequest
from amoconnect.errors import ConfigError, MessengerError, RateLimited, SignatureError
from amoconnect.logging import scrubber
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
    OutgoingReaction,
    OutgoingTyping,
)
from amoconnect.testing.kit import eventually
from telegram_rig import FILES, PUBLIC, Files, Rig, running

from amoconnect_telegram.botapi import ALLOWED_UPDATES, SECRET_TOKEN_HEADER
from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio

MakeAdapter = Callable[..., Rig]


async def started(make_adapter: MakeAdapter, **settings: object) -> Rig:
    rig = make_adapter(**settings)
    await rig.adapter.startup()
    return rig


# -- startup --------------------------------------------------------------------------------------


async def test_startup_registers_the_webhook_with_secret_and_update_kinds(
    make_adapter: MakeAdapter, fake: FakeTelegram
) -> None:
    rig = await started(make_adapter)
    assert fake.webhook_url == PUBLIC
    assert fake.webhook_secret == rig.adapter.secret_token
    assert set(ALLOWED_UPDATES) <= fake.allowed_updates
    assert "message_reaction" in fake.allowed_updates
    assert rig.adapter.bot is not None
    assert rig.adapter.bot["username"] == "amoconnect_test_bot"
    (call,) = fake.calls_to("setWebhook")
    assert call.params["allowed_updates"] == list(ALLOWED_UPDATES)
    # The derived secret is in no configuration, yet no log line shows it.
    assert scrubber([])(f"secret_token={rig.adapter.secret_token}") == "secret_token=[redacted]"


async def test_unregister_removes_the_webhook_of_a_removed_source(
    make_adapter: MakeAdapter, fake: FakeTelegram
) -> None:
    rig = await started(make_adapter)
    assert fake.webhook_url == PUBLIC
    await rig.adapter.unregister()
    assert fake.webhook_url == ""
    assert len(fake.calls_to("deleteWebhook")) == 1
    polling = await started(make_adapter, mode="polling")
    await polling.adapter.unregister()  # no webhook to remove: nothing more is asked
    assert len(fake.calls_to("deleteWebhook")) == 2


async def test_explicit_secret_token_is_used(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    await started(make_adapter, secret_token="my-Secret_1")
    assert fake.webhook_secret == "my-Secret_1"


async def test_startup_with_a_wrong_token_is_a_config_error(make_adapter: MakeAdapter) -> None:
    rig = make_adapter(token="1:wrong")
    with pytest.raises(ConfigError, match="BotFather"):
        await rig.adapter.startup()


async def test_startup_without_public_url_registers_nothing(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    await started(make_adapter, public_url=None)
    assert fake.calls_to("setWebhook") == []


async def test_startup_in_polling_mode_removes_the_webhook(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    fake.webhook_url = "http://old.example/hook"
    await started(make_adapter, mode="polling")
    assert fake.webhook_url == ""
    assert len(fake.calls_to("deleteWebhook")) == 1


async def test_setwebhook_retried_in_the_background_when_telegram_is_down(
    make_adapter: MakeAdapter, fake: FakeTelegram
) -> None:
    fake.fail_next(1, 502, method="setWebhook")
    rig = make_adapter()
    rig.adapter.retry_pause = 0.01  # type: ignore[misc]
    await rig.adapter.startup()
    assert fake.webhook_url == ""
    async with running(rig.adapter):
        await eventually(lambda: fake.webhook_url == PUBLIC)


async def test_startup_reports_how_updates_arrive(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    def reporting(**settings: object) -> tuple[Rig, list[str]]:
        rig, reported = make_adapter(**settings), []
        rig.adapter.context = dataclasses.replace(rig.adapter.context, intake=reported.append)
        return rig, reported

    rig, reported = reporting()
    await rig.adapter.startup()
    assert reported == ["webhook"]
    rig, reported = reporting(mode="polling")
    await rig.adapter.startup()
    assert reported == ["polling"]
    rig, reported = reporting(public_url=None)
    await rig.adapter.startup()
    assert reported == ["not_registered"]
    # Telegram down at start: not registered, until the background retry registers it.
    fake.fail_next(1, 502, method="setWebhook")
    rig, reported = reporting()
    rig.adapter.retry_pause = 0.01  # type: ignore[misc]
    await rig.adapter.startup()
    assert reported == ["not_registered"]
    async with running(rig.adapter):
        await eventually(lambda: reported == ["not_registered", "webhook"])


# -- webhooks in ------------------------------------------------------------------------------------


async def test_webhook_secret_is_checked(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client("Anna")
    fake.webhook_secret = "not-the-secret"
    await fake.client_writes(chat, "hello")
    assert rig.receiver.refused == fake.delivery_attempts
    assert rig.events == []
    assert len(fake.pending) == 1  # Telegram keeps it and tries again later
    with pytest.raises(SignatureError, match="missing"):
        await rig.adapter.verify(WebhookRequest(method="POST", body=b"{}"))


async def test_polling_instance_refuses_webhooks(make_adapter: MakeAdapter) -> None:
    rig = make_adapter(mode="polling")
    headers = httpx.Headers({SECRET_TOKEN_HEADER: rig.adapter.secret_token})
    with pytest.raises(SignatureError, match="polling"):
        await rig.adapter.verify(WebhookRequest(method="POST", headers=headers, body=b"{}"))


async def test_text_reply_forward_and_duplicate(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client("Anna", last_name="K", username="anna")
    first = await fake.client_writes(chat, "hello")
    assert first is not None
    fake.duplicate_next()
    await fake.client_writes(chat, "see above", reply_to=first["message"]["message_id"], forwarded=True)
    hello, again, duplicate = rig.events
    assert isinstance(hello, InboundMessage)
    assert (hello.chat, hello.text, hello.sender.name, hello.sender.username) == (str(chat), "hello", "Anna K", "anna")
    assert hello.dedup_key == str(first["update_id"])
    assert isinstance(again, InboundMessage)
    assert again.reply_to == hello.message_id
    assert again.forwarded
    assert duplicate == again  # same update_id: the core's dedup drops the second


@pytest.mark.parametrize(
    ("kind", "neutral", "file_name"),
    [
        ("photo", "picture", ""),
        ("document", "file", "report.pdf"),
        ("video", "video", "clip.mp4"),
        ("animation", "video", "fun.mp4"),
        ("voice", "voice", ""),
        ("audio", "audio", "song.mp3"),
        ("video_note", "video", "video_note.mp4"),
        ("sticker", "sticker", "sticker.webp"),
    ],
)
async def test_each_media_kind_comes_in_with_a_fetch_handle(
    make_adapter: MakeAdapter, fake: FakeTelegram, kind: str, neutral: str, file_name: str
) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client()
    content = f"{kind} bytes".encode()
    await fake.client_sends(chat, kind, content, caption="caption!", file_name=file_name)
    (event,) = rig.events
    assert isinstance(event, InboundMessage)
    (attachment,) = event.attachments
    assert attachment.kind == neutral
    assert attachment.url is None
    assert attachment.fetch is not None
    assert fake.token not in attachment.fetch
    if file_name:
        assert attachment.file_name == file_name
    assert event.text == "caption!"
    fetched = await rig.adapter.fetch_media(attachment.fetch)
    assert fetched.content == content
    assert fetched.size == len(content)


async def test_location_venue_contact(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client()
    await fake.client_sends_location(chat, 55.75, 37.61)
    await fake.client_sends_venue(chat, 59.93, 30.31, "Hermitage", "Palace Square 2")
    await fake.client_sends_contact(chat, "+79990001122", "Ivan", "Petrov")
    location, venue, contact = rig.events
    assert isinstance(location, InboundMessage)
    assert location.location is not None
    assert (location.location.lat, location.location.lon) == (55.75, 37.61)
    assert isinstance(venue, InboundMessage)
    assert venue.location is not None
    assert venue.text == "Hermitage\nPalace Square 2"
    assert isinstance(contact, InboundMessage)
    assert contact.contact is not None
    assert (contact.contact.name, contact.contact.phone) == ("Ivan Petrov", "+79990001122")


async def test_edit_and_reactions(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client()
    sent = await fake.client_writes(chat, "helo")
    assert sent is not None
    message_id = sent["message"]["message_id"]
    await fake.client_edits(chat, message_id, "hello")
    await fake.client_reacts(chat, message_id, "👍")
    await fake.client_reacts(chat, message_id, "🔥")
    await fake.client_reacts(chat, message_id)
    _, edit, *reactions = rig.events
    assert isinstance(edit, InboundEdit)
    assert (edit.message_id, edit.text) == (str(message_id), "hello")
    assert [(r.emoji, r.removed) for r in reactions if isinstance(r, InboundReaction)] == [
        ("👍", False),
        ("👍", True),
        ("🔥", False),
        ("🔥", True),
    ]
    assert len({r.dedup_key for r in reactions}) == 4


async def test_button_press_comes_in_and_is_answered(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client()
    result = await rig.adapter.send_message(
        OutgoingMessage(chat=str(chat), text="Choose", buttons=((Button(text="Yes please", callback_data="yes"),),))
    )
    async with running(rig.adapter):
        await fake.client_presses(chat, int(result.message_ids[0]), "yes")
        await eventually(lambda: len(fake.answered_callbacks) == 1)
    (event,) = rig.events
    assert isinstance(event, InboundMessage)
    assert (event.text, event.callback_data) == ("Yes please", "yes")


async def test_blocked_bot_fails_fast_and_unblock_restores(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = await started(make_adapter)
    chat = fake.add_client()
    async with running(rig.adapter):
        await fake.client_blocks(chat)
        await eventually(lambda: f"blocked:{chat}" in rig.state.data)
        calls = len(fake.calls)
        with pytest.raises(MessengerError) as info:
            await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
        assert info.value.reason == "blocked"
        assert len(fake.calls) == calls  # refused without asking Telegram
        await fake.client_unblocks(chat)
        await eventually(lambda: f"blocked:{chat}" not in rig.state.data)
    result = await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="welcome back"))
    assert result.status == "delivered"


# -- sends out --------------------------------------------------------------------------------------


async def test_text_is_delivered_and_long_text_split_in_order(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    result = await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert result.status == "delivered"
    assert [m.text for m in fake.sent_to(chat)] == ["hi"]
    text = " ".join(f"w{i}" for i in range(3000))  # 16,889 characters
    result = await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text=text, dedup_key="m2"))
    parts = fake.sent_to(chat)[1:]
    assert len(text) == 16889
    assert len(result.message_ids) == len(parts) == 5
    assert list(result.message_ids) == [str(p.message_id) for p in parts]
    assert " ".join(p.text for p in parts) == text
    assert rig.state.data == {}  # progress of the split is forgotten once done


async def test_split_send_resumes_after_a_failure(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    """A retry of a split message sends only the parts that did not go out."""
    rig = make_adapter()
    chat = fake.add_client()
    message = OutgoingMessage(chat=str(chat), text="x" * 5000, dedup_key="amo-1")
    real_call = rig.adapter.api.call
    attempts = 0

    async def second_call_fails(method: str, params: dict[str, Any] | None = None, **options: Any) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            raise MessengerError("Telegram sendMessage got no answer", retryable=True)
        return await real_call(method, params, **options)

    rig.adapter.api.call = second_call_fails  # type: ignore[method-assign]
    with pytest.raises(MessengerError):
        await rig.adapter.send_message(message)
    assert len(fake.sent_to(chat)) == 1
    result = await rig.adapter.send_message(message)
    parts = fake.sent_to(chat)
    assert len(parts) == 2
    assert list(result.message_ids) == [str(p.message_id) for p in parts]
    assert "".join(p.text for p in parts) == message.text


async def test_media_by_url_with_caption_buttons_and_reply(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    quoted = await fake.client_writes(chat, "send me the cat")
    assert quoted is not None
    picture = Attachment(kind="picture", url=f"{FILES}/cat.jpg")
    message = OutgoingMessage(
        chat=str(chat),
        text="here",
        attachments=(picture,),
        buttons=((Button(text="More", url="https://example.com/cats"),),),
        reply_to=str(quoted["message"]["message_id"]),
    )
    result = await rig.adapter.send_message(message)
    (sent,) = fake.sent_to(chat)
    assert (sent.method, sent.kind, sent.text, sent.media) == ("sendPhoto", "photo", "here", f"{FILES}/cat.jpg")
    assert sent.content == b"\xff\xd8\xff jpeg bytes"
    assert sent.reply_to == quoted["message"]["message_id"]
    assert sent.buttons == [[{"text": "More", "url": "https://example.com/cats"}]]
    assert result.message_ids == (str(sent.message_id),)


@pytest.mark.parametrize(
    ("kind", "path", "method"),
    [
        ("picture", "/cat.jpg", "sendPhoto"),
        ("file", "/report.pdf", "sendDocument"),
        ("video", "/clip.mp4", "sendVideo"),
        ("voice", "/note.ogg", "sendVoice"),
        ("audio", "/song.mp3", "sendAudio"),
        ("sticker", "/sticker.webp", "sendSticker"),
    ],
)
async def test_media_upload_when_telegram_cannot_fetch_the_url(
    make_adapter: MakeAdapter, fake: FakeTelegram, files: Files, kind: str, path: str, method: str
) -> None:
    fake.fetch_http = None  # Telegram cannot reach the URL
    rig = make_adapter()
    chat = fake.add_client()
    attachment = Attachment(kind=kind, url=f"{FILES}{path}", file_name="")  # type: ignore[arg-type]
    await rig.adapter.send_message(OutgoingMessage(chat=str(chat), attachments=(attachment,)))
    (sent,) = fake.sent_to(chat)
    assert sent.method == method
    assert sent.media is None  # uploaded
    assert sent.content == files.content[path][0]
    assert sent.file_name == path.lstrip("/")
    failed, uploaded = fake.calls_to(method)
    assert failed.status == 400
    assert uploaded.files


async def test_caption_overflow_follows_as_text(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    text = "word " * 300
    attachment = Attachment(kind="file", url=f"{FILES}/report.pdf", file_name="report.pdf")
    result = await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text=text, attachments=(attachment,)))
    document, follow = fake.sent_to(chat)
    assert document.kind == "document"
    assert " ".join(f"{document.text} {follow.text}".split()) == " ".join(text.split())
    assert len(result.message_ids) == 2


async def test_list_message_becomes_inline_keyboard(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    lm = ListMessage(
        body="Which size?",
        button="Sizes",
        sections=(ListSection(title="All", rows=(ListRow(callback_data="s", title="S"), ListRow("m", "M"))),),
    )
    result = await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="Which size?", list_message=lm))
    (sent,) = fake.sent_to(chat)
    assert sent.text == "Which size?"
    assert sent.buttons == [[{"text": "S", "callback_data": "s"}], [{"text": "M", "callback_data": "m"}]]
    await fake.client_presses(chat, int(result.message_ids[0]), "m")


async def test_reactions_set_refused_and_removed(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    written = await fake.client_writes(chat, "thanks")
    assert written is not None
    message_id = str(written["message"]["message_id"])
    await rig.adapter.send_reaction(OutgoingReaction(chat=str(chat), message_id=message_id, emoji="❤️"))
    with pytest.raises(MessengerError, match="does not offer"):
        await rig.adapter.send_reaction(OutgoingReaction(chat=str(chat), message_id=message_id, emoji="🦖"))
    await rig.adapter.send_reaction(OutgoingReaction(chat=str(chat), message_id=message_id, removed=True))
    assert [r.emoji for r in fake.reactions] == [("❤",), ()]


async def test_typing_once_and_kept_up_until_the_deadline(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    now = fake.clock()
    await rig.adapter.send_typing(OutgoingTyping(chat=str(chat), until=now + 5))
    assert [a.action for a in fake.chat_actions] == ["typing"]
    rig.adapter.typing_shows = 0.3  # type: ignore[misc]
    rig.adapter.typing_repeat = 0.1  # type: ignore[misc]
    async with running(rig.adapter):
        await eventually(lambda: rig.adapter._tasks is not None)
        await rig.adapter.send_typing(OutgoingTyping(chat=str(chat), until=fake.clock() + 0.6))
        await eventually(lambda: len(fake.chat_actions) >= 4)
        await eventually(lambda: not rig.adapter._typing_until)
    assert len(fake.chat_actions) <= 6


async def test_a_message_stops_typing(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    rig.adapter.typing_shows = 0.3  # type: ignore[misc]
    rig.adapter.typing_repeat = 0.1  # type: ignore[misc]
    async with running(rig.adapter):
        await eventually(lambda: rig.adapter._tasks is not None)
        await rig.adapter.send_typing(OutgoingTyping(chat=str(chat), until=fake.clock() + 30))
        await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="done"))
        await eventually(lambda: not rig.adapter._typing_until)
        count = len(fake.chat_actions)
    assert count <= 2


# -- errors -----------------------------------------------------------------------------------------


async def test_403_blocked_is_remembered(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    fake.fail_next(1, 403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(MessengerError) as info:
        await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert (info.value.reason, info.value.code) == ("blocked", 403)
    assert rig.state.data == {f"blocked:{chat}": b"1"}
    calls = len(fake.calls)
    fresh = make_adapter(state=rig.state)  # a restart remembers
    with pytest.raises(MessengerError, match="blocked"):
        await fresh.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert len(fake.calls) == calls


async def test_unknown_chat_is_no_chat(make_adapter: MakeAdapter) -> None:
    rig = make_adapter()
    with pytest.raises(MessengerError) as info:
        await rig.adapter.send_message(OutgoingMessage(chat="999", text="hi"))
    assert info.value.reason == "no_chat"
    assert info.value.description == "Bad Request: chat not found"


async def test_429_is_rate_limited_with_telegrams_retry_after(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    fake.fail_next(1, 429, retry_after=7)
    with pytest.raises(RateLimited) as info:
        await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert info.value.retry_after == 7.0
    assert info.value.description == "Too Many Requests: retry after 7"


async def test_5xx_and_network_errors_are_retryable(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    fake.fail_next(1, 502)
    with pytest.raises(MessengerError) as info:
        await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert info.value.retryable
    offline = make_adapter(api_url="http://unreachable.test")
    with pytest.raises(MessengerError) as info:
        await offline.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert info.value.retryable
    assert fake.token not in str(info.value)


async def test_other_refusals_carry_telegrams_description(make_adapter: MakeAdapter, fake: FakeTelegram) -> None:
    rig = make_adapter()
    chat = fake.add_client()
    fake.fail_next(1, 400, description="Bad Request: not enough rights to send photos to the chat")
    with pytest.raises(MessengerError) as info:
        await rig.adapter.send_message(OutgoingMessage(chat=str(chat), text="hi"))
    assert (info.value.reason, info.value.retryable) == ("other", False)
    assert info.value.description == "Bad Request: not enough rights to send photos to the chat"


async def test_fetch_media_of_an_unknown_file(make_adapter: MakeAdapter) -> None:
    rig = make_adapter()
    with pytest.raises(MessengerError, match="invalid file_id"):
        await rig.adapter.fetch_media("nope")
