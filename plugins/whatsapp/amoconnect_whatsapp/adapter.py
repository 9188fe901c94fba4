"""The WhatsApp adapter: one business phone number per ``[[sources]]`` entry with ``plugin = "whatsapp"``.

Webhooks arrive at ``{public_url}/hooks/whatsapp/{instance}``: :meth:`~WhatsAppAdapter.verify`
answers Meta's ``hub.challenge`` handshake (GET) and checks ``X-Hub-Signature-256`` (POST) in
constant time; :mod:`~amoconnect_whatsapp.webhooks` turns the body into neutral events. Events
for another phone number (an app-level callback shared by several numbers) are left out with a
warning: give each number its own URL (``register_webhook = "number"``).

Sends go to ``POST /{phone_number_id}/messages`` as :mod:`~amoconnect_whatsapp.compose` plans
them. Media go by link; when WhatsApp refuses the link at once, the file is downloaded and
uploaded (``POST /{phone_number_id}/media``) and sent by id (``media_upload = "always"`` does that
first). A message that became several requests remembers its progress in the instance state, so
a retry sends only the rest.

Work that is not an event runs in the background task :meth:`run` keeps, so that
:meth:`~WhatsAppAdapter.parse` stays free of IO: remembering each chat's newest client message
(the typing indicator needs it), resending a message WhatsApp throttled after accepting it
(a ``failed`` status with 130429 or 131056: sent again after a pause, and reported failed only
when that fails too), and the template review (:mod:`~amoconnect_whatsapp.review`).

Limits: 80 messages per second per number (``messages_per_second``, up to 1,000; 20 for numbers
shared with the WhatsApp Business app), and per client at most 10 messages a minute — a burst of
10 goes at once, then one every 6 s, which is WhatsApp's pair rate; a 131056 answer backs off 6 s.
"""

from __future__ import annotations

import collections
import mimetypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
import httpx
import msgspec
from amoconnect.adapter import AdapterContext, FetchedMedia, MessengerAdapter, Route, WebhookRequest, WebhookResponse
from amoconnect.capabilities import Capability, RateLimit, ReactionSet
from amoconnect.errors import AmoconnectError, ConfigError, MessengerError, RateLimited, SignatureError
from amoconnect.media import download
from amoconnect.model import (
    Attachment,
    InboundEvent,
    InboundStatus,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    SendResult,
)

from .catalog import Catalog, named_ref
from .cloudapi import DEFAULT_API_URL, DEFAULT_API_VERSION, ERROR_REASONS, ROW_ID_LIMIT, GraphApi
from .compose import MEDIA_TYPES, Part, TemplateRef, plan_message, template_ref
from .review import ReviewDesk, ReviewSettings
from .webhooks import (
    SIGNATURE_HEADER,
    Parsed,
    TemplateUpdate,
    check_signature,
    decode,
    handshake,
    parse,
    well_formed_signature,
)

__all__ = ["MEDIA_LIMIT", "REVIEW_ROUTE", "WhatsAppAdapter", "WhatsAppSettings"]

REVIEW_ROUTE = "template-review"
"""Path (below the instance's webhook URL) of amoCRM's ``add_chat_template_review`` account webhook."""
MEDIA_LIMIT = 100 * 1024 * 1024
"""Largest file WhatsApp carries (documents)."""
_PARTS_KEY = "parts:"
_LAST_KEY = "last:"
_RATE_STATUS_CODES = frozenset({"130429", "131056"})
_MEDIA_LINK_CODES = frozenset({131052, 131053, 100})


class WhatsAppSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one business phone number (``[[sources]] settings``)."""

    phone_number_id: str
    """The number's id in the Cloud API (WhatsApp Manager → API Setup), not the number itself."""
    waba_id: str
    """The WhatsApp Business Account the number belongs to (its templates live there)."""
    token: str
    """A permanent system-user access token with ``whatsapp_business_messaging`` (and ``_management``)."""
    app_secret: str
    """The Meta app's secret: the key of ``X-Hub-Signature-256``."""
    verify_token: str
    """Any string you choose; Meta repeats it in the ``hub.verify_token`` handshake."""
    api_url: str = DEFAULT_API_URL
    """Graph API server: Meta's, or a fake."""
    api_version: str = DEFAULT_API_VERSION
    """Graph API version, like ``v23.0``."""
    default_language: str = "en_US"
    """Template language when a template's ``external_id`` names no language."""
    register_webhook: Literal["no", "number", "waba"] = "no"
    """At startup, point this number's (or its WABA's) webhooks at this instance's URL; ``no``: set it in the app."""
    link_previews: bool = True
    """Show link previews for texts that carry a URL."""
    media_upload: Literal["fallback", "always"] = "fallback"
    """``fallback``: send media by link, upload when WhatsApp refuses the link; ``always``: upload first."""
    list_button: str = "Choose"
    """Label of the button that opens a list made of more than 3 amoCRM buttons (at most 20 characters)."""
    messages_per_second: int = 80
    """The number's throughput: 80 by default, up to 1,000 once Meta upgrades it, 20 when shared with the app."""
    source_external_id: str = ""
    """The amoCRM source's external_id of this number when it differs from the instance name (template review)."""
    template_review: ReviewSettings | None = None
    """Answer amoCRM's template reviews (see the README); off when absent."""

    def __post_init__(self) -> None:
        for name in ("phone_number_id", "waba_id"):
            if not getattr(self, name).isdigit():
                raise ValueError(f"{name} must be the numeric id from WhatsApp Manager, got {getattr(self, name)!r}")
        if not self.token or not self.app_secret or not self.verify_token:
            raise ValueError("token, app_secret and verify_token are required")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url must be an http(s) URL, like 'https://graph.facebook.com'")
        if not 1 <= self.messages_per_second <= 1000:
            raise ValueError("messages_per_second must be between 1 and 1000")
        if not 0 < len(self.list_button) <= 20:
            raise ValueError("list_button must be 1 to 20 characters")


def _fits_row_id(value: str) -> bool:
    """Button and row data longer than a row's id (200 characters) goes under a key of ``context.button_data``."""
    return len(value) <= ROW_ID_LIMIT


def _sandbox(*, http: httpx.AsyncClient | None = None) -> Any:
    from .fake import FakeWhatsApp

    return FakeWhatsApp.sandbox(http=http)


@dataclass(frozen=True)
class _Resend:
    """A message WhatsApp accepted, then failed for throughput: send it again after a pause."""

    status: InboundStatus


class WhatsAppAdapter(MessengerAdapter):
    """A WhatsApp Business number: text, media, replies, reactions, typing, templates, lists and buttons."""

    name = "whatsapp"
    settings = WhatsAppSettings
    capabilities = frozenset(
        {
            Capability.write_first,
            Capability.typing,
            Capability.reactions,
            Capability.templates,
            Capability.list_messages,
            Capability.buttons,
            Capability.media,
            Capability.replies,
            Capability.edits,
            Capability.delivery_receipts,
            Capability.read_receipts,
            Capability.time_window,
            Capability.echoes,
        }
    )
    reactions = ReactionSet.any()
    reply_window = 24 * 3600.0
    rate_limits = (RateLimit(count=80, per=1.0), RateLimit(count=10, per=60.0, scope="chat"))
    routes = (Route(methods=("GET", "POST")), Route(path=REVIEW_ROUTE, methods=("POST",)))
    error_reasons = ERROR_REASONS
    amocrm_service = "whatsapp"
    sandbox_factory = staticmethod(_sandbox)

    typing_shows: ClassVar[float] = 20.0
    """Seconds one typing call is trusted to show (WhatsApp: up to 25 s, or until we send)."""
    resend_pauses: ClassVar[tuple[float, ...]] = (6.0, 12.0, 30.0)
    """Pauses before resending a message WhatsApp failed for throughput; then it is reported failed."""
    webhook_delay: ClassVar[float] = 0.5
    """Seconds :meth:`run` waits for the server to listen before registering the webhook."""
    retry_pause: ClassVar[float] = 5.0
    """First pause after a failed background call; doubles up to :attr:`max_retry_pause`."""
    max_retry_pause: ClassVar[float] = 300.0

    config: WhatsAppSettings

    def __init__(self, config: msgspec.Struct, context: AdapterContext) -> None:
        assert isinstance(config, WhatsAppSettings)
        super().__init__(config, context)
        self.config = config
        self.api = GraphApi(context.http, config.api_url, config.api_version, config.token)
        self.catalog = Catalog(self.api, config.waba_id)
        """Meta's templates: which take named parameters."""
        # The per-number throughput is a setting: a runtime that takes the send limits from the
        # instance keeps to it; one that takes them from the class keeps to the class's 80 per second.
        vars(self)["rate_limits"] = (
            RateLimit(count=config.messages_per_second, per=1.0),
            RateLimit(count=10, per=60.0, scope="chat"),
        )
        self._last_inbound: dict[str, str] = {}
        self._typing_at: dict[str, float] = {}
        self._bodies: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._aliases: dict[str, str] = {}
        self._resent: set[str] = set()
        self._effects: collections.deque[Any] = collections.deque()
        self._wake: anyio.Event | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self.review: ReviewDesk | None = None
        """The template review desk, when ``template_review`` is set."""
        if config.template_review is not None:
            self.review = ReviewDesk(
                config.template_review,
                api=self.api,
                context=context,
                source=config.source_external_id or context.instance,
                waba_id=config.waba_id,
                pauses=(self.retry_pause, self.max_retry_pause),
            )

    @property
    def log(self) -> Any:
        """The instance's logger."""
        return self.context.log

    # -- webhooks -------------------------------------------------------------------------------

    async def verify_headers(self, request: WebhookRequest) -> None:
        """Refuse a POST to the webhook whose ``X-Hub-Signature-256`` is missing or malformed, before its body."""
        signed = request.method != "POST" or request.path == REVIEW_ROUTE  # a handshake; amoCRM's review hook
        if not signed and not well_formed_signature(request.headers.get(SIGNATURE_HEADER)):
            raise SignatureError(f"{SIGNATURE_HEADER} missing or not 'sha256=' and a hex HMAC-SHA256")

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """Answer the handshake, take amoCRM's review hook, or check ``X-Hub-Signature-256``."""
        if request.path == REVIEW_ROUTE:
            if self.review is None:
                return WebhookResponse(status=403, body=b"template review is not enabled for this number")
            return await self.review.receive(request)
        if request.method == "GET":
            status, text = handshake(request.query, self.config.verify_token)
            if status == 200:
                self.log.info("webhook verified by Meta")
            return WebhookResponse(status=status, body=text.encode())
        if not check_signature(self.config.app_secret, request.body, request.headers.get(SIGNATURE_HEADER)):
            raise SignatureError(f"{SIGNATURE_HEADER} does not match the body signed with the app secret")
        return None

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The events for this number; the rest of the webhook's work is queued for :meth:`run`."""
        parsed = parse(decode(request.body), self.config.phone_number_id, self.config.waba_id)
        # A choice of a row whose long data is no longer kept goes as its title, without callback_data.
        return await self.context.button_data.resolved(self._take(parsed))

    def _take(self, parsed: Parsed) -> list[InboundEvent]:
        if parsed.foreign:
            self.log.warning(
                "webhook events for other phone numbers left out; give each number its own URL "
                "(register_webhook = 'number')",
                phone_number_ids=sorted(parsed.foreign),
            )
        for chat, message_id in parsed.last_inbound.items():
            self._last_inbound[chat] = message_id
            self._effects.append((chat, message_id))
        self._effects.extend(parsed.templates)
        events: list[InboundEvent] = []
        for event in parsed.events:
            kept = self._status(event) if isinstance(event, InboundStatus) else event
            if kept is not None:
                events.append(kept)
        if self._effects and self._wake is not None:
            self._wake.set()
        return events

    def _status(self, event: InboundStatus) -> InboundStatus | None:
        """A status as the core should see it: a resent message's statuses belong to the original."""
        original = self._aliases.get(event.message_id)
        if original is not None:
            event = msgspec.structs.replace(event, message_id=original)
        if (
            event.status == "failed"
            and event.error_code in _RATE_STATUS_CODES
            and event.message_id in self._bodies
            and event.message_id not in self._resent
        ):
            self._resent.add(event.message_id)
            self._effects.append(_Resend(event))
            return None
        return event

    # -- background work ------------------------------------------------------------------------

    async def _apply(self, effect: Any) -> None:
        try:
            if isinstance(effect, tuple):
                chat, message_id = effect
                await self.context.state.set(_LAST_KEY + chat, message_id.encode())
            elif isinstance(effect, TemplateUpdate):
                if self.review is not None:
                    await self.review.template_update(effect)
            elif isinstance(effect, _Resend):
                assert self._tasks is not None
                self._tasks.start_soon(self._resend, effect)
        except AmoconnectError as exc:
            self.log.warning("background work failed", effect=type(effect).__name__, error=str(exc))

    async def _work_effects(self) -> None:
        while True:
            self._wake = wake = anyio.Event()
            while self._effects:
                await self._apply(self._effects.popleft())
            await wake.wait()

    async def _resend(self, resend: _Resend) -> None:
        """Send a throttled message again after a pause; report it failed when the pauses run out."""
        status = resend.status
        body = self._bodies.get(status.message_id)
        for pause in self.resend_pauses:
            if body is None:
                break
            await anyio.sleep(pause)
            try:
                answer = await self.api.request("POST", f"{self.config.phone_number_id}/messages", json=body)
            except RateLimited:
                continue
            except MessengerError as exc:
                status = msgspec.structs.replace(status, reason=exc.reason, error=exc.description)
                break
            new_id = _message_id(answer)
            self._aliases[new_id] = status.message_id
            self._remember(new_id, body)
            self.log.info("throttled message sent again", message_id=status.message_id, new_id=new_id)
            return
        self.log.warning("throttled message not sent again; reported failed", message_id=status.message_id)
        await self.context.submit([msgspec.structs.replace(status, dedup_key=status.dedup_key + ":final")])

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the number and token; prepare the template review (the webhook is registered by :meth:`run`)."""
        try:
            number = await self.api.request(
                "GET", self.config.phone_number_id, params={"fields": "display_phone_number,verified_name"}
            )
        except MessengerError as exc:
            if exc.reason == "disabled":
                raise ConfigError(
                    f"whatsapp instance {self.context.instance!r}: WhatsApp refuses the token or the "
                    f"phone_number_id ({exc}); copy both from WhatsApp Manager → API Setup"
                ) from None
            self.log.warning("WhatsApp is not reachable yet", error=str(exc))
        else:
            self.log.info("number ready", display_phone_number=number.get("display_phone_number"))
        if self.review is not None:
            await self.review.startup()

    async def _register_webhook(self) -> None:
        """Point the number's (or WABA's) webhooks here, once the server answers Meta's handshake.

        Meta checks the URL at once with a ``hub.challenge`` GET, so this waits
        :attr:`webhook_delay` for the server to listen, and tries again with backoff.
        """
        url = self.context.public_url
        if url is None:
            self.log.warning("register_webhook is set but server.public_url is not: the webhook is not registered")
            self.context.intake("not_registered")
            return
        if self.config.register_webhook == "number":
            path = self.config.phone_number_id
            body: dict[str, Any] = {"webhook_configuration": {"override_callback_uri": url}}
            body["webhook_configuration"]["verify_token"] = self.config.verify_token
        else:
            path = f"{self.config.waba_id}/subscribed_apps"
            body = {"override_callback_uri": url, "verify_token": self.config.verify_token}
        pause = self.retry_pause
        await anyio.sleep(self.webhook_delay)
        while True:
            try:
                await self.api.request("POST", path, json=body)
            except MessengerError as exc:
                self.log.warning("registering the webhook failed", url=url, error=str(exc), retry_in_s=pause)
                self.context.intake("not_registered")
                await anyio.sleep(pause)
                pause = min(pause * 2, self.max_retry_pause)
                continue
            self.log.info("webhook registered", url=url, scope=self.config.register_webhook)
            self.context.intake("webhook")
            return

    async def run(self) -> None:
        """Register the webhook if asked; keep the background work going: bookkeeping, resends, template review."""
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._work_effects)
                if self.config.register_webhook != "no":
                    tasks.start_soon(self._register_webhook)
                if self.review is not None:
                    tasks.start_soon(self.review.run)
        finally:
            self._tasks = None
            self._wake = None

    # -- sends ----------------------------------------------------------------------------------

    def _remember(self, message_id: str, body: dict[str, Any]) -> None:
        """Keep the bodies of recent sends, for a resend after a late throughput failure."""
        self._bodies[message_id] = body
        while len(self._bodies) > 5000:
            self._bodies.popitem(last=False)

    async def _template(self, message: OutgoingMessage) -> TemplateRef | None:
        if message.template is None:
            return None
        known = await self.review.known_ref(message.template.id) if self.review is not None else None
        try:
            ref = template_ref(message.template, self.config.default_language, known)
        except MessengerError:
            if message.text:  # inside the window the core also gave the filled-in text
                self.log.info("template has no WhatsApp name; sending its text", template=message.template.id)
                return None
            raise
        if ref is known:  # the review made it from amoCRM's template: positional
            return ref
        try:
            record = await self.catalog.record(ref.name, ref.language)
        except MessengerError as exc:
            if exc.retryable:
                raise
            self.log.warning(
                "Meta's template list could not be read; sending the template's parameters by position",
                template=ref.name,
                error=str(exc),
            )
            return ref
        return ref if record is None else named_ref(ref, record)

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Send text, media, a list, buttons or a template; write first when ``phone`` is set."""
        ref = await self._template(message)
        if message.template is not None and ref is None:
            message = msgspec.structs.replace(message, template=None)
        parts = plan_message(
            await self.context.button_data.keyed(message, _fits_row_id),
            template=ref,
            link_previews=self.config.link_previews,
            list_button=self.config.list_button,
        )
        chat = message.chat or message.phone or ""
        self._typing_at.pop(chat, None)
        parts_key = f"{_PARTS_KEY}{message.dedup_key}" if message.dedup_key and len(parts) > 1 else None
        sent: list[str] = []
        if parts_key is not None:
            stored = await self.context.state.get(parts_key)
            sent = msgspec.json.decode(stored, type=list[str]) if stored else []
        wa_id: str | None = None
        for part in parts[len(sent) :]:
            answer = await self._send_part(part)
            sent.append(_message_id(answer))
            wa_id = wa_id or _wa_id(answer)
            if parts_key is not None and len(sent) < len(parts):
                await self.context.state.set(parts_key, msgspec.json.encode(sent))
        if parts_key is not None:
            await self.context.state.delete(parts_key)
        return SendResult(message_ids=tuple(sent), chat=(wa_id or chat.lstrip("+")) if message.phone else None)

    async def _send_part(self, part: Part) -> Any:
        path = f"{self.config.phone_number_id}/messages"
        body = part.body
        if part.attachment is not None and self.config.media_upload == "always":
            body = await self._with_upload(body, part.attachment)
        try:
            answer = await self.api.request("POST", path, json=body)
        except MessengerError as exc:
            if part.attachment is None or body is not part.body or exc.retryable or exc.code not in _MEDIA_LINK_CODES:
                raise
            self.log.info("WhatsApp refused the media link; uploading the file", error=exc.description)
            body = await self._with_upload(body, part.attachment)
            answer = await self.api.request("POST", path, json=body)
        self._remember(_message_id(answer), body)
        return answer

    async def _with_upload(self, body: dict[str, Any], attachment: Attachment) -> dict[str, Any]:
        """``body`` with its media sent by the id of an upload instead of by link."""
        name, content, mime = await self._download(attachment)
        answer = await self.api.request(
            "POST",
            f"{self.config.phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (name, content, mime)},
            wait=120.0,
        )
        kind = MEDIA_TYPES[attachment.kind]
        media = {k: v for k, v in body[kind].items() if k != "link"}
        return {**body, kind: {"id": str(answer["id"]), **media}}

    async def _download(self, attachment: Attachment) -> tuple[str, bytes, str]:
        """The file behind an outgoing attachment's URL, to upload it ourselves."""
        got = await download(
            self.context.http, attachment, max_bytes=MEDIA_LIMIT, messenger="WhatsApp", guard=self.context.url_guard
        )
        return got.file_name, got.content, got.content_type

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set a reaction (any emoji) on a message, or remove ours (an empty emoji)."""
        from .compose import base

        emoji = "" if reaction.removed else reaction.emoji
        body = {
            **base(reaction.chat),
            "type": "reaction",
            "reaction": {"message_id": reaction.message_id, "emoji": emoji},
        }
        await self.api.request("POST", f"{self.config.phone_number_id}/messages", json=body)

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """Mark the client's newest message read and show "typing..." (up to 25 s, or until we send)."""
        chat = typing.chat
        now = time.monotonic()
        if now - self._typing_at.get(chat, -self.typing_shows) < self.typing_shows:
            return
        message_id = self._last_inbound.get(chat)
        if message_id is None:
            stored = await self.context.state.get(_LAST_KEY + chat)
            message_id = stored.decode() if stored else None
        if message_id is None:
            self.log.info("typing not shown: no message of the client to mark read", chat=chat)
            return
        self._typing_at[chat] = now
        body = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }
        await self.api.request("POST", f"{self.config.phone_number_id}/messages", json=body)

    # -- media ----------------------------------------------------------------------------------

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """The bytes of the client's media ``handle`` (a media id): ``GET /{media-id}``, then its URL with the token."""
        info = await self.api.request("GET", handle)
        url = info.get("url") if isinstance(info, dict) else None
        if not isinstance(url, str) or not url:
            raise MessengerError(f"WhatsApp gave no URL for media {handle!r}")
        content, content_type = await self.api.download(url, limit=MEDIA_LIMIT)
        mime = info.get("mime_type") or content_type
        extension = mimetypes.guess_extension(mime.split(";")[0].strip()) if isinstance(mime, str) else None
        return FetchedMedia(
            content=content,
            content_type=mime,
            file_name=f"{handle}{extension or ''}",
            size=len(content),
        )


def _message_id(answer: Any) -> str:
    try:
        return str(answer["messages"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise MessengerError(f"WhatsApp accepted the message but gave no message id: {answer!r}"[:300]) from None


def _wa_id(answer: Any) -> str | None:
    try:
        wa_id = answer["contacts"][0].get("wa_id")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return str(wa_id) if wa_id else None
