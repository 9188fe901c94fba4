"""The fake Bot API itself: envelope, bodies, validation, updates, files; checked against aiogram."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup
from amoconnect.testing.servers import serve_app
from telegram_peer import check_update

from amoconnect_telegram.fake import FakeTelegram

pytestmark = pytest.mark.anyio


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://api.telegram.test"
    ) as client:
        yield client


async def call(bot: httpx.AsyncClient, fake: FakeTelegram, method: str, **params: Any) -> dict[str, Any]:
    response = await bot.post(f"/bot{fake.token}/{method}", json=params)
    body: dict[str, Any] = response.json()
    assert response.status_code == (200 if body["ok"] else body["error_code"])
    return body


def test_the_checker_catches_keys_aiogram_does_not_know() -> None:
    update = {
        "update_id": 1,
        "message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private", "colour": "red"}, "text": "x"},
    }
    with pytest.raises(AssertionError, match=r"\$\.message\.chat\.colour"):
        check_update(update)


async def test_every_client_update_is_what_aiogram_expects(fake: FakeTelegram) -> None:
    fake.allowed_updates = frozenset(
        {"message", "edited_message", "callback_query", "message_reaction", "my_chat_member"}
    )
    chat = fake.add_client("Anna", last_name="K", username="anna")
    first = await fake.client_writes(chat, "hi")
    assert first is not None
    await fake.client_writes(chat, "again", reply_to=first["message"]["message_id"], forwarded=True)
    for kind in ("photo", "document", "video", "animation", "voice", "audio", "video_note", "sticker"):
        await fake.client_sends(chat, kind, b"bytes", caption="c", file_name="f.bin")
    await fake.client_sends_location(chat, 1.5, 2.5)
    await fake.client_sends_venue(chat, 1.5, 2.5, "Place", "Street 1")
    await fake.client_sends_contact(chat, "+1555", "Bob", "Smith")
    await fake.client_edits(chat, first["message"]["message_id"], "hi!")
    await fake.client_reacts(chat, first["message"]["message_id"], "👍")
    await fake.client_blocks(chat)
    await fake.client_unblocks(chat)
    assert len(fake.updates) == 17
    for update in fake.updates:
        check_update(update)


async def test_envelope_token_and_unknown_method(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    me = await call(bot, fake, "getMe")
    assert me["ok"] is True
    assert me["result"]["is_bot"] is True
    response = await bot.post("/bot1:wrong/getMe")
    assert (response.status_code, response.json()) == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    assert (await call(bot, fake, "noSuchMethod"))["error_code"] == 404
    assert (await call(bot, fake, "GETME"))["ok"] is True  # method names are case-insensitive


async def test_form_and_multipart_bodies_with_nested_json(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    keyboard = json.dumps({"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]})
    response = await bot.post(
        f"/bot{fake.token}/sendMessage", data={"chat_id": str(chat), "text": "form", "reply_markup": keyboard}
    )
    assert response.json()["result"]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a"
    response = await bot.post(
        f"/bot{fake.token}/sendDocument",
        data={"chat_id": str(chat), "caption": "doc", "reply_markup": keyboard},
        files={"document": ("a.txt", b"hello", "text/plain")},
    )
    result = response.json()["result"]
    assert result["document"]["file_name"] == "a.txt"
    assert fake.sent[-1].content == b"hello"
    response = await bot.post(
        f"/bot{fake.token}/sendMessage", data={"chat_id": str(chat), "text": "x", "reply_markup": "{"}
    )
    assert response.json()["description"] == "Bad Request: can't parse reply keyboard markup JSON object"
    response = await bot.get(f"/bot{fake.token}/sendMessage", params={"chat_id": str(chat), "text": "by query"})
    assert response.json()["ok"] is True


@pytest.mark.parametrize(
    ("method", "params", "status", "description"),
    [
        ("sendMessage", {"chat_id": 999, "text": "x"}, 400, "Bad Request: chat not found"),
        ("sendMessage", {"chat_id": "CHAT", "text": " "}, 400, "Bad Request: message text is empty"),
        ("sendMessage", {"chat_id": "CHAT", "text": "x" * 4097}, 400, "Bad Request: message is too long"),
        ("sendMessage", {"chat_id": "CHAT", "text": "😀" * 2049}, 400, "Bad Request: message is too long"),
        (
            "sendMessage",
            {"chat_id": "CHAT", "text": "x", "reply_parameters": {"message_id": 77}},
            400,
            "Bad Request: message to be replied not found",
        ),
        (
            "sendMessage",
            {
                "chat_id": "CHAT",
                "text": "x",
                "reply_markup": {"inline_keyboard": [[{"text": "a", "callback_data": "x" * 65}]]},
            },
            400,
            "Bad Request: BUTTON_DATA_INVALID",
        ),
        (
            "sendMessage",
            {"chat_id": "CHAT", "text": "x", "reply_markup": {"inline_keyboard": [[{"text": "a"}]]}},
            400,
            "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
        ),
        (
            "sendMessage",
            {"chat_id": "CHAT", "text": "x", "reply_markup": {"inline_keyboard": [[{"text": "a", "url": "ftp://x"}]]}},
            400,
            "Bad Request: BUTTON_URL_INVALID",
        ),
        (
            "sendPhoto",
            {"chat_id": "CHAT", "photo": "not-a-file"},
            400,
            "Bad Request: wrong file identifier/HTTP URL specified",
        ),
        (
            "sendPhoto",
            {"chat_id": "CHAT", "photo": "http://files.test/report.pdf"},
            400,
            "Bad Request: wrong type of the web page content",
        ),
        (
            "sendPhoto",
            {"chat_id": "CHAT", "photo": "http://files.test/missing.jpg"},
            400,
            "Bad Request: failed to get HTTP URL content",
        ),
        (
            "sendPhoto",
            {"chat_id": "CHAT", "photo": "http://files.test/cat.jpg", "caption": "c" * 1025},
            400,
            "Bad Request: message caption is too long",
        ),
        (
            "sendChatAction",
            {"chat_id": "CHAT", "action": "dancing"},
            400,
            "Bad Request: wrong parameter action in request",
        ),
        (
            "setMessageReaction",
            {"chat_id": "CHAT", "message_id": 1, "reaction": [{"type": "emoji", "emoji": "❤️"}]},
            400,
            "Bad Request: REACTION_INVALID",
        ),
        (
            "setMessageReaction",
            {
                "chat_id": "CHAT",
                "message_id": 1,
                "reaction": [{"type": "emoji", "emoji": "👍"}, {"type": "emoji", "emoji": "🔥"}],
            },
            400,
            "Bad Request: REACTIONS_TOO_MANY",
        ),
        (
            "setMessageReaction",
            {"chat_id": "CHAT", "message_id": 55, "reaction": []},
            400,
            "Bad Request: MESSAGE_ID_INVALID",
        ),
        (
            "setWebhook",
            {"url": "http://x.test/hook", "secret_token": "bad token!"},
            400,
            "Bad Request: secret token contains unallowed characters",
        ),
        ("getFile", {"file_id": "nope"}, 400, "Bad Request: invalid file_id"),
        (
            "answerCallbackQuery",
            {"callback_query_id": "nope"},
            400,
            "Bad Request: query is too old and response timeout expired or query ID is invalid",
        ),
    ],
)
async def test_validation_gives_telegrams_errors(
    bot: httpx.AsyncClient, fake: FakeTelegram, method: str, params: dict[str, Any], status: int, description: str
) -> None:
    chat = fake.add_client()
    await fake.client_writes(chat, "message 1")
    params = {key: chat if value == "CHAT" else value for key, value in params.items()}
    body = await call(bot, fake, method, **params)
    assert (body["error_code"], body["description"]) == (status, description)


async def test_unknown_parameters_are_refused(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    body = await call(bot, fake, "sendMessage", chat_id=chat, text="x", reply_to_message_idd=3)
    assert body["error_code"] == 400
    assert "reply_to_message_idd" in body["description"]


async def test_blocked_client_answers_403(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    await fake.client_blocks(chat)
    body = await call(bot, fake, "sendMessage", chat_id=chat, text="x")
    assert (body["error_code"], body["description"]) == (403, "Forbidden: bot was blocked by the user")


async def test_a_user_who_never_started_the_bot_cannot_be_written_first(
    bot: httpx.AsyncClient, fake: FakeTelegram
) -> None:
    chat = fake.add_client(started=False)
    body = await call(bot, fake, "sendMessage", chat_id=chat, text="x")
    assert (body["error_code"], body["description"]) == (403, "Forbidden: bot can't initiate conversation with a user")
    await fake.client_writes(chat, "/start")
    assert (await call(bot, fake, "sendMessage", chat_id=chat, text="x"))["ok"] is True


async def test_fail_next_429_with_retry_after(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    fake.fail_next(2, 429, retry_after=3, method="sendMessage")
    assert (await call(bot, fake, "getMe"))["ok"] is True
    for _ in range(2):
        body = await call(bot, fake, "sendMessage", chat_id=chat, text="x")
        assert body == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        }
    assert (await call(bot, fake, "sendMessage", chat_id=chat, text="x"))["ok"] is True


async def test_get_updates_offsets_long_poll_and_allowed_updates(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    written = await fake.client_writes(chat, "one")
    assert written is not None
    assert await fake.client_reacts(chat, written["message"]["message_id"], "👍") is None  # not asked for
    await fake.client_writes(chat, "two")
    updates = (await call(bot, fake, "getUpdates"))["result"]
    assert [u["message"]["text"] for u in updates] == ["one", "two"]
    again = (await call(bot, fake, "getUpdates", offset=updates[0]["update_id"] + 1))["result"]
    assert [u["message"]["text"] for u in again] == ["two"]  # "one" is confirmed and gone
    last = again[-1]["update_id"]

    async def write_later() -> None:
        await anyio.sleep(0.1)
        await fake.client_writes(chat, "three")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(write_later)
        with anyio.fail_after(3):
            polled = (await call(bot, fake, "getUpdates", offset=last + 1, timeout=5, allowed_updates=["message"]))[
                "result"
            ]
    assert [u["message"]["text"] for u in polled] == ["three"]
    body = await call(bot, fake, "getUpdates", offset=polled[0]["update_id"] + 1, timeout=0)
    assert body["result"] == []


async def test_get_updates_conflicts(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    assert (await call(bot, fake, "setWebhook", url="http://connector.test/hook"))["ok"] is True
    body = await call(bot, fake, "getUpdates")
    assert body["error_code"] == 409
    assert "webhook is active" in body["description"]
    assert (await call(bot, fake, "deleteWebhook"))["ok"] is True
    results: list[dict[str, Any]] = []

    async def poll() -> None:
        results.append(await call(bot, fake, "getUpdates", timeout=5))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(poll)
        await anyio.sleep(0.05)
        results.append(await call(bot, fake, "getUpdates", timeout=0))
    assert sorted(r.get("error_code", 200) for r in results) == [200, 409]


async def test_webhook_delivery_retries_and_keeps_pending(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    statuses = iter([500, 200, 200])
    seen: list[httpx.Request] = []

    def hook(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(statuses))

    fake.http = httpx.AsyncClient(transport=httpx.MockTransport(hook))
    await call(bot, fake, "setWebhook", url="http://connector.test/hook", secret_token="s3cret")
    chat = fake.add_client()
    await fake.client_writes(chat, "hello")
    assert [d.status for d in fake.deliveries] == [500, 200]
    assert seen[0].headers["X-Telegram-Bot-Api-Secret-Token"] == "s3cret"
    assert fake.pending == []
    fake.http = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(502)))
    await fake.client_writes(chat, "lost for now")
    info = (await call(bot, fake, "getWebhookInfo"))["result"]
    assert info["pending_update_count"] == 1
    assert info["last_error_message"] == "Wrong response from the webhook: 502"
    fake.http = httpx.AsyncClient(transport=httpx.MockTransport(hook))
    await fake.deliver_pending()
    assert fake.pending == []


async def test_get_file_and_download(bot: httpx.AsyncClient, fake: FakeTelegram) -> None:
    chat = fake.add_client()
    update = await fake.client_sends(chat, "document", b"%PDF", file_name="a.pdf", mime_type="application/pdf")
    assert update is not None
    file_id = update["message"]["document"]["file_id"]
    file = (await call(bot, fake, "getFile", file_id=file_id))["result"]
    response = await bot.get(f"/file/bot{fake.token}/{file['file_path']}")
    assert (response.status_code, response.content) == (200, b"%PDF")
    assert (await bot.get(f"/file/bot1:wrong/{file['file_path']}")).status_code == 404


async def test_aiogram_drives_the_fake_over_http(fake: FakeTelegram) -> None:
    """An independent client (aiogram, multipart bodies over aiohttp) gets what it expects."""
    chat = fake.add_client("Anna")
    async with serve_app(fake) as base_url:
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(base_url)))
        try:
            me = await bot.get_me()
            assert me.username == "amoconnect_test_bot"
            keyboard = InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go")]])
            sent = await bot.send_message(chat, "hello from aiogram", reply_markup=keyboard)
            assert sent.reply_markup is not None
            assert sent.reply_markup.inline_keyboard[0][0].callback_data == "go"
            photo = await bot.send_photo(chat, BufferedInputFile(b"\xff\xd8 jpeg", filename="p.jpg"), caption="pic")
            assert photo.photo is not None
            file = await bot.get_file(photo.photo[-1].file_id)
            assert file.file_path is not None
            downloaded = await bot.download_file(file.file_path)
            assert downloaded is not None
            assert downloaded.read() == b"\xff\xd8 jpeg"
            assert await bot.set_message_reaction(chat, sent.message_id, [{"type": "emoji", "emoji": "👍"}])  # type: ignore[list-item]
        finally:
            await bot.session.close()
    assert [m.kind for m in fake.sent_to(chat)] == ["text", "photo"]
