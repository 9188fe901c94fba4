"""The API side of :class:`~amoconnect_vk.fake.FakeVK`: the methods a community token calls, with VK's rules.

Internal to the fake. :class:`VkWorld` keeps the community's world and answers each method from
typed parameters or raises :class:`~amoconnect_vk._fakeworld.ApiError` with VK's own code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from ._fakeworld import (
    GLOBAL_PARAMS,
    METHODS,
    ApiCall,
    ApiError,
    CallbackServer,
    Comment,
    DialogMessage,
    Fault,
    Post,
    StoredFile,
    User,
    check_keyboard,
    photo_object,
)
from .vkapi import MAX_MESSAGE_LENGTH, REACTIONS

__all__ = ["Executed", "VkWorld"]

_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8")
_DEDUP_WINDOW = 3600.0
"""VK recognises a ``random_id`` among the dialog's messages of the last hour (and at most 100)."""


def _convert(method: str, name: str, kind: str, value: str) -> Any:
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if value not in ("0", "1", "true", "false"):
                raise ValueError(value)
            return value in ("1", "true")
        if kind == "ints":
            return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ApiError(100, f"{name} not {'integer' if 'int' in kind else kind}") from None
    return value


class VkWorld:
    """One community's side of VK: users, dialogs, wall, files, callback servers, and the API over them."""

    def __init__(self, token: str, group_id: int, *, group_name: str, clock: Callable[[], float]) -> None:
        self.token = token
        self.group_id = group_id
        self.group_name = group_name
        self.clock = clock
        self.base_url = "http://api.vk.test"
        """Where the fake's files, upload servers and Long Poll are reached (the sandbox sets it)."""
        self.confirmation_code = hashlib.sha1(f"confirm-{group_id}".encode()).hexdigest()[:8]
        """The string a Callback API server must answer the ``confirmation`` request with."""
        self.users: dict[int, User] = {}
        self.dialogs: dict[int, list[DialogMessage]] = {}
        """Messages of each private dialog, by peer id, oldest first."""
        self.posts: dict[str, Post] = {}
        self.comments: dict[int, Comment] = {}
        self.files: dict[int, StoredFile] = {}
        self.photos: dict[str, dict[str, Any]] = {}
        self.docs: dict[str, dict[str, Any]] = {}
        self.servers: dict[int, CallbackServer] = {}
        """The community's Callback API servers."""
        self.longpoll_enabled = False
        self.longpoll_events: set[str] = set()
        self.calls: list[ApiCall] = []
        """Every call, in order (those inside ``execute`` too)."""
        self.sent: list[DialogMessage] = []
        """Every message the community sent, in order."""
        self.reactions: list[tuple[int, int, int | None]] = []
        """``(peer, cmid, reaction_id)`` the community set; ``None`` when it took its reaction back."""
        self.activities: list[tuple[int, str, float]] = []
        """``(peer, type, time)`` of every ``messages.setActivity``."""
        self.faults: list[Fault] = []
        self.max_rps: int | None = None
        """When set, more calls than this within one second are refused with error 6."""
        self._recent: list[float] = []
        self._uploads: dict[str, tuple[str, int | None]] = {}
        self._uploaded: dict[str, StoredFile] = {}
        self._message_ids = itertools.count(1001)
        self._object_ids = itertools.count(457239017)
        self._comment_ids = itertools.count(1)
        self._post_ids = itertools.count(1)
        self._server_ids = itertools.count(1)
        self._tickets = itertools.count(1)
        self._file_ids = itertools.count(1)

    # -- helpers --------------------------------------------------------------------------------

    def now(self) -> int:
        """The fake's clock, unix seconds."""
        return int(self.clock())

    def user(self, user_id: int, first_name: str | None = None, last_name: str = "") -> User:
        """The user ``user_id``, created (as "Client N") when new."""
        found = self.users.get(user_id)
        if found is None:
            found = self.users[user_id] = User(user_id, first_name or f"Client {user_id}", last_name)
            self.dialogs.setdefault(user_id, [])
        return found

    def store_file(self, content: bytes, name: str, mime: str) -> StoredFile:
        """Keep ``content``; it is served at :meth:`file_url`."""
        stored = StoredFile(next(self._file_ids), content, name, mime)
        self.files[stored.id] = stored
        return stored

    def file_url(self, stored: StoredFile) -> str:
        """Where a stored file is downloaded."""
        return f"{self.base_url}/files/{stored.id}/{stored.name}"

    def message(self, peer_id: int, cmid: int) -> DialogMessage:
        """A message of a dialog by ``conversation_message_id``; ``LookupError`` when absent."""
        for message in self.dialogs.get(peer_id, []):
            if message.cmid == cmid:
                return message
        raise LookupError(f"dialog {peer_id} has no message {cmid}")

    def add_message(self, peer_id: int, from_id: int, **content: Any) -> DialogMessage:
        """A new message in the dialog with ``peer_id``."""
        message = DialogMessage(
            peer_id=peer_id,
            cmid=next(self.user(peer_id).cmids),
            id=next(self._message_ids),
            from_id=from_id,
            date=self.now(),
            **content,
        )
        self.dialogs[peer_id].append(message)
        return message

    def new_post(self, text: str, attachments: list[dict[str, Any]] | None = None, post_id: int | None = None) -> Post:
        """A post on the community's wall."""
        post = Post(-self.group_id, post_id or next(self._post_ids), text, self.now(), attachments or [])
        self.posts[post.key] = post
        return post

    def new_comment(self, post: Post, from_id: int, text: str, reply_to: int | None = None, **more: Any) -> Comment:
        """A comment under ``post``, in the thread of comment ``reply_to`` if given."""
        stack: list[int] = []
        reply_to_user = None
        if reply_to is not None:
            parent = self.comments[reply_to]
            stack = [*parent.parents_stack, parent.id] if not parent.parents_stack else list(parent.parents_stack)
            reply_to_user = parent.from_id
        comment = Comment(
            next(self._comment_ids),
            post,
            from_id,
            text,
            self.now(),
            reply_to_comment=reply_to,
            reply_to_user=reply_to_user,
            parents_stack=stack,
            **more,
        )
        self.comments[comment.id] = comment
        return comment

    # -- dispatch -------------------------------------------------------------------------------

    def _take_fault(self, method: str) -> ApiError | None:
        for fault in self.faults:
            if fault.method in (None, method):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                error = ApiError(fault.code)
                if fault.message is not None:
                    error.message = fault.message
                return error
        return None

    def _throttle(self) -> None:
        if self.max_rps is None:
            return
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < 1.0]
        if len(self._recent) >= self.max_rps:
            raise ApiError(6)
        self._recent.append(now)

    def dispatch(self, method: str, raw: dict[str, str], *, via_execute: bool = False) -> Any:
        """Answer one call of ``method`` with string parameters ``raw``; record it."""
        params = {key: value for key, value in raw.items() if key != "access_token"}
        try:
            result = self._dispatch(method, raw, via_execute)
        except ApiError as exc:
            self.calls.append(ApiCall(method, params, exc.code, via_execute))
            raise
        self.calls.append(ApiCall(method, params, 0, via_execute, result))
        return result

    def _dispatch(self, method: str, raw: dict[str, str], via_execute: bool) -> Any:
        if not via_execute:
            self._throttle()
        fault = self._take_fault(method)
        if fault is not None:
            raise fault
        spec = METHODS.get(method)
        if spec is None:
            raise ApiError(3)
        if not via_execute and not raw.get("v"):
            raise ApiError(8)
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if key in GLOBAL_PARAMS:
                continue
            kind = spec.get(key)
            if kind is None:
                raise ApiError(100, f"unknown parameter {key}")
            params[key] = _convert(method, key, kind.rstrip("!"), value)
        missing = [key for key, kind in spec.items() if kind.endswith("!") and key not in params]
        if missing:
            raise ApiError(100, f"{missing[0]} is a required parameter")
        handler: Callable[[dict[str, Any]], Any] = getattr(self, "_m_" + method.replace(".", "_"))
        return handler(params)

    def _group(self, params: dict[str, Any], key: str = "group_id") -> None:
        if params.get(key, self.group_id) != self.group_id:
            raise ApiError(15, f"no access to group {params.get(key)}")

    # -- groups ---------------------------------------------------------------------------------

    def _m_groups_getById(self, params: dict[str, Any]) -> Any:
        group = {"id": self.group_id, "name": self.group_name, "screen_name": f"club{self.group_id}"}
        return {"groups": [{**group, "is_closed": 0, "type": "group"}], "profiles": []}

    def _m_groups_getCallbackServers(self, params: dict[str, Any]) -> Any:
        self._group(params)
        items = [
            {
                "id": s.id,
                "title": s.title,
                "creator_id": 1,
                "url": s.url,
                "secret_key": s.secret_key,
                "status": s.status,
            }
            for s in self.servers.values()
        ]
        return {"count": len(items), "items": items}

    def _m_groups_addCallbackServer(self, params: dict[str, Any]) -> Any:
        self._group(params)
        if len(self.servers) >= 10:
            raise ApiError(100, "a community has at most 10 Callback API servers")
        server = CallbackServer(next(self._server_ids), params["url"], params["title"], params.get("secret_key", ""))
        self.servers[server.id] = server
        return {"server_id": server.id}

    def _server(self, params: dict[str, Any]) -> CallbackServer:
        self._group(params)
        server = self.servers.get(params["server_id"])
        if server is None:
            raise ApiError(100, "server_id is invalid")
        return server

    def _m_groups_editCallbackServer(self, params: dict[str, Any]) -> Any:
        server = self._server(params)
        if server.url != params["url"]:
            server.status = "unconfigured"
        server.url, server.title = params["url"], params["title"]
        server.secret_key = params.get("secret_key", server.secret_key)
        return 1

    def _flags(self, params: dict[str, Any]) -> tuple[set[str], set[str]]:
        on = {key for key, value in params.items() if value is True and key not in ("enabled",)}
        off = {key for key, value in params.items() if value is False and key not in ("enabled",)}
        return on, off

    def _m_groups_setCallbackSettings(self, params: dict[str, Any]) -> Any:
        server = self._server(params)
        on, off = self._flags(params)
        server.events = (server.events | on) - off
        server.api_version = params.get("api_version", server.api_version)
        return 1

    def _m_groups_getCallbackConfirmationCode(self, params: dict[str, Any]) -> Any:
        self._group(params)
        return {"code": self.confirmation_code}

    def _m_groups_setLongPollSettings(self, params: dict[str, Any]) -> Any:
        self._group(params)
        if "enabled" in params:
            self.longpoll_enabled = params["enabled"]
        on, off = self._flags(params)
        self.longpoll_events = (self.longpoll_events | on) - off
        return 1

    def _m_groups_getLongPollServer(self, params: dict[str, Any]) -> Any:
        self._group(params)
        if not self.longpoll_enabled:
            raise ApiError(100, "Bots Long Poll is disabled in the community's settings")
        return self.longpoll_server()

    def longpoll_server(self) -> dict[str, Any]:
        """``groups.getLongPollServer``'s answer (overridden by the fake, which owns Long Poll)."""
        raise NotImplementedError

    # -- users ----------------------------------------------------------------------------------

    def _m_users_get(self, params: dict[str, Any]) -> Any:
        fields = set(str(params.get("fields", "")).split(","))
        found = []
        for part in str(params.get("user_ids", "")).split(","):
            if part.strip().isdigit() and int(part) in self.users:
                found.append(self.users[int(part)].object(fields))
        return found

    # -- messages -------------------------------------------------------------------------------

    def _attachments(self, value: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for name in (part.strip() for part in value.split(",") if part.strip()):
            key = "_".join(name.split("_")[:2])
            if key in self.photos:
                found.append({"type": "photo", "photo": self.photos[key]})
            elif key in self.docs:
                doc = self.docs[key]
                kind = "audio_message" if "link_ogg" in doc else "doc"
                found.append({"type": kind, kind: doc})
            else:
                raise ApiError(100, f"attachment {name} not found")
        if len(found) > 10:
            raise ApiError(100, "at most 10 attachments")
        return found

    def _reply(self, peer: int, params: dict[str, Any]) -> int | None:
        if "forward" in params:
            try:
                forward = json.loads(params["forward"])
                cmids = forward["conversation_message_ids"]
                valid = forward.get("is_reply") is True and forward["peer_id"] == peer and len(cmids) == 1
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                raise ApiError(100, "forward is invalid")
            try:
                return self.message(peer, int(cmids[0])).cmid
            except LookupError:
                raise ApiError(100, "forward: message not found") from None
        if "reply_to" in params:
            for message in self.dialogs.get(peer, []):
                if message.id == params["reply_to"]:
                    return message.cmid
            raise ApiError(100, "reply_to: message not found")
        return None

    def _refusal(self, peer: int) -> int | None:
        user = self.users.get(peer)
        if user is None:
            return 936
        if user.blacklisted:
            return 900
        if user.closed_privacy:
            return 902
        if not user.allowed:
            return 901
        return None

    def _m_messages_send(self, params: dict[str, Any]) -> Any:
        peers = params.get("peer_ids") or [params.get("peer_id") or params.get("user_id")]
        if peers == [None]:
            raise ApiError(100, "peer_id is undefined")
        if "random_id" not in params:
            raise ApiError(100, "random_id is a required parameter")
        text = params.get("message", "")
        attachments = self._attachments(params.get("attachment", ""))
        if not text.strip() and not attachments and "forward" not in params:
            raise ApiError(100, "message is empty")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise ApiError(914)
        keyboard = check_keyboard(params["keyboard"]) if "keyboard" in params else None
        items: list[dict[str, Any]] = []
        for peer in peers:
            refused = self._refusal(peer)
            if refused is not None:
                if "peer_ids" not in params:
                    raise ApiError(refused)
                error = {"code": refused, "description": ApiError(refused).message}
                items.append({"peer_id": peer, "message_id": 0, "error": error})
                continue
            message = self._send_one(peer, params, text, attachments, keyboard)
            items.append({"peer_id": peer, "message_id": message.id, "conversation_message_id": message.cmid})
        return items if "peer_ids" in params else items[0]["message_id"]

    def _send_one(
        self, peer: int, params: dict[str, Any], text: str, attachments: list[dict[str, Any]], keyboard: Any
    ) -> DialogMessage:
        now = self.now()
        recent = [m for m in self.dialogs[peer] if m.out and now - m.date < _DEDUP_WINDOW][-100:]
        for message in recent:
            if message.random_id == params["random_id"] and params["random_id"] != 0:
                return message  # VK recognises the retry and sends nothing new
        reply_to = self._reply(peer, params)
        message = self.add_message(
            peer,
            -self.group_id,
            text=text,
            attachments=attachments,
            keyboard=keyboard,
            reply_to=reply_to,
            random_id=params["random_id"],
        )
        self.sent.append(message)
        return message

    def _dialog_message(self, params: dict[str, Any]) -> DialogMessage:
        try:
            return self.message(params["peer_id"], params["cmid"])
        except LookupError:
            raise ApiError(100, "cmid: message not found") from None

    def _m_messages_sendReaction(self, params: dict[str, Any]) -> Any:
        message = self._dialog_message(params)
        if params["reaction_id"] not in REACTIONS:
            raise ApiError(100, "reaction_id is invalid")
        self.reactions.append((message.peer_id, message.cmid, params["reaction_id"]))
        return 1

    def _m_messages_deleteReaction(self, params: dict[str, Any]) -> Any:
        message = self._dialog_message(params)
        self.reactions.append((message.peer_id, message.cmid, None))
        return 1

    def _m_messages_setActivity(self, params: dict[str, Any]) -> Any:
        peer = params.get("peer_id") or params.get("user_id")
        if peer is None:
            raise ApiError(100, "peer_id is undefined")
        if params.get("type") not in ("typing", "audiomessage"):
            raise ApiError(100, "type is invalid")
        self._group(params)
        self.activities.append((peer, params["type"], self.clock()))
        return 1

    # -- uploads --------------------------------------------------------------------------------

    def _upload_server(self, kind: str, peer: int | None) -> str:
        ticket = hashlib.sha1(f"ticket-{next(self._tickets)}".encode()).hexdigest()[:16]
        self._uploads[ticket] = (kind, peer)
        return f"{self.base_url}/upload/{kind}/{ticket}"

    def _m_photos_getMessagesUploadServer(self, params: dict[str, Any]) -> Any:
        url = self._upload_server("photo", params.get("peer_id"))
        return {"upload_url": url, "album_id": -3, "user_id": 0, "group_id": self.group_id}

    def _m_docs_getMessagesUploadServer(self, params: dict[str, Any]) -> Any:
        kind = params.get("type", "doc")
        if kind not in ("doc", "audio_message", "graffiti"):
            raise ApiError(100, "type is invalid")
        return {"upload_url": self._upload_server(kind, params.get("peer_id"))}

    def take_upload(self, kind: str, ticket: str, name: str, content: bytes, mime: str) -> dict[str, Any]:
        """An upload server's answer to a file POSTed to it."""
        known = self._uploads.pop(ticket, None)
        if known is None or (known[0] == "photo") != (kind == "photo"):
            return {"error": "invalid upload ticket"}
        stored = self.store_file(content, name, mime)
        token = hashlib.sha1(content + ticket.encode()).hexdigest()
        self._uploaded[token] = stored
        if kind == "photo":
            photo = "[]" if not content.startswith(_IMAGE_MAGIC) else json.dumps([{"photo": token[:20], "sizes": []}])
            return {"server": 1, "photo": photo, "hash": token}
        return {"file": f"{known[0]}|{token}"}

    def _m_photos_saveMessagesPhoto(self, params: dict[str, Any]) -> Any:
        stored = self._uploaded.pop(params.get("hash", ""), None)
        if stored is None or params["photo"] in ("", "[]"):
            raise ApiError(100, "photo is undefined")
        photo_id = next(self._object_ids)
        key = f"photo{-self.group_id}_{photo_id}"
        self.photos[key] = photo_object(photo_id, -self.group_id, self.file_url(stored), self.now(), "a1b2c3")
        return [self.photos[key]]

    def _m_docs_save(self, params: dict[str, Any]) -> Any:
        kind, _, token = str(params["file"]).partition("|")
        stored = self._uploaded.pop(token, None)
        if stored is None:
            raise ApiError(100, "file is undefined")
        doc_id = next(self._object_ids)
        url = self.file_url(stored)
        owner = -self.group_id
        if kind == "audio_message":
            doc: dict[str, Any] = {
                "duration": 3,
                "id": doc_id,
                "link_mp3": url,
                "link_ogg": url,
                "owner_id": owner,
                "access_key": "d4e5f6",
                "waveform": [0, 5, 9, 5, 0],
            }
        else:
            title = params.get("title") or stored.name
            ext = title.rsplit(".", 1)[-1] if "." in title else ""
            doc = {
                "id": doc_id,
                "owner_id": owner,
                "title": title,
                "size": len(stored.content),
                "ext": ext,
                "date": self.now(),
                "type": 8,
                "url": url,
                "access_key": "d4e5f6",
            }
        self.docs[f"doc{owner}_{doc_id}"] = doc
        return {"type": kind, kind: doc}

    # -- wall -----------------------------------------------------------------------------------

    def _m_wall_createComment(self, params: dict[str, Any]) -> Any:
        key = f"{params.get('owner_id', 0)}_{params['post_id']}"
        post = self.posts.get(key)
        if post is None:
            raise ApiError(100, "post_id is invalid")
        if params.get("from_group", self.group_id) != self.group_id:
            raise ApiError(15, "from_group is not this community")
        text = params.get("message", "")
        if not text.strip() and not params.get("attachments"):
            raise ApiError(100, "message is empty")
        guid = params.get("guid")
        for comment in self.comments.values():
            if guid and comment.guid == guid and comment.post is post:
                return {"comment_id": comment.id, "parents_stack": comment.parents_stack}
        reply_to = params.get("reply_to_comment")
        if reply_to is not None and (reply_to not in self.comments or self.comments[reply_to].post is not post):
            raise ApiError(100, "reply_to_comment is invalid")
        comment = self.new_comment(post, -self.group_id, text, reply_to, guid=guid)
        return {"comment_id": comment.id, "parents_stack": comment.parents_stack}

    def _m_wall_getById(self, params: dict[str, Any]) -> Any:
        raise ApiError(27)

    def _m_wall_getComments(self, params: dict[str, Any]) -> Any:
        raise ApiError(27)

    # -- execute --------------------------------------------------------------------------------

    def _m_execute(self, params: dict[str, Any]) -> Any:
        calls, listed = _compile(params["code"])
        if len(calls) > 25:
            raise ApiError(13, "too many API calls")
        results: list[Any] = []
        errors: list[dict[str, Any]] = []
        for method, arguments in calls:
            raw = {key: _plain(value) for key, value in arguments.items()}
            try:
                results.append(self.dispatch(method, raw, via_execute=True))
            except ApiError as exc:
                results.append(False)
                errors.append({"method": method, "error_code": exc.code, "error_msg": exc.message})
        return Executed(results if listed else results[0], errors)


class Executed:
    """``execute``'s answer: its ``response`` and, for calls that failed, ``execute_errors``."""

    def __init__(self, response: Any, errors: list[dict[str, Any]]) -> None:
        self.response = response
        self.errors = errors


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _compile(code: str) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """The calls of the VKScript the fake understands, and whether they are a list.

    Only ``return [API.a.b({...}), ...];`` and ``return API.a.b({...});`` compile (error 12 otherwise).
    """
    text = code.strip()
    if not text.startswith("return") or not text.endswith(";"):
        raise ApiError(12)
    body = text[len("return") : -1].strip()
    listed = body.startswith("[") and body.endswith("]")
    if listed:
        body = body[1:-1].strip()
    decoder = json.JSONDecoder()
    calls: list[tuple[str, dict[str, Any]]] = []
    at = 0
    while at < len(body):
        if not body.startswith("API.", at):
            raise ApiError(12)
        open_at = body.find("(", at)
        if open_at < 0:
            raise ApiError(12)
        method = body[at + 4 : open_at]
        try:
            arguments, end = decoder.raw_decode(body, open_at + 1)
        except ValueError:
            raise ApiError(12) from None
        if not isinstance(arguments, dict) or not body.startswith(")", end):
            raise ApiError(12)
        calls.append((method, arguments))
        at = end + 1
        while at < len(body) and body[at] in ", \n":
            at += 1
    if not calls or (not listed and len(calls) != 1):
        raise ApiError(12)
    return calls, listed
