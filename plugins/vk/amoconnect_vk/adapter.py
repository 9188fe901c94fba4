"""The VK adapter: one community per ``[[sources]]`` entry with ``plugin = "vk"``.

Events come in through the Callback API (``mode = "callback"``: VK POSTs each event to
``{public_url}/hooks/vk/{instance}``; :meth:`VKAdapter.verify` answers the ``confirmation``
request with the community's code and checks the ``secret`` in every body in constant time)
or through Bots Long Poll (``mode = "longpoll"``: :meth:`VKAdapter.run` asks
``groups.getLongPollServer`` and loops over ``a_check``, keeping server, key and ``ts`` in the
instance's state and moving ``ts`` only once the events are stored). The runtime answers the
Callback API ``ok`` only after the events are stored; VK's retries (``X-Retry-Counter``) and
duplicates carry the same ``event_id``, which the core deduplicates on.

VK's events name people only by id, and a comment does not repeat its post. So, right after the
secret check and before :meth:`~VKAdapter.parse` (which does no IO), the adapter reads and
records what parsing needs in the instance's state: names from ``users.get`` (cached), posts
from ``wall_post_new`` (caption and first picture, for the post's thread in amoCRM), each
comment's author (so a deleted comment can be reported to the manager in the right chat) and
who allowed or denied the community's messages (``message_allow`` / ``message_deny``, and every
private message counts as allowing). A private send to a client who denied messages, or whom VK
already refused with 900/901/902, fails at once as ``blocked`` (amoCRM 901) with a text that
says why and what to do, until the client writes or allows messages again.

Sends go through :mod:`~amoconnect_vk.compose` (text split at 4,096 characters, media uploaded
through VK's upload servers, buttons and list messages as keyboards, quotes as ``forward`` with
``is_reply``); several parts of one message go in one ``execute``. A button's ``payload`` holds
255 characters: data too long for it goes as a short key of ``context.button_data``, and a press
is relayed with the data amoCRM sent; a press whose key is no longer kept is relayed as its
label, plain text without ``callback_data``.
"""

from __future__ import annotations

import math
import mimetypes
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import anyio
import msgspec
from amoconnect.adapter import AdapterContext, FetchedMedia, MessengerAdapter, Route, WebhookRequest, WebhookResponse
from amoconnect.capabilities import Capability, RateLimit, ReactionSet
from amoconnect.errors import NOT_JSON, ConfigError, MessengerError, RateLimited, SignatureError
from amoconnect.media import MediaTooLarge, fetch_url
from amoconnect.model import (
    Attachment,
    FailureReason,
    InboundEvent,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    Person,
    SendResult,
)
from amoconnect.signing import same_secret
from structlog.typing import FilteringBoundLogger

from .client import EXECUTE_LIMIT, VkApi
from .compose import plan_message
from .events import (
    CommentDelete,
    CommentInfo,
    Event,
    Memory,
    Message,
    PostInfo,
    WallComment,
    WallPost,
    decode_event,
    new_message,
    parse_event,
    person_from_user,
    post_info,
)
from .vkapi import (
    API_VERSION,
    BLOCKED_CODES,
    CALLBACK_EVENTS,
    CHATS_FROM,
    DOWNLOAD_LIMIT,
    EMOJI_REACTIONS,
    MAX_COMMENT_LENGTH,
    MAX_MESSAGE_LENGTH,
    REACTIONS,
    VkApiError,
    comment_guid,
    error_for,
    fits_payload,
    parse_post_key,
    post_key,
    split_text,
)

__all__ = ["LongPollServer", "VKAdapter", "VKSettings"]

_ALLOWED = "allowed:"
_USER = "user:"
_POST = "post:"
_COMMENT = "comment:"
_UPLOAD = "upload:"
_LONGPOLL = "longpoll"
_PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})


class VKSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one community (``[[sources]] settings``)."""

    token: str
    """The community access token (Manage → API usage → Access tokens); ``"env:NAME"`` reads it from the environment."""
    group_id: int
    """The community's id (the number in ``club123``)."""
    mode: Literal["callback", "longpoll"] = "callback"
    """``callback`` (VK posts events to ``server.public_url``) or ``longpoll`` (no public URL needed)."""
    secret: str = ""
    """The Callback API server's secret key; required in ``callback`` mode."""
    confirmation_code: str = ""
    """The string the Callback API server must return; asked from VK when empty (needs a token with 'manage')."""
    configure: bool = False
    """Set up the Callback API server (or Bots Long Poll) and its event types through the API at startup."""
    server_title: str = "amoconnect"
    """Name of the Callback API server that ``configure`` creates or updates."""
    api_url: str = "https://api.vk.com"
    """VK API server: VK's, or a fake."""
    longpoll_wait: int = 25
    """Seconds one Bots Long Poll request waits for events (1-90)."""

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("token must be the community's access token")
        if self.group_id <= 0:
            raise ValueError("group_id must be the community's id, a positive number (club123 → 123)")
        if self.mode == "callback" and not self.secret:
            raise ValueError("callback mode needs secret: the secret key of the community's Callback API server")
        if len(self.secret) > 50:
            raise ValueError("secret is at most 50 characters")
        if not 1 <= self.longpoll_wait <= 90:
            raise ValueError("longpoll_wait must be between 1 and 90 seconds")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError("api_url must be an http(s) URL, like 'https://api.vk.com'")


class LongPollServer(msgspec.Struct, kw_only=True):
    """Where Bots Long Poll is read from, kept in the instance's state."""

    server: str = ""
    key: str = ""
    ts: str = ""


def _sandbox(**options: Any) -> Any:
    """The fake VK API for ``amoconnect run --plugin vk --sandbox`` (imported only then)."""
    from .fake import FakeVK

    return FakeVK(**options)


class VKAdapter(MessengerAdapter):
    """A VK community: private messages and wall comments, with media, keyboards, replies, edits, reactions
    and typing; reads are reported, a send VK accepted counts as delivered."""

    name = "vk"
    settings = VKSettings
    capabilities = frozenset(
        {
            Capability.typing,
            Capability.reactions,
            Capability.comments,
            Capability.buttons,
            Capability.list_messages,
            Capability.media,
            Capability.edits,
            Capability.replies,
            Capability.delivery_receipts,
            Capability.read_receipts,
            Capability.echoes,
        }
    )
    reactions = ReactionSet.of(*REACTIONS.values())
    rate_limits = (RateLimit(count=20, per=1.0),)
    routes = (Route(),)
    webhook_ack = WebhookResponse(body=b"ok")
    error_reasons: ClassVar[Mapping[str, FailureReason]] = {
        "900": "blocked",
        "901": "blocked",
        "902": "blocked",
        "5": "disabled",
        "27": "disabled",
    }
    sandbox_factory = staticmethod(_sandbox)

    api_rate: ClassVar[float] = 20.0
    """VK API calls a second, all of one token together (VK allows a community token 20)."""
    lookup_timeout: ClassVar[float] = 3.0
    """Seconds a ``users.get`` for an unknown client may take before the event goes on without the name."""
    retry_pause: ClassVar[float] = 1.0
    """First pause after a failed long poll or setup; doubles up to :attr:`max_retry_pause`."""
    max_retry_pause: ClassVar[float] = 60.0
    confirmation_retry: ClassVar[float] = 10.0
    """Seconds after a failed ``groups.getCallbackConfirmationCode`` before the next confirmation asks again."""

    config: VKSettings

    def __init__(self, config: msgspec.Struct, context: AdapterContext) -> None:
        assert isinstance(config, VKSettings)
        super().__init__(config, context)
        self.config = config
        # One limit per community, shared by every process that serves it.
        self.api = VkApi(
            context.http, config.api_url, config.token, limiter=context.limiter("api", self.api_rate, 1.0, burst=1)
        )
        self.memory = Memory()
        self.community: dict[str, Any] | None = None
        """``groups.getById``'s answer, once known."""
        self._allowed: dict[int, bool] = {}
        self._confirmation = config.confirmation_code
        self._confirming = anyio.Lock()
        self._confirmation_retry_at = 0.0
        self._setup_pending = False
        self._version_warned = False

    @property
    def log(self) -> FilteringBoundLogger:
        """The instance's logger."""
        return self.context.log

    # -- webhooks -------------------------------------------------------------------------------

    def _secret_matches(self, given: object) -> bool:
        return same_secret(given, self.config.secret)

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """Answer ``confirmation``; refuse a body whose ``group_id`` or ``secret`` is not this community's."""
        if self.config.mode != "callback":
            raise SignatureError(f"vk instance {self.context.instance!r} reads Bots Long Poll, not the Callback API")
        try:
            raw = msgspec.json.decode(request.body)
        except (msgspec.DecodeError, *NOT_JSON):
            raise SignatureError("the body is not a VK Callback API event") from None
        if not isinstance(raw, dict) or raw.get("group_id") != self.config.group_id:
            group = raw.get("group_id") if isinstance(raw, dict) else None
            raise SignatureError(f"an event for community {group!r}; this instance serves {self.config.group_id}")
        given = raw.get("secret")
        if raw.get("type") == "confirmation":
            # VK sends the server's secret with the confirmation too: the code is for VK alone.
            if not self._secret_matches(given):
                raise SignatureError("the confirmation request's secret does not match the instance's secret")
            return await self._confirm()
        if not self._secret_matches(given):
            raise SignatureError("the event's secret does not match the secret key of the Callback API server")
        await self._prepare(decode_event(request.body))
        return None

    async def _confirm(self) -> WebhookResponse:
        """The community's code: configured, or asked from VK once and kept (one lookup at a time, and
        after a failed one none for :attr:`confirmation_retry` seconds)."""
        async with self._confirming:
            if not self._confirmation and time.monotonic() >= self._confirmation_retry_at:
                try:
                    answer = await self.api.call(
                        "groups.getCallbackConfirmationCode", {"group_id": self.config.group_id}
                    )
                    self._confirmation = str(answer["code"])
                except (MessengerError, KeyError, TypeError) as exc:
                    self._confirmation_retry_at = time.monotonic() + self.confirmation_retry
                    self.log.error(
                        "cannot answer VK's confirmation: set confirmation_code in the settings", error=str(exc)
                    )
        if not self._confirmation:
            return WebhookResponse(status=503, headers={"Retry-After": str(math.ceil(self.confirmation_retry))})
        self.log.info("Callback API server confirmed")
        return WebhookResponse(body=self._confirmation.encode())

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The neutral event of one Callback API request (none for events amoCRM has no use for)."""
        # A press of a button whose long data is no longer kept goes as its label, without callback_data.
        return await self.context.button_data.resolved(self._parse(decode_event(request.body)))

    def _parse(self, event: Event) -> tuple[InboundEvent, ...]:
        if event.v and event.v != API_VERSION and not self._version_warned:
            self._version_warned = True
            self.log.warning("VK sends events of another API version; set 5.199 in the server's settings", v=event.v)
        parsed = parse_event(event, self.memory, now=time.time())
        if parsed.skipped:
            self.log.debug("event skipped", type=event.type, reason=parsed.skipped)
        return parsed.events

    # -- what parsing needs ----------------------------------------------------------------------

    async def _prepare(self, event: Event) -> None:
        """Read and record in the state what :func:`parse_event` needs to know beyond ``event``."""
        kind, body = event.type, event.object
        try:
            if kind == "message_new":
                message = new_message(body)
                if message.from_id > 0 and not message.out:
                    if message.peer_id == message.from_id:
                        await self._set_allowed(message.from_id, True)
                    await self._people([message.from_id])
            elif kind in ("message_edit", "message_reply"):
                message = msgspec.convert(body, Message)
                peer = message.peer_id if message.peer_id < CHATS_FROM else 0
                await self._people([message.from_id, peer, message.admin_author_id or 0])
            elif kind in ("message_allow", "message_deny"):
                await self._set_allowed(int((body or {})["user_id"]), kind == "message_allow")
            elif kind == "wall_post_new":
                post = msgspec.convert(body, WallPost)
                key = post_key(post.owner_id, post.id)
                self.memory.posts[key] = info = post_info(post)
                await self.context.state.set(_POST + key, msgspec.json.encode(info))
            elif kind in ("wall_reply_new", "wall_reply_edit", "wall_reply_restore"):
                await self._remember_comment(msgspec.convert(body, WallComment))
            elif kind == "wall_reply_delete":
                deleted = msgspec.convert(body, CommentDelete)
                author = await self._comment(f"{deleted.post}_{deleted.id}")
                if author is not None:
                    await self._people([author.from_id])
        except (msgspec.ValidationError, KeyError, TypeError, ValueError, AttributeError):
            return  # parse() says what is wrong with the event

    async def _remember_comment(self, comment: WallComment) -> None:
        if comment.from_id <= 0:
            return
        key = comment.post
        if key not in self.memory.posts:
            stored = await self.context.state.get(_POST + key)
            if stored:
                self.memory.posts[key] = msgspec.json.decode(stored, type=PostInfo)
        info = CommentInfo(from_id=comment.from_id, text=comment.text[:500])
        self.memory.comments[f"{key}_{comment.id}"] = info
        await self.context.state.set(f"{_COMMENT}{key}_{comment.id}", msgspec.json.encode(info))
        await self._people([comment.from_id])

    async def _comment(self, key: str) -> CommentInfo | None:
        info = self.memory.comments.get(key)
        if info is None:
            stored = await self.context.state.get(_COMMENT + key)
            if stored:
                info = self.memory.comments[key] = msgspec.json.decode(stored, type=CommentInfo)
        return info

    async def _people(self, user_ids: Sequence[int]) -> None:
        """Names of ``user_ids`` into memory: from the state, else from ``users.get`` (kept in the state)."""
        missing: list[int] = []
        for user_id in user_ids:
            if user_id <= 0 or user_id in self.memory.people:
                continue
            stored = await self.context.state.get(f"{_USER}{user_id}")
            if stored:
                self.memory.people[user_id] = msgspec.json.decode(stored, type=Person)
            else:
                missing.append(user_id)
        if not missing:
            return
        users: Any = None
        with anyio.move_on_after(self.lookup_timeout):
            try:
                users = await self.api.call("users.get", {"user_ids": missing, "fields": "photo_100,domain"})
            except MessengerError as exc:
                self.log.info("client names not known yet", error=str(exc))
        for user in users if isinstance(users, list) else ():
            if isinstance(user, dict) and isinstance(user.get("id"), int):
                person = self.memory.people[user["id"]] = person_from_user(user)
                await self.context.state.set(f"{_USER}{user['id']}", msgspec.json.encode(person))

    async def _set_allowed(self, user_id: int, allowed: bool) -> None:
        if self._allowed.get(user_id) is allowed:
            return
        self._allowed[user_id] = allowed
        await self.context.state.set(f"{_ALLOWED}{user_id}", b"1" if allowed else b"0")
        if not allowed:
            self.log.info("client denied the community's messages; private sends fail as blocked", user_id=user_id)

    async def _is_allowed(self, user_id: int) -> bool | None:
        """``False`` when the client denied messages (or VK refused them), ``True`` when allowed, ``None`` unknown."""
        if user_id not in self._allowed:
            stored = await self.context.state.get(f"{_ALLOWED}{user_id}")
            if stored is None:
                return None
            self._allowed[user_id] = stored == b"1"
        return self._allowed[user_id]

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Check the token (``groups.getById``), then set up the Callback API server or Long Poll if asked to."""
        try:
            found = await self.api.call("groups.getById", {"group_id": self.config.group_id})
        except MessengerError as exc:
            if exc.reason == "disabled" or not exc.retryable:
                raise ConfigError(
                    f"vk instance {self.context.instance!r}: VK refuses groups.getById for community "
                    f"{self.config.group_id} at {self.config.api_url} ({exc}); check token and group_id"
                ) from None
            self.log.warning("VK is not reachable yet", error=str(exc))
        else:
            groups = found.get("groups") if isinstance(found, dict) else found
            self.community = groups[0] if isinstance(groups, list) and groups else None
            self.log.info("community ready", name=(self.community or {}).get("name"), group_id=self.config.group_id)
        if self.config.mode == "callback" and self.context.public_url is None:
            self.log.warning("no public URL, so VK cannot reach the Callback API: set server.public_url or longpoll")
            self.context.intake("not_registered")
            return
        if not self.config.configure:
            return
        try:
            await self._configure()
        except MessengerError as exc:
            if exc.reason == "disabled":
                raise ConfigError(
                    f"vk instance {self.context.instance!r}: the token may not manage the community ({exc}); "
                    "give it the 'manage' right, or set up the server by hand and configure = false"
                ) from None
            self.log.warning("VK setup failed; retrying in the background", error=str(exc))
            self.context.intake("not_registered")
            self._setup_pending = True

    async def _configure(self) -> None:
        group = self.config.group_id
        events = {event: 1 for event in CALLBACK_EVENTS}
        if self.config.mode == "longpoll":
            await self.api.call(
                "groups.setLongPollSettings", {"group_id": group, "enabled": 1, "api_version": API_VERSION, **events}
            )
            self.log.info("Bots Long Poll enabled", events=len(events))
            self.context.intake("polling")
            return
        url = self.context.public_url
        servers = await self.api.call("groups.getCallbackServers", {"group_id": group})
        items = servers.get("items", []) if isinstance(servers, dict) else []
        mine = next((s for s in items if s.get("url") == url), None) or next(
            (s for s in items if s.get("title") == self.config.server_title), None
        )
        server = {"group_id": group, "url": url, "title": self.config.server_title, "secret_key": self.config.secret}
        if mine is not None:
            server_id = int(mine["id"])
            await self.api.call("groups.editCallbackServer", {**server, "server_id": server_id})
        else:
            server_id = int((await self.api.call("groups.addCallbackServer", server))["server_id"])
        settings = {"group_id": group, "server_id": server_id, "api_version": API_VERSION, **events}
        await self.api.call("groups.setCallbackSettings", settings)
        if not self._confirmation:
            code = await self.api.call("groups.getCallbackConfirmationCode", {"group_id": group})
            self._confirmation = str(code["code"])
        self.log.info("Callback API server set up", url=url, server_id=server_id)
        self.context.intake("webhook")

    async def run(self) -> None:
        """Finish a setup that failed at startup; in ``longpoll`` mode, poll."""
        async with anyio.create_task_group() as tasks:
            if self._setup_pending:
                tasks.start_soon(self._retry_setup)
            if self.config.mode == "longpoll":
                tasks.start_soon(self._poll_exclusively)

    async def _retry_setup(self) -> None:
        pause = self.retry_pause
        while True:
            await anyio.sleep(pause)
            try:
                await self._configure()
            except MessengerError as exc:
                pause = min(pause * 2, self.max_retry_pause)
                self.log.warning("VK setup failed again", error=str(exc), retry_in_s=pause)
            else:
                self._setup_pending = False
                return

    # -- Bots Long Poll -------------------------------------------------------------------------

    async def _poll_exclusively(self) -> None:
        """Poll from one process of the fleet at a time: the messenger gives each update to one poller."""
        await self.context.exclusive("poll", self._poll)

    async def _poll(self) -> None:
        state = self.context.state
        stored = await state.get(_LONGPOLL)
        server = msgspec.json.decode(stored, type=LongPollServer) if stored else LongPollServer()
        wait = self.config.longpoll_wait
        pause = self.retry_pause
        while True:
            try:
                if not server.key:
                    fresh = await self.api.call("groups.getLongPollServer", {"group_id": self.config.group_id})
                    server = LongPollServer(server=fresh["server"], key=fresh["key"], ts=server.ts or str(fresh["ts"]))
                    await state.set(_LONGPOLL, msgspec.json.encode(server))
                query = {"act": "a_check", "key": server.key, "ts": server.ts, "wait": wait}
                answer = await self.api.get(server.server, query, http_timeout=wait + 10)
                server = await self._take_poll(server, answer)
            except RateLimited as exc:
                await anyio.sleep(exc.retry_after)
                continue
            except MessengerError as exc:
                log = self.log.error if exc.reason == "disabled" else self.log.warning
                log("Bots Long Poll failed", error=str(exc), retry_in_s=pause)
            except Exception as exc:  # the store refused: the same events are fetched again
                self.log.warning("storing polled events failed; they will be fetched again", error=str(exc))
            else:
                pause = self.retry_pause
                continue
            await anyio.sleep(pause)
            pause = min(pause * 2, self.max_retry_pause)

    async def _take_poll(self, server: LongPollServer, answer: Any) -> LongPollServer:
        """Submit one ``a_check`` answer's events; the server to read next (``failed`` 1, 2, 3 handled)."""
        if not isinstance(answer, dict):
            raise MessengerError("VK Long Poll answered something that is not an object", retryable=True)
        failed = answer.get("failed")
        if failed == 1:  # events were lost or ts is too old: go on from the ts VK gives
            self.log.warning("Bots Long Poll history was lost; going on from VK's ts", ts=answer.get("ts"))
            server = LongPollServer(server=server.server, key=server.key, ts=str(answer.get("ts", "")))
        elif failed == 2:  # the key expired: a new key, the same ts
            server = LongPollServer(server=server.server, ts=server.ts)
        elif failed is not None:  # 3: information lost, a new key and ts
            self.log.warning("Bots Long Poll asks for a new key and ts", failed=failed)
            server = LongPollServer()
        else:
            events: list[InboundEvent] = []
            for raw in answer.get("updates") or []:
                try:
                    event = msgspec.convert(raw, Event)
                except msgspec.ValidationError as exc:
                    self.log.warning("long poll event of an unexpected shape skipped", error=str(exc))
                    continue
                await self._prepare(event)
                try:
                    events.extend(self._parse(event))
                except Exception as exc:
                    self.log.warning("long poll event skipped", type=event.type, error=str(exc))
            if events:  # a store that fails here fails the poll: the same ts is read again
                await self.context.submit(await self.context.button_data.resolved(events))
            server = LongPollServer(server=server.server, key=server.key, ts=str(answer.get("ts", server.ts)))
        await self.context.state.set(_LONGPOLL, msgspec.json.encode(server))
        return server

    # -- sends ----------------------------------------------------------------------------------

    def _peer(self, chat: str) -> int:
        try:
            return int(chat)
        except ValueError:
            raise MessengerError(f"{chat!r} is not a VK peer id", reason="no_chat") from None

    async def _check_allowed(self, peer: int) -> None:
        if 0 < peer < CHATS_FROM and await self._is_allowed(peer) is False:
            raise error_for(901, "Can't send messages for users without permission")

    async def _call(self, peer: int | None, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.api.call(method, params)
        except MessengerError as exc:
            await self._refused(peer, exc)
            raise

    async def _refused(self, peer: int | None, exc: MessengerError) -> None:
        if isinstance(exc, VkApiError) and exc.code in BLOCKED_CODES and peer is not None and 0 < peer < CHATS_FROM:
            await self._set_allowed(peer, False)
        if exc.reason == "disabled":
            self.log.error("VK refuses the community token: nothing reaches clients until it is replaced", exc=str(exc))

    def _sent_id(self, result: Any) -> str:
        """The ``conversation_message_id`` of one ``messages.send`` with ``peer_ids``; raise its error."""
        item = result[0] if isinstance(result, list) and result else result
        if isinstance(item, dict):
            error = item.get("error")
            if isinstance(error, dict):
                raise error_for(int(error.get("code") or 0), str(error.get("description") or ""))
            cmid = item.get("conversation_message_id")
            if isinstance(cmid, int):
                return str(cmid)
        raise MessengerError(f"VK messages.send answered {result!r}, without conversation_message_id")

    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Upload the media, then send the parts (in one ``execute`` when there are several); delivered."""
        assert message.chat is not None
        peer = self._peer(message.chat)
        await self._check_allowed(peer)
        uploaded = [await self._uploaded(message, index, a, peer) for index, a in enumerate(message.attachments)]
        message = await self.context.button_data.keyed(message, fits_payload)
        parts = plan_message(message, peer, uploaded)
        try:
            ids = await self._send_parts(peer, parts)
        except VkApiError as exc:
            if exc.code != 914 or len(parts) != 1 or "message" not in parts[0]:
                raise
            self.log.info("VK found the text too long; sending it in shorter parts")  # nothing went out yet
            shorter = msgspec.structs.replace(message, dedup_key=f"{message.dedup_key}#short")
            ids = await self._send_parts(peer, plan_message(shorter, peer, uploaded, limit=MAX_MESSAGE_LENGTH // 4))
        for index in range(len(message.attachments)):
            await self.context.state.delete(f"{_UPLOAD}{message.dedup_key}:{index}")
        return SendResult(message_ids=tuple(ids), status="delivered")

    async def _send_parts(self, peer: int, parts: list[dict[str, Any]]) -> list[str]:
        for params in parts:  # before the call: VK's message_reply may come before its answer
            self.memory.sent[int(params["random_id"])] = True
        if len(parts) == 1:
            result = await self._call(peer, "messages.send", parts[0])
            try:
                return [self._sent_id(result)]
            except MessengerError as exc:
                await self._refused(peer, exc)
                raise
        ids: list[str] = []
        for start in range(0, len(parts), EXECUTE_LIMIT):
            batch = parts[start : start + EXECUTE_LIMIT]
            try:
                results = await self.api.execute([("messages.send", params) for params in batch])
                for result in results:
                    if isinstance(result, MessengerError):
                        raise result
                    ids.append(self._sent_id(result))
            except MessengerError as exc:
                await self._refused(peer, exc)
                raise
        return ids

    async def _uploaded(self, message: OutgoingMessage, index: int, attachment: Attachment, peer: int) -> str:
        """The VK attachment (``photo-1_2``) of one outgoing file, uploaded once per send even when retried."""
        key = f"{_UPLOAD}{message.dedup_key}:{index}"
        stored = await self.context.state.get(key) if message.dedup_key else None
        if stored:
            return stored.decode()
        name, content, mime = await self._download(attachment)
        value = None
        if attachment.kind in ("picture", "sticker") and mime in _PHOTO_TYPES:
            value = await self._upload_photo(peer, (name, content, mime))
        if value is None:
            kind = "audio_message" if attachment.kind == "voice" else "doc"
            value = await self._upload_doc(peer, kind, (name, content, mime))
        if message.dedup_key:
            await self.context.state.set(key, value.encode())
        return value

    async def _upload_photo(self, peer: int, file: tuple[str, bytes, str]) -> str | None:
        server = await self._call(peer, "photos.getMessagesUploadServer", {"peer_id": peer})
        uploaded = await self.api.upload(server["upload_url"], "photo", file)
        if uploaded.get("photo") in (None, "", "[]"):
            self.log.info("VK did not take the picture as a photo; sending it as a document")
            return None
        saved = await self._call(
            peer,
            "photos.saveMessagesPhoto",
            {"photo": uploaded["photo"], "server": uploaded.get("server"), "hash": uploaded.get("hash")},
        )
        photo = saved[0]
        access = f"_{photo['access_key']}" if photo.get("access_key") else ""
        return f"photo{photo['owner_id']}_{photo['id']}{access}"

    async def _upload_doc(self, peer: int, kind: str, file: tuple[str, bytes, str]) -> str:
        server = await self._call(peer, "docs.getMessagesUploadServer", {"type": kind, "peer_id": peer})
        uploaded = await self.api.upload(server["upload_url"], "file", file)
        saved = await self._call(peer, "docs.save", {"file": uploaded["file"], "title": file[0]})
        doc = saved.get(saved.get("type", "doc")) if isinstance(saved, dict) else None
        if not isinstance(doc, dict):
            raise MessengerError(f"VK docs.save answered {saved!r}")
        access = f"_{doc['access_key']}" if doc.get("access_key") else ""
        return f"doc{doc['owner_id']}_{doc['id']}{access}"

    async def _download(self, attachment: Attachment) -> tuple[str, bytes, str]:
        """The file behind an outgoing attachment's URL, to upload it to VK."""
        assert attachment.url is not None
        fetched = await self._fetch(attachment.url)
        assert isinstance(fetched.content, bytes)
        name = attachment.file_name or fetched.file_name or attachment.kind
        mime = (
            attachment.mime_type or fetched.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        return name, fetched.content, mime

    async def _fetch(self, url: str) -> FetchedMedia:
        """A file by URL (a manager's attachment, a client's file in an event) through the SSRF guard."""
        try:
            got = await fetch_url(self.context.http, url, max_bytes=DOWNLOAD_LIMIT, guard=self.context.url_guard)
        except MediaTooLarge:
            raise MessengerError(f"the file is larger than the {DOWNLOAD_LIMIT // 2**20} MB VK handles") from None
        return FetchedMedia(
            content=got.content, content_type=got.content_type or None, file_name=got.file_name, size=len(got.content)
        )

    async def send_comment_reply(self, reply: OutgoingCommentReply) -> SendResult:
        """Answer a comment under it (``wall.createComment`` with ``reply_to_comment`` and a ``guid``)."""
        try:
            owner, post = parse_post_key(reply.post_id)
        except ValueError:
            raise MessengerError(f"{reply.post_id!r} is not a VK post") from None
        if owner != -self.config.group_id or not reply.comment_id.isdigit():
            raise MessengerError(f"post {reply.post_id} is not on the wall of community {self.config.group_id}")
        ids: list[str] = []
        for index, chunk in enumerate(split_text(reply.text, MAX_COMMENT_LENGTH)):
            params = {
                "owner_id": owner,
                "post_id": post,
                "from_group": self.config.group_id,
                "message": chunk,
                "reply_to_comment": int(reply.comment_id),
                "guid": comment_guid(reply.dedup_key or reply.comment_id, index),
            }
            result = await self._call(None, "wall.createComment", params)
            ids.append(f"comment:{reply.post_id}:{result['comment_id']}")
        if not ids:
            raise MessengerError("an empty answer cannot be posted as a comment")
        return SendResult(message_ids=tuple(ids), status="delivered")

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set our reaction (VK's numbered set) on a private message, or take it back."""
        if not reaction.message_id.isdigit():
            raise MessengerError(f"{reaction.message_id!r} is a comment; VK takes reactions only on messages")
        peer = self._peer(reaction.chat)
        params: dict[str, Any] = {"peer_id": peer, "cmid": int(reaction.message_id)}
        if reaction.removed:
            await self._call(peer, "messages.deleteReaction", params)
            return
        emoji = self.reactions.match(reaction.emoji)
        if emoji is None:
            self.log.warning("reaction not sent: VK does not offer this emoji", emoji=reaction.emoji)
            raise MessengerError(f"VK does not offer the reaction {reaction.emoji!r}")
        await self._call(peer, "messages.sendReaction", {**params, "reaction_id": EMOJI_REACTIONS[emoji]})

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """``messages.setActivity typing`` (VK shows it up to 10 s, or until our next message); not in comments."""
        if typing.post_id is not None:
            return  # VK shows no typing under posts; the private dialog is not where the manager types
        peer = self._peer(typing.chat)
        if 0 < peer < CHATS_FROM and await self._is_allowed(peer) is False:
            return
        params = {"peer_id": peer, "type": "typing", "group_id": self.config.group_id}
        await self._call(peer, "messages.setActivity", params)

    # -- media ----------------------------------------------------------------------------------

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """The bytes of a client's file: ``handle`` is the URL VK gave in the event."""
        return await self._fetch(handle)
