"""A faithful fake of the VK API for one community, in-process, for tests, the sandbox and plugin authors.

:class:`FakeVK` is an ASGI app (the object itself) serving ``/method/{name}``, the upload
servers, the files its clients send and Bots Long Poll, with an in-memory world and a
scriptable client side::

    fake = FakeVK(http=connector_client)                       # http delivers Callback API events
    fake.add_callback_server("http://connector/hooks/vk/main", secret="s3cret")   # as on the settings page
    await fake.client_writes(101, "Hello")                     # message_new, confirmed and delivered
    await fake.client_comments(101, 501, "How much?")          # wall_post_new (new post), wall_reply_new
    await fake.admin_writes(101, "Ready tomorrow")             # an admin in VK's interface: message_reply
    fake.received(101)                                         # what the community sent there

What it does as VK does:

- HTTP 200 always; ``{"response": ...}`` or ``{"error": {"error_code", "error_msg",
  "request_params"}}``; the token as ``access_token`` or ``Authorization: Bearer`` (5), ``v``
  required (8), unknown methods (3), parameters from the query and a urlencoded or multipart body;
- what the community sends is checked: ``random_id`` required and recognised for an hour (the
  retry gets the first message's ids, nothing new is sent), empty text (100), over 4,096
  characters (914), keyboards (911), attachments it never saved (100), quotes of missing
  messages (100), a client who never allowed messages (901), blacklisted the community (900) or
  closed their privacy (902), per peer with ``peer_ids``; reactions outside VK's set (100);
  ``wall.createComment`` on unknown posts and comments, deduplicated by ``guid``; methods a
  community token cannot call (``wall.getById``: 27);
- upload servers for message photos and documents (``photos.getMessagesUploadServer`` → POST →
  ``photos.saveMessagesPhoto``, ``docs.getMessagesUploadServer`` → POST → ``docs.save``; a
  "photo" that is no image comes back as ``"photo": "[]"``);
- ``execute`` with the VKScript ``return [API.a.b({...}), ...];`` (``execute_errors`` for the
  calls that failed);
- the Callback API: servers added on the settings page (:meth:`FakeVK.add_callback_server`) or
  with ``groups.addCallbackServer`` / ``setCallbackSettings`` (only the event types switched on
  are sent); a server is sent ``confirmation`` before its first event and must answer the code;
  each event carries the server's ``secret`` and is retried with ``X-Retry-Counter`` until the
  answer is ``ok``, waiting what ``Retry-After`` asks on 410/429/503; duplicates and lost
  answers on demand;
- ``message_reply`` for every message the community sends: an admin's in VK's interface (with
  ``admin_author_id`` and a ``random_id`` of VK's client) and each ``messages.send`` (with the
  caller's ``random_id``), after the API's answer, or before it with ``echo_before_answer``;
- Bots Long Poll (``groups.setLongPollSettings``, ``getLongPollServer``, ``a_check`` with
  ``failed`` 1, 2 and 3 on demand);
- error codes on demand (:meth:`FakeVK.fail_next`) and, optionally, VK's 20 requests a second.

Stricter than VK, to catch our own typos: an unknown parameter is refused with error 100.
"""

from __future__ import annotations

import copy
import itertools
import json
import mimetypes
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import anyio
import httpx
from amoconnect.capabilities import ReactionSet
from amoconnect.model import Button, ListMessage, ListRow, ListSection
from amoconnect.signing import same_secret
from amoconnect.testing.fakes import ClientMedia, ReceivedMessage, ReceivedReaction
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ._fakeapi import Executed, VkWorld
from ._fakeworld import (
    EVENT_TYPES,
    ApiCall,
    ApiError,
    CallbackServer,
    Comment,
    Delivery,
    DialogMessage,
    Fault,
    event_id,
    photo_object,
    read_form,
)
from .vkapi import API_VERSION, EMOJI_REACTIONS, REACTIONS, callback_data, parse_post_key

__all__ = ["DEFAULT_GROUP", "DEFAULT_SECRET", "DEFAULT_TOKEN", "ApiCall", "Delivery", "FakeVK", "link", "video"]

DEFAULT_TOKEN: Final = "vk1.a.sandbox-community-token"
"""The community token of a :class:`FakeVK` built without one."""
DEFAULT_GROUP: Final = 218000001
"""The community id of a :class:`FakeVK` built without one."""
DEFAULT_SECRET: Final = "sandbox-secret"
"""The Callback API secret key of the sandbox's server."""
_CLIENT_INFO: Final = {
    "button_actions": ["text", "vkpay", "open_app", "location", "open_link", "callback"],
    "keyboard": True,
    "inline_keyboard": True,
    "carousel": True,
    "lang_id": 0,
}
_EXTENSIONS: Final = {"picture": "jpg", "voice": "ogg", "sticker": "png"}
_MEDIA: Final = {"picture": "photo", "file": "doc", "voice": "audio_message", "sticker": "sticker", "audio": "doc"}


def video(owner_id: int, video_id: int, title: str) -> dict[str, Any]:
    """A video attachment (VK gives bots no file of it, only its page)."""
    image = [{"url": f"https://sun9-2.userapi.com/video/{video_id}.jpg", "width": 320, "height": 240}]
    body = {"id": video_id, "owner_id": owner_id, "title": title, "duration": 30, "type": "video", "image": image}
    return {"type": "video", "video": body}


def link(url: str, title: str = "") -> dict[str, Any]:
    """A link attachment (VK's preview of a URL)."""
    return {"type": "link", "link": {"url": url, "title": title, "caption": httpx.URL(url).host, "is_favorite": False}}


def _foreign(message: DialogMessage) -> dict[str, Any]:
    return {
        "date": message.date,
        "from_id": message.from_id,
        "text": message.text,
        "attachments": copy.deepcopy(message.attachments),
        "conversation_message_id": message.cmid,
        "peer_id": message.peer_id,
        "id": message.id,
        "fwd_messages": [],
    }


class FakeVK(VkWorld):
    """One community's VK API, Callback API and Bots Long Poll; the object is the ASGI app.

    ``http`` POSTs Callback API requests (a fresh client per request when ``None``); a request is
    tried ``delivery_attempts`` times, ``delivery_backoff`` seconds apart, doubling, and a
    ``Retry-After`` is waited for up to ``retry_after_cap`` seconds; a Long Poll request waits
    at most ``longpoll_max_wait`` seconds; ``clock`` gives unix seconds.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        group_id: int = DEFAULT_GROUP,
        *,
        http: httpx.AsyncClient | None = None,
        group_name: str = "amoconnect test community",
        delivery_attempts: int = 3,
        delivery_backoff: float = 0.05,
        retry_after_cap: float = 10800.0,
        longpoll_max_wait: float = 25.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(token, group_id, group_name=group_name, clock=clock)
        self.http = http
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.retry_after_cap = retry_after_cap
        self.longpoll_max_wait = longpoll_max_wait
        self.events: list[dict[str, Any]] = []
        """Every event created, in order."""
        self.pending: list[tuple[int, dict[str, Any]]] = []
        """``(server id, event)`` not yet delivered."""
        self.deliveries: list[Delivery] = []
        """Every Callback API request, confirmations included."""
        self.longpoll_history: list[dict[str, Any]] = []
        self.longpoll_key = "lp-key-1"
        self._longpoll_first = 0
        self._longpoll_lost = False
        self._keys = itertools.count(2)
        self._event_ids = itertools.count(1)
        self._duplicate = False
        self._lose = 0
        self._lock: anyio.Lock | None = None
        self._new_event: anyio.Event | None = None
        self._sandbox_users: dict[str, int] = {}
        self.admins: list[int] = []
        """Users who write as the community in VK's interface (:meth:`admin_writes`)."""
        self._admin_random_ids = itertools.count(1_900_000_001, 7919)
        self.echo_before_answer = False
        """True: the ``message_reply`` of a ``messages.send`` goes out before the API answers (VK promises no order)."""
        self._sandbox_turn = 0
        self._app = Starlette(
            routes=[
                Route("/method/{method}", self._api, methods=["GET", "POST"]),
                Route("/upload/{kind}/{ticket}", self._upload, methods=["POST"]),
                Route("/files/{file_id:int}/{name}", self._file, methods=["GET"]),
                Route("/lp/{group_id:int}", self._longpoll, methods=["GET"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        await self._app(scope, receive, send)

    @property
    def app(self) -> FakeVK:
        """The ASGI app (the fake itself)."""
        return self

    def settings(self, api_url: str, **overrides: Any) -> dict[str, Any]:
        """Settings of a ``vk`` source that talks to this fake at ``api_url``."""
        self.base_url = api_url.rstrip("/")
        return {"token": self.token, "group_id": self.group_id, "api_url": api_url, **overrides}

    # -- the sandbox and the conformance suite --------------------------------------------------

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of the sandbox's community: the connector sets its Callback API server up at startup."""
        return self.settings(api_url, secret=DEFAULT_SECRET, configure=True)

    def _sandbox_user(self, chat: str) -> int:
        if chat.lstrip("-").isdigit():
            return int(chat)
        found = self._sandbox_users.get(chat)
        if found is None:
            found = self._sandbox_users[chat] = 700001 + len(self._sandbox_users)
            self.user(found, chat.replace("-", " ").title())
        return found

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """The client named ``chat`` writes ``text``: in private messages and under a post, in turns."""
        user = self._sandbox_user(chat)
        self._sandbox_turn += 1
        if self._sandbox_turn % 2:
            await self.client_writes(user, text)
        else:
            await self.client_comments(user, f"-{self.group_id}_1", text)

    def sandbox_received(self, chat: str) -> list[str]:
        """Texts the community sent the client named ``chat``: privately, and in answer to their comments."""
        user = self._sandbox_user(chat)
        private = [m.text for m in self.sent if m.peer_id == user]
        return private + [c.text for c in self.comments.values() if c.from_id < 0 and c.reply_to_user == user]

    def _peer(self, chat: str | int) -> int:
        peer = chat if isinstance(chat, int) else self._sandbox_user(chat)
        self.user(peer)
        return peer

    def received(self, chat: str | int) -> list[ReceivedMessage]:
        """What the community sent to ``chat``, oldest first, as the conformance suite reads it."""
        return [self._received(m) for m in self.sent if m.peer_id == self._peer(chat)]

    @staticmethod
    def _received(message: DialogMessage) -> ReceivedMessage:
        buttons: list[tuple[Button, ...]] = []
        rows: list[ListRow] = []
        for row in (message.keyboard or {}).get("buttons", []):
            found = []
            for button in row:
                action = button["action"]
                data = callback_data(action.get("payload"))
                found.append(Button(text=action["label"], url=action.get("link"), callback_data=data))
                if data is not None and action["type"] == "text":
                    rows.append(ListRow(callback_data=data, title=action["label"]))
            buttons.append(tuple(found))
        kind, name = "text", ""
        if message.attachments:
            first = message.attachments[0]
            kind = {"photo": "picture", "doc": "file", "audio_message": "voice"}.get(first["type"], first["type"])
            name = str(first.get("doc", {}).get("title", ""))
        menu = ListMessage(body=message.text, button="", sections=(ListSection(title="", rows=tuple(rows)),))
        return ReceivedMessage(
            message_id=str(message.cmid),
            text=message.text,
            kind=kind,
            file_name=name,
            buttons=tuple(buttons),
            list_message=menu if rows else None,
            reply_to=str(message.reply_to) if message.reply_to is not None else None,
        )

    def received_reactions(self, chat: str | int) -> list[ReceivedReaction]:
        """Reactions the community set (or took back: ``""``) in ``chat``, in order."""
        peer = self._peer(chat)
        return [ReceivedReaction(str(cmid), REACTIONS[r] if r else "") for p, cmid, r in self.reactions if p == peer]

    def received_typing(self, chat: str | int) -> int:
        """How often the community showed typing in ``chat``."""
        peer = self._peer(chat)
        return sum(1 for p, kind, _ in self.activities if p == peer and kind == "typing")

    def received_comment_replies(self, post_id: str) -> list[str]:
        """The community's comments under post ``post_id``, oldest first."""
        key = self._post_key(post_id)
        return [c.text for c in self.comments.values() if c.from_id < 0 and c.post.key == key]

    # -- HTTP -----------------------------------------------------------------------------------

    async def _api(self, request: Request) -> Response:
        self.base_url = str(request.base_url).rstrip("/")
        method = request.path_params["method"]
        raw, _ = await read_form(request)
        token = raw.get("access_token") or request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            if not token:
                raise ApiError(5)
            if not same_secret(token, self.token):
                raise ApiError(5)
            before = len(self.sent)
            result = self.dispatch(method, raw)
        except ApiError as exc:
            params = [{"key": "method", "value": method}, {"key": "oauth", "value": "1"}]
            params += [{"key": k, "value": v} for k, v in raw.items() if k != "access_token"]
            error = {"error_code": exc.code, "error_msg": exc.message, "request_params": params}
            return JSONResponse({"error": error})
        # Every message the community sends comes back as message_reply, ours through the API too.
        echoes = [self._message_object(message) for message in self.sent[before:]]
        if echoes and self.echo_before_answer:
            await self._echo(echoes)
        background = BackgroundTask(self._echo, echoes) if echoes and not self.echo_before_answer else None
        if isinstance(result, Executed):
            body: dict[str, Any] = {"response": result.response}
            if result.errors:
                body["execute_errors"] = result.errors
            return JSONResponse(body, background=background)
        return JSONResponse({"response": result}, background=background)

    async def _echo(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await self._emit("message_reply", message)

    async def _upload(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        _, files = await read_form(request)
        upload = files.get("photo" if kind == "photo" else "file")
        if upload is None:
            return JSONResponse({"error": "no file was uploaded"})
        name, content, mime = upload
        if mime in ("", "application/octet-stream", "text/plain"):
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return JSONResponse(self.take_upload(kind, request.path_params["ticket"], name, content, mime))

    async def _file(self, request: Request) -> Response:
        stored = self.files.get(request.path_params["file_id"])
        if stored is None:
            return Response(b"not found", status_code=404)
        return Response(stored.content, media_type=stored.mime)

    # -- Bots Long Poll -------------------------------------------------------------------------

    def longpoll_server(self) -> dict[str, Any]:
        """``groups.getLongPollServer``: this fake's Long Poll, a fresh key, the current ts."""
        return {
            "key": self.longpoll_key,
            "server": f"{self.base_url}/lp/{self.group_id}",
            "ts": str(self._longpoll_first + len(self.longpoll_history)),
        }

    def expire_longpoll_key(self) -> None:
        """The Long Poll key expires: the next request gets ``failed: 2``."""
        self.longpoll_key = f"lp-key-{next(self._keys)}"

    def lose_longpoll_history(self) -> None:
        """Events are forgotten: a request with an older ts gets ``failed: 1``, the next one ``failed: 3``."""
        self._longpoll_first += len(self.longpoll_history)
        self.longpoll_history.clear()
        self._longpoll_lost = True

    async def _longpoll(self, request: Request) -> Response:
        query = request.query_params
        if request.path_params["group_id"] != self.group_id or query.get("act") != "a_check":
            return JSONResponse({"failed": 2})
        if query.get("key") != self.longpoll_key or not self.longpoll_enabled:
            return JSONResponse({"failed": 2})
        if self._longpoll_lost:
            self._longpoll_lost = False
            return JSONResponse({"failed": 3})
        end = self._longpoll_first + len(self.longpoll_history)
        try:
            ts = int(query.get("ts", ""))
        except ValueError:
            ts = -1
        if not self._longpoll_first <= ts <= end:
            return JSONResponse({"failed": 1, "ts": str(end)})
        wait = min(float(query.get("wait", "25") or 25), self.longpoll_max_wait)
        if ts == end and wait > 0:
            self._new_event = self._new_event or anyio.Event()
            with anyio.move_on_after(wait):
                await self._new_event.wait()
        updates = self.longpoll_history[ts - self._longpoll_first :]
        return JSONResponse({"ts": str(self._longpoll_first + len(self.longpoll_history)), "updates": updates})

    # -- the Callback API -----------------------------------------------------------------------

    def add_callback_server(
        self, url: str, *, secret: str = "", title: str = "amoconnect", events: Sequence[str] | None = None
    ) -> CallbackServer:
        """A server added on the community's settings page, with ``events`` (all the fake knows by default)."""
        server = CallbackServer(len(self.servers) + 1, url, title, secret, events=set(events or EVENT_TYPES))
        self.servers[server.id] = server
        return server

    def duplicate_next(self) -> None:
        """Deliver the next event twice (a second, fresh request), as VK sometimes does."""
        self._duplicate = True

    def lose_answers(self, n: int) -> None:
        """The next ``n`` answers of the connector are lost on the way back: VK retries with ``X-Retry-Counter``."""
        self._lose += n

    def fail_next(self, n: int, code: int, *, method: str | None = None, message: str | None = None) -> None:
        """Answer the next ``n`` calls (of ``method`` only, when given) with VK's error ``code``."""
        self.faults.append(Fault(remaining=n, code=code, message=message, method=method))

    def calls_to(self, method: str) -> list[ApiCall]:
        """Calls of one method, in order."""
        return [call for call in self.calls if call.method == method]

    async def _emit(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        event = {
            "group_id": self.group_id,
            "type": kind,
            "event_id": event_id(next(self._event_ids)),
            "v": API_VERSION,
            "object": copy.deepcopy(body),
        }
        self.events.append(event)
        if self.longpoll_enabled and kind in self.longpoll_events:
            self.longpoll_history.append(event)
            if self._new_event is not None:
                self._new_event.set()
                self._new_event = None
        targets = [server for server in self.servers.values() if kind in server.events]
        self.pending.extend((server.id, event) for server in targets)
        if targets:
            await self.deliver_pending()
        return event

    async def deliver_pending(self) -> None:
        """POST pending events in order; stop at the first whose every attempt failed (it stays pending)."""
        self._lock = self._lock or anyio.Lock()
        async with self._lock:
            while self.pending:
                server_id, event = self.pending[0]
                server = self.servers.get(server_id)
                if server is not None:
                    if server.status != "ok" and not await self._confirm(server):
                        return
                    times, self._duplicate = (2 if self._duplicate else 1), False
                    for _ in range(times):
                        if not await self._post(server, event):
                            return
                self.pending.pop(0)

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str, str | None]:
        try:
            if self.http is None:
                async with httpx.AsyncClient() as client:
                    response = await client.post(url, content=body, headers=headers, timeout=10.0)
            else:
                response = await self.http.post(url, content=body, headers=headers, timeout=10.0)
        except httpx.TransportError:
            return None, "", None
        return response.status_code, response.text, response.headers.get("retry-after")

    async def _confirm(self, server: CallbackServer) -> bool:
        request: dict[str, Any] = {"type": "confirmation", "group_id": self.group_id}
        if server.secret_key:
            request["secret"] = server.secret_key
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        status, answer, _ = await self._send(server.url, body, headers)
        self.deliveries.append(Delivery("confirmation", server.url, body, headers, status, answer))
        server.status = "ok" if status == 200 and same_secret(answer.strip(), self.confirmation_code) else "failed"
        return server.status == "ok"

    async def _post(self, server: CallbackServer, event: dict[str, Any]) -> bool:
        sent = dict(event, v=server.api_version)
        if server.secret_key:
            sent["secret"] = server.secret_key
        body = json.dumps(sent, ensure_ascii=False).encode()
        delay = self.delivery_backoff
        for attempt in range(1, self.delivery_attempts + 1):
            headers = {"Content-Type": "application/json"}
            if attempt > 1:
                headers["X-Retry-Counter"] = str(attempt - 1)
            status, answer, retry_after = await self._send(server.url, body, headers)
            if self._lose > 0 and status is not None:
                self._lose -= 1
                status, answer = None, ""
            self.deliveries.append(Delivery(event["event_id"], server.url, body, headers, status, answer))
            if status == 200 and answer.strip() == "ok":
                return True
            if attempt == self.delivery_attempts:
                break
            pause = delay
            if status in (410, 429, 503) and retry_after and retry_after.strip().isdigit():
                pause = min(float(retry_after), self.retry_after_cap)
            await anyio.sleep(pause)
            delay *= 2
        return False

    # -- the client side ------------------------------------------------------------------------

    def add_user(self, first_name: str, last_name: str = "", *, user_id: int | None = None, domain: str = "") -> int:
        """A VK user (who has not written to the community yet); returns their id."""
        user_id = user_id or 100001 + len(self.users)
        user = self.user(user_id, first_name, last_name)
        user.first_name, user.last_name, user.domain = first_name, last_name, domain
        return user_id

    def _media(self, user: int, media: ClientMedia) -> dict[str, Any]:
        kind = _MEDIA.get(media.kind)
        name = media.file_name or f"{media.kind}.{_EXTENSIONS.get(media.kind, 'bin')}"
        mime = media.mime_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        stored = self.store_file(media.content, name, mime)
        url = self.file_url(stored)
        object_id = stored.id + 456239000
        if kind == "photo":
            return {"type": "photo", "photo": photo_object(object_id, user, url, self.now(), "f00d")}
        if kind == "audio_message":
            voice = {"duration": 3, "id": object_id, "link_mp3": url, "link_ogg": url, "owner_id": user}
            return {"type": "audio_message", "audio_message": {**voice, "access_key": "f00d", "waveform": [0, 9, 0]}}
        if kind == "sticker":
            images = [{"url": url, "width": 128, "height": 128}, {"url": url, "width": 256, "height": 256}]
            sticker = {"product_id": 1, "sticker_id": object_id % 1000, "images": images}
            return {"type": "sticker", "sticker": {**sticker, "inner_type": "base_sticker_new", "is_allowed": True}}
        if kind is None:
            raise ValueError(f"VK clients send pictures, files, voice, audio and stickers, not {media.kind!r}")
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        doc = {"id": object_id, "owner_id": user, "title": name, "size": len(media.content), "ext": ext}
        return {"type": "doc", "doc": {**doc, "date": self.now(), "type": 8, "url": url, "access_key": "f00d"}}

    def _message_object(self, message: DialogMessage) -> dict[str, Any]:
        found: dict[str, Any] = {
            "date": message.date,
            "from_id": message.from_id,
            "id": message.id,
            "out": 1 if message.out else 0,
            "version": 10_000_000 + message.id,
            "attachments": copy.deepcopy(message.attachments),
            "conversation_message_id": message.cmid,
            "fwd_messages": [_foreign(self.message(message.peer_id, cmid)) for cmid in message.fwd],
            "important": False,
            "is_hidden": False,
            "peer_id": message.peer_id,
            "random_id": message.random_id,
            "text": message.text,
        }
        if message.reply_to is not None:
            found["reply_message"] = _foreign(self.message(message.peer_id, message.reply_to))
        if message.payload is not None:
            found["payload"] = message.payload
        if message.geo is not None:
            found["geo"] = message.geo
        if message.update_time is not None:
            found["update_time"] = message.update_time
        if message.admin_author_id is not None:
            found["admin_author_id"] = message.admin_author_id
        return found

    async def client_writes(
        self,
        chat: str | int,
        text: str = "",
        *,
        media: ClientMedia | None = None,
        reply_to: str | int | None = None,
        forward: Sequence[str | int] = (),
        payload: str | None = None,
        location: tuple[float, float] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """The client writes privately: text, ``media``, a quote, forwards, a button's ``payload``, a place,
        or raw ``attachments`` (:func:`video`, :func:`link`). Writing allows the community's messages."""
        peer = self._peer(chat)
        self.users[peer].allowed = True
        items = ([self._media(peer, media)] if media is not None else []) + [copy.deepcopy(a) for a in attachments]
        geo = None
        if location is not None:
            geo = {"type": "point", "coordinates": {"latitude": location[0], "longitude": location[1]}}
        message = self.add_message(
            peer,
            peer,
            text=text,
            attachments=items,
            reply_to=int(reply_to) if reply_to is not None else None,
            fwd=[int(cmid) for cmid in forward],
            payload=payload,
            geo=geo,
        )
        return await self._emit("message_new", {"message": self._message_object(message), "client_info": _CLIENT_INFO})

    # -- the community's admins, in VK's own interface -------------------------------------------

    async def admin_writes(
        self,
        chat: str | int,
        text: str = "",
        *,
        admin: int | None = None,
        media: ClientMedia | None = None,
        reply_to: str | int | None = None,
    ) -> dict[str, Any]:
        """An admin answers the client in VK's interface: a ``message_reply`` with ``admin_author_id``."""
        peer = self._peer(chat)
        if admin is None:
            admin = self.admins[0] if self.admins else self.add_user("Olga", "Admin", domain="olga_admin")
            if admin not in self.admins:
                self.admins.append(admin)
        message = self.add_message(
            peer,
            -self.group_id,
            text=text,
            attachments=[self._media(-self.group_id, media)] if media is not None else [],
            reply_to=int(reply_to) if reply_to is not None else None,
            random_id=next(self._admin_random_ids),
            admin_author_id=admin,
        )
        return await self._emit("message_reply", self._message_object(message))

    async def admin_edits(self, chat: str | int, message_id: str | int, text: str) -> dict[str, Any]:
        """An admin edits a community message ``message_id`` in VK's interface: ``message_edit``."""
        message = self.message(self._peer(chat), int(message_id))
        if not message.out:
            raise LookupError(f"message {message_id} is the client's; an admin edits the community's")
        message.text, message.update_time = text, self.now()
        return await self._emit("message_edit", self._message_object(message))

    async def business_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> object:
        """The conformance suite's name for :meth:`admin_writes`."""
        return await self.admin_writes(chat, text, reply_to=reply_to)

    async def client_presses(self, chat: str | int, callback_data_: str) -> dict[str, Any]:
        """The client presses the newest keyboard button that sends ``callback_data_``: a message with its label."""
        peer = self._peer(chat)
        for message in reversed([m for m in self.sent if m.peer_id == peer]):
            for row in (message.keyboard or {}).get("buttons", []):
                for button in row:
                    action = button["action"]
                    if action["type"] == "text" and callback_data(action.get("payload")) == callback_data_:
                        return await self.client_writes(peer, action["label"], payload=action.get("payload"))
        raise LookupError(f"the community sent {chat} no button with callback data {callback_data_!r}")

    async def client_edits(self, chat: str | int, message_id: str | int, text: str) -> dict[str, Any]:
        """The client edits its message ``message_id`` (a ``conversation_message_id``)."""
        message = self.message(self._peer(chat), int(message_id))
        if message.out:
            raise LookupError(f"message {message_id} is the community's; a client edits its own")
        message.text, message.update_time = text, self.now()
        return await self._emit("message_edit", self._message_object(message))

    async def client_reacts(
        self, chat: str | int, message_id: str | int, emoji: str, removed: bool = False
    ) -> dict[str, Any]:
        """The client sets (or takes back) a reaction on a message of the dialog."""
        peer = self._peer(chat)
        message = self.message(peer, int(message_id))
        body: dict[str, Any] = {"reacted_id": peer, "peer_id": peer, "cmid": message.cmid}
        if not removed:
            matched = ReactionSet.of(*REACTIONS.values()).match(emoji)
            if matched is None:
                raise ValueError(f"VK offers no reaction {emoji!r}")
            body["reaction_id"] = message.reaction = EMOJI_REACTIONS[matched]
        else:
            message.reaction = None
        return await self._emit("message_reaction_event", body)

    async def client_types(self, chat: str | int) -> dict[str, Any]:
        """The client is typing to the community."""
        peer = self._peer(chat)
        return await self._emit("message_typing_state", {"state": "typing", "from_id": peer, "to_id": -self.group_id})

    async def client_reads(self, chat: str | int, message_id: str | int | None = None) -> dict[str, Any]:
        """The client reads the dialog up to ``message_id`` (the community's newest message by default)."""
        peer = self._peer(chat)
        sent = [m for m in self.sent if m.peer_id == peer]
        message = self.message(peer, int(message_id)) if message_id is not None else sent[-1]
        read = {"from_id": peer, "peer_id": peer, "read_message_id": message.id}
        return await self._emit("message_read", {**read, "conversation_message_id": message.cmid})

    async def deliver_status(
        self, chat: str | int, message_id: str, status: Literal["delivered", "read"]
    ) -> dict[str, Any] | None:
        """VK reports reads (``message_read``); a delivery it confirms when the send succeeds, so nothing then."""
        return await self.client_reads(chat, message_id) if status == "read" else None

    async def client_allows(self, chat: str | int) -> dict[str, Any]:
        """The client presses "Allow messages" in the community."""
        peer = self._peer(chat)
        self.users[peer].allowed = True
        return await self._emit("message_allow", {"user_id": peer, "key": "amoconnect"})

    async def client_denies(self, chat: str | int) -> dict[str, Any]:
        """The client forbids the community's messages."""
        peer = self._peer(chat)
        self.users[peer].allowed = False
        return await self._emit("message_deny", {"user_id": peer})

    def client_blacklists(self, chat: str | int) -> None:
        """The client puts the community on their blacklist (VK sends no event): sends fail with 900."""
        self.users[self._peer(chat)].blacklisted = True

    # -- the wall -------------------------------------------------------------------------------

    def _post_key(self, post_id: str | int) -> str:
        text = str(post_id)
        key = text if "_" in text else f"-{self.group_id}_{text}"
        if parse_post_key(key)[0] != -self.group_id:
            raise ValueError(f"post {key} is not on the wall of community {self.group_id}")
        return key

    async def publish_post(
        self, text: str = "", *, picture: bytes | None = None, post_id: str | int | None = None
    ) -> str:
        """The community publishes a post (``wall_post_new``); returns its id, ``-{group}_{post}``."""
        attachments = []
        if picture is not None:
            stored = self.store_file(picture, "post.jpg", "image/jpeg")
            photo = photo_object(stored.id + 457000000, -self.group_id, self.file_url(stored), self.now())
            attachments.append({"type": "photo", "photo": photo})
        number = parse_post_key(self._post_key(post_id))[1] if post_id is not None else None
        post = self.new_post(text, attachments, number)
        body = {
            "id": post.id,
            "owner_id": post.owner_id,
            "from_id": post.owner_id,
            "created_by": 1,
            "date": post.date,
            "marked_as_ads": 0,
            "post_type": "post",
            "text": post.text,
            "can_edit": 1,
            "can_delete": 1,
            "comments": {"count": 0, "can_post": 1},
            "attachments": copy.deepcopy(post.attachments),
            "is_favorite": False,
        }
        await self._emit("wall_post_new", body)
        return post.key

    def _comment_object(self, comment: Comment) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": comment.id,
            "from_id": comment.from_id,
            "date": comment.date,
            "text": comment.text,
            "post_owner_id": comment.post.owner_id,
            "post_id": comment.post.id,
            "owner_id": comment.post.owner_id,
            "parents_stack": list(comment.parents_stack),
            "thread": {"count": 0, "items": [], "can_post": False, "show_reply_button": True, "groups_can_post": True},
        }
        if comment.reply_to_comment is not None:
            body["reply_to_comment"] = comment.reply_to_comment
            body["reply_to_user"] = comment.reply_to_user
        if comment.attachments:
            body["attachments"] = copy.deepcopy(comment.attachments)
        return body

    async def client_comments(
        self,
        chat: str | int,
        post_id: str | int,
        text: str,
        *,
        reply_to_comment: int | None = None,
        media: ClientMedia | None = None,
    ) -> dict[str, Any]:
        """The client comments on a post (published first, with a caption, if new), answering a comment if given."""
        peer = self._peer(chat)
        key = self._post_key(post_id)
        if key not in self.posts:
            await self.publish_post(f"Post {key}: our new collection", post_id=key)
        attachments = [self._media(peer, media)] if media is not None else []
        comment = self.new_comment(self.posts[key], peer, text, reply_to_comment, attachments=attachments)
        return await self._emit("wall_reply_new", self._comment_object(comment))

    def comment(self, comment_id: int) -> Comment:
        """A comment by id."""
        return self.comments[comment_id]

    async def client_edits_comment(self, comment_id: int, text: str) -> dict[str, Any]:
        """The client edits their comment."""
        comment = self.comments[comment_id]
        comment.text = text
        return await self._emit("wall_reply_edit", self._comment_object(comment))

    async def delete_comment(self, comment_id: int, *, by_community: bool = False) -> dict[str, Any]:
        """The comment's author (or, with ``by_community``, a community manager) deletes it."""
        comment = self.comments[comment_id]
        comment.deleted = True
        deleter = 1 if by_community else comment.from_id
        body = {"owner_id": comment.post.owner_id, "id": comment.id, "deleter_id": deleter, "post_id": comment.post.id}
        return await self._emit("wall_reply_delete", body)

    async def restore_comment(self, comment_id: int) -> dict[str, Any]:
        """A deleted comment comes back."""
        comment = self.comments[comment_id]
        comment.deleted = False
        return await self._emit("wall_reply_restore", self._comment_object(comment))
