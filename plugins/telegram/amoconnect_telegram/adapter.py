"""The Telegram adapter: one bot per ``[[sources]]`` entry with ``plugin = "telegram"``.

Updates come in by webhook (``mode = "webhook"``: :meth:`TelegramAdapter.startup` calls
``setWebhook`` at the public URL with a secret token, which :meth:`~TelegramAdapter.verify`
checks in constant time) or by long polling (``mode = "polling"``: :meth:`~TelegramAdapter.run`
loops over ``getUpdates`` and keeps the offset in the instance's state, moving it only once the
events are stored). :mod:`~amoconnect_telegram.updates` turns updates into neutral events and
:mod:`~amoconnect_telegram.compose` sends into Bot API calls.

Buttons: ``callback_data`` holds 1-64 bytes, so a longer value (a Salesbot row's data) goes on
the button as a short key of ``context.button_data``, and a press of it is relayed with the
value amoCRM sent, whole. A press whose key is no longer kept relays nothing: the client is
told, in the press's answer, that the button expired (``expired_button_text``).

Work an update asks for that is not an event runs in the background task :meth:`run` keeps,
so that :meth:`~TelegramAdapter.parse` stays free of other IO: button presses are answered
(``answerCallbackQuery``) and a client who blocked the bot (``my_chat_member`` ``kicked``) is
remembered in the state, so that later sends fail at once as ``blocked`` (amoCRM 901) without
asking Telegram. A 403 "bot was blocked" on a send is remembered the same way.

Manager typing: the core calls :meth:`~TelegramAdapter.send_typing` once per amoCRM typing
hook (at most one per 5 s, each good for 5 s). Telegram shows ``sendChatAction`` for 5 s, so
one call per hook matches; when ``until`` lies further ahead the call is repeated every 4 s by
a background task until ``until``, or until the bot sends the chat a message.
"""

from __future__ import annotations

import collections
import hashlib
import mimetypes
import posixpath
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
import msgspec
from amoconnect.adapter import AdapterContext, FetchedMedia, MessengerAdapter, Route, WebhookRequest, WebhookResponse
from amoconnect.capabilities import Capability, RateLimit, ReactionSet
from amoconnect.errors import ConfigError, MessengerError, RateLimited, SignatureError
from amoconnect.logging import redact
from amoconnect.media import download
from amoconnect.model import (
    Attachment,
    InboundEvent,
    InboundMessage,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    SendResult,
)
from amoconnect.signing import same_secret
from structlog.typing import FilteringBoundLogger

from .botapi import (
    ALLOWED_UPDATES,
    DOWNLOAD_LIMIT,
    MAX_CALLBACK_ANSWER_LENGTH,
    REACTION_EMOJI,
    SECRET_TOKEN_HEADER,
    SECRET_TOKEN_PATTERN,
    TOKEN_PATTERN,
    UPLOAD_LIMIT,
    URL_FETCH_FAILURES,
)
from .client import BotApi, BotApiError
from .compose import Call, chat_param, fits_callback_data, plan_message
from .updates import PRESS_PREFIX, AnswerCallback, ChatBlocked, Effect, Parsed, Update, decode_update, parse_update

__all__ = ["TelegramAdapter", "TelegramSettings"]

_BLOCKED_KEY = "blocked:"
_PARTS_KEY = "parts:"
_OFFSET_KEY = "offset"


class TelegramSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one bot (``[[sources]] settings``)."""

    token: str
    """The bot token from @BotFather (``123456:ABC-...``); write ``"env:NAME"`` to read it from the environment."""
    mode: Literal["webhook", "polling"] = "webhook"
    """``webhook`` (needs ``server.public_url``) or ``polling`` (no public URL needed)."""
    secret_token: str = ""
    """``setWebhook``'s secret (1-256 of ``A-Z a-z 0-9 _ -``); derived from the token when empty."""
    api_url: str = "https://api.telegram.org"
    """Bot API server: Telegram's, a local ``telegram-bot-api`` server, or a fake."""
    polling_timeout: int = 25
    """Seconds one ``getUpdates`` long poll waits for updates (0-50)."""
    drop_pending_updates: bool = False
    """Drop the updates Telegram queued while the connector was away, when registering the webhook."""
    expired_button_text: str = "This button has expired. Please type your answer instead."
    """What a client who presses a button whose long data is no longer kept reads (up to 200 characters)."""

    def __post_init__(self) -> None:
        if not TOKEN_PATTERN.match(self.token):
            raise ValueError("token must be a bot token from @BotFather, like '123456789:AAE...'")
        if self.secret_token and not SECRET_TOKEN_PATTERN.match(self.secret_token):
            raise ValueError("secret_token must be 1-256 characters of A-Z, a-z, 0-9, '_' and '-'")
        if not 1 <= len(self.expired_button_text) <= MAX_CALLBACK_ANSWER_LENGTH:
            raise ValueError(f"expired_button_text must be 1-{MAX_CALLBACK_ANSWER_LENGTH} characters")
        if not 0 <= self.polling_timeout <= 50:
            raise ValueError("polling_timeout must be between 0 and 50 seconds")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url must be an http(s) URL, like 'https://api.telegram.org'")


def _derived_secret(token: str) -> str:
    return hashlib.sha256(b"amoconnect-telegram-webhook\0" + token.encode()).hexdigest()


def _sandbox(**options: Any) -> Any:
    """The fake Bot API for ``amoconnect run --plugin telegram --sandbox`` (imported only then)."""
    from .fake import FakeTelegram

    return FakeTelegram(**options)


class TelegramAdapter(MessengerAdapter):
    """A Telegram bot: private chats and groups, text, media, buttons, replies, edits, reactions and typing.

    Group chats get no rate limit of their own: Telegram allows about 20 messages a minute per
    group, and declaring that for every chat would slow private chats 60-fold, so a group that
    is sent to faster hears a 429 whose ``retry_after`` the relay obeys.
    """

    name = "telegram"
    settings = TelegramSettings
    capabilities = frozenset(
        {
            Capability.typing,
            Capability.reactions,
            Capability.buttons,
            Capability.list_messages,
            Capability.media,
            Capability.edits,
            Capability.replies,
            Capability.delivery_receipts,
        }
    )
    reactions = ReactionSet.of(*REACTION_EMOJI)
    rate_limits = (RateLimit(count=30, per=1.0), RateLimit(count=1, per=1.0, scope="chat"))
    routes = (Route(),)
    sandbox_factory = staticmethod(_sandbox)

    typing_shows: ClassVar[float] = 5.0
    """Seconds Telegram shows one ``sendChatAction``."""
    typing_repeat: ClassVar[float] = 4.0
    """Seconds between two ``sendChatAction`` calls of one long typing spell."""
    retry_pause: ClassVar[float] = 1.0
    """First pause after a failed ``getUpdates`` or ``setWebhook``; doubles up to :attr:`max_retry_pause`."""
    max_retry_pause: ClassVar[float] = 60.0

    config: TelegramSettings

    def __init__(self, config: msgspec.Struct, context: AdapterContext) -> None:
        assert isinstance(config, TelegramSettings)
        super().__init__(config, context)
        self.config = config
        self.api = BotApi(context.http, config.api_url, config.token)
        self.secret_token = config.secret_token or _derived_secret(config.token)
        redact(self.secret_token)  # a derived one is in no configuration: keep it out of the logs too
        self.bot: dict[str, Any] | None = None
        """``getMe``'s answer, once known."""
        self._blocked: dict[str, bool] = {}
        self._effects: collections.deque[Effect] = collections.deque()
        self._wake: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._typing_until: dict[str, float] = {}
        self._typing_sent: dict[str, float] = {}
        self._webhook_pending = False

    @property
    def log(self) -> FilteringBoundLogger:
        """The instance's logger."""
        return self.context.log

    # -- webhooks -------------------------------------------------------------------------------

    async def verify_headers(self, request: WebhookRequest) -> None:
        """Check ``X-Telegram-Bot-Api-Secret-Token`` against the secret given to ``setWebhook``, before the body."""
        if self.config.mode != "webhook":
            raise SignatureError(f"telegram instance {self.context.instance!r} uses long polling and takes no webhooks")
        given = request.headers.get(SECRET_TOKEN_HEADER)
        if given is None:
            raise SignatureError(f"{SECRET_TOKEN_HEADER} header missing: the request does not come from Telegram")
        if not same_secret(given, self.secret_token):
            raise SignatureError(f"{SECRET_TOKEN_HEADER} does not match the webhook's secret_token")

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """The secret token header, as :meth:`verify_headers` checks it; the body carries no signature."""
        await self.verify_headers(request)
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The events of one webhook update; its other work is queued for the background task."""
        return self._take(await self._resolved(parse_update(decode_update(request.body), now=time.time())))

    async def _resolved(self, parsed: Parsed) -> Parsed:
        """``parsed`` with a press's ``callback_data`` as amoCRM sent it; a press of an expired key relays nothing."""
        events: list[InboundEvent] = []
        expired: set[str] = set()
        for event in parsed.events:
            if not isinstance(event, InboundMessage) or event.callback_data is None:
                events.append(event)
                continue
            data = event.callback_data
            value = await self.context.button_data.resolve(data)
            if value is None:
                self.log.info("a button whose data is no longer kept was pressed; the client is told", chat=event.chat)
                expired.add(event.message_id.removeprefix(PRESS_PREFIX))
            elif value == data:
                events.append(event)
            else:
                text = value if event.text == data else event.text  # no button to take the text from
                events.append(msgspec.structs.replace(event, callback_data=value, text=text))
        effects = tuple(
            AnswerCallback(effect.query_id, self.config.expired_button_text)
            if isinstance(effect, AnswerCallback) and effect.query_id in expired
            else effect
            for effect in parsed.effects
        )
        return Parsed(events=tuple(events), effects=effects)

    def _take(self, parsed: Parsed) -> tuple[InboundEvent, ...]:
        for effect in parsed.effects:
            if isinstance(effect, ChatBlocked):
                self._blocked[effect.chat] = effect.blocked
            self._effects.append(effect)
        if parsed.effects and self._wake is not None:
            self._wake.set()
        return parsed.events

    # -- background work ------------------------------------------------------------------------

    async def _apply(self, effect: Effect) -> None:
        try:
            if isinstance(effect, AnswerCallback):
                answer: dict[str, Any] = {"callback_query_id": effect.query_id}
                if effect.text is not None:
                    answer.update(text=effect.text, show_alert=True)
                await self.api.call("answerCallbackQuery", answer)
            elif effect.blocked:
                await self.context.state.set(_BLOCKED_KEY + effect.chat, b"1")
                self.log.info("client blocked the bot; sends to the chat now fail as blocked", chat=effect.chat)
            else:
                await self.context.state.delete(_BLOCKED_KEY + effect.chat)
                self.log.info("client unblocked the bot", chat=effect.chat)
        except Exception as exc:  # best effort: the worker must outlive a failed call or write
            self.log.warning("background work failed", effect=type(effect).__name__, error=str(exc))

    async def _work_effects(self) -> None:
        while True:
            self._wake = wake = anyio.Event()
            while self._effects:
                await self._apply(self._effects.popleft())
            await wake.wait()

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the token (``getMe``), then register the webhook, or remove it for long polling."""
        try:
            self.bot = await self.api.call("getMe")
        except MessengerError as exc:
            if exc.reason == "disabled":
                raise ConfigError(
                    f"telegram instance {self.context.instance!r}: Telegram refuses the bot token ({exc}); "
                    "copy the token from @BotFather into the source's settings"
                ) from None
            if not exc.retryable:
                raise ConfigError(
                    f"telegram instance {self.context.instance!r}: getMe at {self.config.api_url} failed ({exc}); "
                    "check api_url"
                ) from None
            self.log.warning("Telegram is not reachable yet", error=str(exc))
        else:
            self.log.info("bot ready", username=self.bot.get("username") if isinstance(self.bot, dict) else None)
        if self.config.mode == "polling":
            try:
                await self.api.call("deleteWebhook", {"drop_pending_updates": False})
            except MessengerError as exc:
                self.log.warning("could not remove a webhook before polling", error=str(exc))
            self.context.intake("polling")
            return
        if self.context.public_url is None:
            self.log.warning(
                "no public URL, so the webhook is not registered: set server.public_url, or mode = 'polling'"
            )
            self.context.intake("not_registered")
            return
        try:
            await self._set_webhook()
        except MessengerError as exc:
            if not exc.retryable:
                raise ConfigError(
                    f"telegram instance {self.context.instance!r}: setWebhook refused {self.context.public_url}: {exc}"
                ) from None
            self.log.warning("setWebhook failed; retrying in the background", error=str(exc))
            self.context.intake("not_registered")
            self._webhook_pending = True

    async def _set_webhook(self) -> None:
        await self.api.call(
            "setWebhook",
            {
                "url": self.context.public_url,
                "secret_token": self.secret_token,
                "allowed_updates": list(ALLOWED_UPDATES),
                "drop_pending_updates": self.config.drop_pending_updates,
            },
        )
        self.log.info("webhook registered", url=self.context.public_url)
        self.context.intake("webhook")

    async def unregister(self) -> None:
        """The bot's source is removed: Telegram stops sending its updates here (``deleteWebhook``)."""
        if self.config.mode == "webhook":
            await self.api.call("deleteWebhook", {"drop_pending_updates": False})
            self.log.info("webhook removed")

    async def run(self) -> None:
        """Answer button presses, persist blocks and repeat typing; in polling mode, poll."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._work_effects)
                if self.config.mode == "polling":
                    tasks.start_soon(self._poll_exclusively)
                elif self._webhook_pending:
                    tasks.start_soon(self._retry_webhook)
        finally:
            self._tasks = None
            self._wake = None

    async def _retry_webhook(self) -> None:
        pause = self.retry_pause
        while True:
            await anyio.sleep(pause)
            try:
                await self._set_webhook()
            except MessengerError as exc:
                pause = min(pause * 2, self.max_retry_pause)
                self.log.warning("setWebhook failed again", error=str(exc), retry_in_s=pause)
            else:
                self._webhook_pending = False
                return

    # -- long polling ---------------------------------------------------------------------------

    async def _poll_exclusively(self) -> None:
        """Poll from one process of the fleet at a time: the messenger gives each update to one poller."""
        await self.context.exclusive("poll", self._poll)

    async def _poll(self) -> None:
        state = self.context.state
        stored = await state.get(_OFFSET_KEY)
        offset = int(stored) if stored else 0
        pause = self.retry_pause
        while True:
            params: dict[str, Any] = {"timeout": self.config.polling_timeout, "allowed_updates": list(ALLOWED_UPDATES)}
            if offset:
                params["offset"] = offset
            try:
                updates = await self.api.call("getUpdates", params, http_timeout=self.config.polling_timeout + 10.0)
                if updates:
                    offset = await self._take_updates(updates, offset)
                    await state.set(_OFFSET_KEY, str(offset).encode())
            except RateLimited as exc:
                await anyio.sleep(exc.retry_after)
                continue
            except MessengerError as exc:
                self._polling_failed(exc, pause)
            except Exception as exc:  # the store refused: fetch the same updates again later
                self.log.warning("storing polled updates failed; they will be fetched again", error=str(exc))
            else:
                pause = self.retry_pause
                continue
            await anyio.sleep(pause)
            pause = min(pause * 2, self.max_retry_pause)

    async def _take_updates(self, updates: list[Any], offset: int) -> int:
        """Submit the events of one ``getUpdates`` batch; the offset that confirms it."""
        events: list[InboundEvent] = []
        effects: list[Effect] = []
        for raw in updates:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if isinstance(update_id, int):
                offset = max(offset, update_id + 1)
            try:
                update = msgspec.convert(raw, type=Update)
            except msgspec.ValidationError as exc:
                self.log.warning("update of an unexpected shape skipped", update_id=update_id, error=str(exc))
                continue
            parsed = await self._resolved(parse_update(update, now=time.time()))
            events.extend(parsed.events)
            effects.extend(parsed.effects)
        if events:
            await self.context.submit(events)
        self._take(Parsed(effects=tuple(effects)))
        return offset

    def _polling_failed(self, exc: MessengerError, pause: float) -> None:
        if isinstance(exc, BotApiError) and exc.code == 409:
            self.log.error(
                "getUpdates refused with 409 Conflict: another process polls this bot, or a webhook is set. "
                "Run one connector per bot token; to poll, remove the webhook (deleteWebhook) or use mode = 'webhook'",
                description=exc.description,
                retry_in_s=pause,
            )
        elif isinstance(exc, BotApiError) and exc.reason == "disabled":
            self.log.error("getUpdates refused: the bot token is wrong or revoked", description=exc.description)
        else:
            self.log.warning("getUpdates failed", error=str(exc), retry_in_s=pause)

    # -- sends ----------------------------------------------------------------------------------

    async def _check_blocked(self, chat: str) -> None:
        blocked = self._blocked.get(chat)
        if blocked is None:
            blocked = self._blocked[chat] = await self.context.state.get(_BLOCKED_KEY + chat) is not None
        if blocked:
            raise MessengerError("Forbidden: bot was blocked by the user", code=403, reason="blocked")

    async def _remember_blocked(self, chat: str) -> None:
        if not self._blocked.get(chat):
            self._blocked[chat] = True
            await self.context.state.set(_BLOCKED_KEY + chat, b"1")

    async def _call(self, chat: str, method: str, params: dict[str, Any], **options: Any) -> Any:
        try:
            return await self.api.call(method, params, **options)
        except MessengerError as exc:
            if exc.reason == "blocked":
                await self._remember_blocked(chat)
            raise

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Send text, media, buttons or a list; a successful send counts as delivered."""
        calls = plan_message(await self.context.button_data.keyed(message, fits_callback_data))
        assert message.chat is not None
        chat = message.chat
        await self._check_blocked(chat)
        self._typing_until.pop(chat, None)
        parts_key = f"{_PARTS_KEY}{message.dedup_key}" if message.dedup_key and len(calls) > 1 else None
        sent: list[str] = []
        if parts_key is not None:
            stored = await self.context.state.get(parts_key)
            sent = msgspec.json.decode(stored, type=list[str]) if stored else []
        for call in calls[len(sent) :]:
            try:
                result = await self._send_call(chat, call)
            except MessengerError as exc:
                if parts_key is not None and not exc.retryable:
                    await self.context.state.delete(parts_key)  # no retry will come to resume it
                raise
            sent.append(str(result["message_id"]))
            if parts_key is not None and len(sent) < len(calls):
                await self.context.state.set(parts_key, msgspec.json.encode(sent))
        if parts_key is not None:
            await self.context.state.delete(parts_key)
        return SendResult(message_ids=tuple(sent), status="delivered")

    async def _send_call(self, chat: str, call: Call) -> Any:
        try:
            return await self._call(chat, call.method, call.params)
        except BotApiError as exc:
            if call.attachment is None or not any(part in exc.description.lower() for part in URL_FETCH_FAILURES):
                raise
            self.log.info("Telegram could not fetch the media URL; uploading the file", error=exc.description)
        params = {key: value for key, value in call.params.items() if key != call.file_field}
        upload = await self._download(call.attachment)
        return await self._call(chat, call.method, params, files={call.file_field: upload}, http_timeout=120.0)

    async def _download(self, attachment: Attachment) -> tuple[str, bytes, str]:
        """The file behind an outgoing attachment's URL, to upload it ourselves."""
        got = await download(
            self.context.http, attachment, max_bytes=UPLOAD_LIMIT, messenger="Telegram", guard=self.context.url_guard
        )
        return got.file_name, got.content, got.content_type

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set our one reaction on a message (Telegram's fixed emoji list), or remove it."""
        emoji = None if reaction.removed else self.reactions.match(reaction.emoji)
        if not reaction.removed and emoji is None:
            self.log.warning("reaction not sent: Telegram does not offer this emoji", emoji=reaction.emoji)
            raise MessengerError(f"Telegram does not offer the reaction {reaction.emoji!r}")
        if not reaction.message_id.isdigit():
            raise MessengerError(f"message {reaction.message_id!r} is not a Telegram message and takes no reaction")
        await self._call(
            reaction.chat,
            "setMessageReaction",
            {
                "chat_id": chat_param(reaction.chat),
                "message_id": int(reaction.message_id),
                "reaction": [] if emoji is None else [{"type": "emoji", "emoji": emoji}],
            },
        )

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """Show "typing..." now, and keep it up until ``typing.until`` (see the module docstring)."""
        chat = typing.chat
        await self._check_blocked(chat)
        await self._call(chat, "sendChatAction", {"chat_id": chat_param(chat), "action": "typing"})
        now = time.time()
        self._typing_sent[chat] = now
        if typing.until <= now + self.typing_shows or self._tasks is None:
            return
        running = chat in self._typing_until
        self._typing_until[chat] = max(self._typing_until.get(chat, 0.0), typing.until)
        if not running:
            self._tasks.start_soon(self._keep_typing, chat)

    async def _keep_typing(self, chat: str) -> None:
        try:
            while True:
                until = self._typing_until.get(chat)
                last = self._typing_sent.get(chat, 0.0)
                if until is None or last + self.typing_shows >= until:
                    return
                await anyio.sleep(max(last + self.typing_repeat - time.time(), 0.0))
                if chat not in self._typing_until:
                    return
                await self.api.call("sendChatAction", {"chat_id": chat_param(chat), "action": "typing"})
                self._typing_sent[chat] = time.time()
        except MessengerError as exc:
            self.log.info("typing not shown", error=str(exc))
        finally:
            self._typing_until.pop(chat, None)

    # -- media ----------------------------------------------------------------------------------

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """The bytes of the client's file ``handle`` (a ``file_id``): ``getFile``, then the file endpoint."""
        file = await self.api.call("getFile", {"file_id": handle})
        path = file.get("file_path") if isinstance(file, dict) else None
        if not isinstance(path, str) or not path:
            raise MessengerError("Telegram gave no file_path for the file (over the 20 MB bots may download?)")
        content = await self.api.download(path, limit=DOWNLOAD_LIMIT)
        name = posixpath.basename(path)
        return FetchedMedia(
            content=content, content_type=mimetypes.guess_type(name)[0], file_name=name, size=len(content)
        )
