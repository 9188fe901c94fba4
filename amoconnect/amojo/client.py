"""``AmojoClient``: the async client of the amoCRM Chats API (spec §4).

Every request is serialised once, signed over those bytes and sent as those bytes; every
retry builds the request again with a fresh ``Date`` and signature (amojo accepts one for
15 minutes); the body is hashed once for all of them. Retries, backoff, the per-host in-flight
cap and the way out (:class:`~amoconnect.http.DirectSender`) come from :mod:`amoconnect.http`.

amojo answers 403 to a ``Date`` more than 15 minutes off its clock. When a 403's own ``Date``
shows that our clock is off amojo's (a wall-clock step here), the client signs with amojo's time
from then on and sends the request once more, so a clock step costs a request, not the messages.

amojo refuses a second message with a msgid it already has. The client treats that refusal
as success (:attr:`Sent.duplicate` is then true), so a send that is retried after a crash or a
lost answer never shows twice in amoCRM; :meth:`AmojoClient.find_message` then recovers
amoCRM's id of it from the chat's history.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx
import msgspec
import structlog

from ..crashpoints import crash_point
from ..errors import AmojoError
from ..http import Answer, DirectSender, OnRetry, Outgoing, RetryPolicy, TransportKind, error_body, send_with_retries
from ..signing import sign_request
from . import wire

__all__ = ["CLOCK_TOLERANCE", "DEFAULT_BASE_URL", "AmojoClient", "Sent", "is_duplicate_msgid", "is_unknown_scope"]

DEFAULT_BASE_URL = "https://amojo.amocrm.ru"
HISTORY_PAGE_LIMIT = 50

T = TypeVar("T")
log = structlog.get_logger("amoconnect.amojo")
_RECONNECT = "connect the channel to the account again (amoconnect connect), then re-queue (amoconnect jobs retry)"
_ADVICE = {
    403: f" — check [channel] secret; if the account turned the channel off, {_RECONNECT}",
    404: f" — the channel is not connected to this account: {_RECONNECT}",
}


CLOCK_TOLERANCE = 60.0
"""Seconds our signing ``Date`` may differ from amojo's clock before a 403 is taken for our clock being off."""


def _date_of(value: str | None) -> float | None:
    """Unix seconds of an HTTP ``Date`` header; None if absent or not a date."""
    try:
        return parsedate_to_datetime(value).timestamp() if value else None
    except (TypeError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    """A parsed URL, kept: httpx checks a URL string character by character, ~20 % of a send's CPU."""
    return httpx.URL(url)


class Sent(msgspec.Struct, frozen=True):
    """Outcome of sending a message: amoCRM's id of it (unknown when amojo had it already)."""

    msgid: str
    """Our msgid."""
    amocrm_id: str | None
    """amoCRM's message id; ``None`` when :attr:`duplicate` (see :meth:`AmojoClient.find_message`)."""
    conversation_id: str | None = None
    """amoCRM's id of the chat, from its answer; ``None`` when :attr:`duplicate`."""
    duplicate: bool = False
    """amojo already had this msgid: an earlier attempt went through."""


def is_duplicate_msgid(status: int, body: Any) -> bool:
    """True when an amojo error answer says the msgid was used before.

    amojo's wording is undocumented: a 400 whose body carries ``code: duplicate_msgid``, or
    whose error text speaks of a msgid that already exists, counts.
    """
    if status != 400:
        return False
    if isinstance(body, dict):
        if body.get("code") == "duplicate_msgid":
            return True
        text = " ".join(str(body.get(k, "")) for k in ("error", "message", "detail"))
    else:
        text = str(body)
    text = text.lower()
    return "msgid" in text and ("already" in text or "duplicate" in text or "exists" in text)


def is_unknown_scope(status: int | None, body: Any) -> bool:
    """True when an amojo error answer says the scope is not (or no longer) connected.

    amojo's wording is undocumented: a 404 whose body speaks of the scope (``code: unknown_scope``) counts.
    """
    return status == 404 and "scope" in str(body).lower()


class AmojoClient:
    """Async client of one channel's Chats API.

    ``base_url`` is ``https://amojo.amocrm.ru`` (accounts on amocrm.ru), ``https://amojo.amocrm.com``,
    ``https://amojo.kommo.com`` or a local fake. Pass ``client`` to share or inject an
    ``httpx.AsyncClient`` (its base URL is ignored); otherwise one is built on ``transport``.
    ``on_retry(attempt, wait, status)`` is called before each repeat of a failed call;
    ``clock`` (unix seconds, the wall clock by default) is what requests are signed with.
    """

    def __init__(
        self,
        channel_id: str,
        secret: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        transport: TransportKind = "httpx",
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        max_in_flight_per_host: int = 32,
        on_retry: OnRetry | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.channel_id = channel_id
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._prefix = len(httpx.URL(self.base_url).raw_path.rstrip(b"/"))
        """Bytes of a path the base URL itself has (a proxy's prefix), which amojo never sees or signs."""
        self._client = DirectSender(
            client=client, transport=transport, timeout=timeout, max_in_flight_per_host=max_in_flight_per_host
        )
        self.retry = retry or RetryPolicy()
        self._on_retry = on_retry
        self._clock = clock
        self._skew = 0.0
        """amojo's clock minus ours, learned when amojo refused a Date too far from its own."""

    def __repr__(self) -> str:
        return f"AmojoClient(channel_id={self.channel_id!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        await self._client.aclose()

    async def __aenter__(self) -> AmojoClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        body: msgspec.Struct | None = None,
        *,
        params: dict[str, int] | None = None,
        describe: str,
    ) -> Answer:
        content = b"" if body is None else wire.encode(body)
        query = "" if params is None else "?" + urlencode(params)
        url = _url(self.base_url + path + query)
        # The signature covers the path exactly as it goes on the wire: httpx's encoding of it,
        # which both transports send unchanged (see amoconnect._aiohttp).
        signed_path = url.raw_path.partition(b"?")[0][self._prefix :].decode("ascii")
        content_md5 = hashlib.md5(content).hexdigest()

        def build() -> Outgoing:
            headers = sign_request(
                self._secret, method, signed_path, content, date=self._date(), content_md5=content_md5
            )
            return Outgoing(method, url, headers, content)

        response = await send_with_retries(
            self._client, build, policy=self.retry, error=AmojoError, describe=describe, on_retry=self._on_retry
        )
        if response.status_code == 403 and self._learn_skew(response):
            response = await send_with_retries(
                self._client, build, policy=self.retry, error=AmojoError, describe=describe, on_retry=self._on_retry
            )
        crash_point("amojo.answer")
        return response

    def _date(self) -> datetime | None:
        """The ``Date`` to sign with: now by our clock corrected by amojo's (None: the wall clock as is)."""
        if self._skew == 0.0 and self._clock is None:
            return None  # signing's own per-second cache of the current date
        return datetime.fromtimestamp(self._now() + self._skew, UTC)

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock()

    def _learn_skew(self, refused: Answer) -> bool:
        """Whether a 403 came because our clock is off amojo's by more than :data:`CLOCK_TOLERANCE`
        seconds (its ``Date`` against the one we signed); if so, sign with amojo's time from now on.

        amojo takes a signature for 15 minutes after its ``Date``: a step of our wall clock must
        cost one more request, not a dead letter per message.
        """
        theirs = _date_of(refused.headers.get("date"))
        ours = _date_of(refused.request.headers["Date"])
        if theirs is None or ours is None or abs(theirs - ours) <= CLOCK_TOLERANCE:
            return False
        self._skew = theirs - self._now()
        log.warning(
            "our clock is off amojo's: signing with amojo's time from now on (check the host's NTP)",
            amojo_ahead_by_s=round(self._skew),
        )
        return True

    @staticmethod
    def _error(response: Answer, describe: str) -> AmojoError:
        body = error_body(response)
        status = response.status_code
        advice = _ADVICE.get(status, "") if status != 404 or is_unknown_scope(status, body) else ""
        return AmojoError(f"amojo {describe} answered HTTP {status}: {body!r}{advice}", status=status, body=body)

    def _decode(self, response: Answer, type_: type[T], describe: str) -> T:
        try:
            return wire.decode(response.content, type_)
        except msgspec.DecodeError as exc:
            raise AmojoError(
                f"amojo {describe} answered with an unexpected body: {exc}",
                status=response.status_code,
                body=response.text,
            ) from exc

    def _scope(self, scope_id: str) -> str:
        return f"/v2/origin/custom/{quote(scope_id, safe='')}"

    def _channel(self) -> str:
        return f"/v2/origin/custom/{quote(self.channel_id, safe='')}"

    # -- connection ----------------------------------------------------------------------
    async def connect(
        self, account_id: str, *, title: str | None = None, time_window_disabled: bool | None = None
    ) -> wire.ConnectResponse:
        """Connect the channel to an account (amojo account id); the answer carries the ``scope_id``."""
        body = wire.ConnectRequest(
            account_id=account_id, title=title, hook_api_version="v2", is_time_window_disabled=time_window_disabled
        )
        response = await self._request("POST", f"{self._channel()}/connect", body, describe="connect")
        if response.status_code != 200:
            raise self._error(response, "connect")
        return self._decode(response, wire.ConnectResponse, "connect")

    async def disconnect(self, account_id: str) -> None:
        """Disconnect the channel from an account (``DELETE``, as amojo requires)."""
        body = wire.DisconnectRequest(account_id=account_id)
        path = f"{self._channel()}/disconnect"
        response = await self._request("DELETE", path, body, describe="disconnect")
        if response.status_code != 200:
            raise self._error(response, "disconnect")

    # -- chats and messages --------------------------------------------------------------
    async def create_chat(
        self, scope_id: str, conversation_id: str, user: wire.ChatUser, *, source_external_id: str | None = None
    ) -> wire.CreateChatResponse:
        """Create (or find: same ``conversation_id``, same chat) the chat of a client."""
        body = wire.CreateChatRequest(
            conversation_id=conversation_id,
            user=user,
            source=wire.Source(external_id=source_external_id) if source_external_id else None,
        )
        response = await self._request("POST", f"{self._scope(scope_id)}/chats", body, describe="create chat")
        if response.status_code != 200:
            raise self._error(response, "create chat")
        return self._decode(response, wire.CreateChatResponse, "create chat")

    async def send_message(
        self, scope_id: str, payload: wire.MessagePayload, *, event: wire.EventType = "new_message"
    ) -> Sent:
        """Send a ``new_message`` (or, with ``event="edit_message"``, an edit) and return amoCRM's id of it.

        A refusal because amojo already has ``payload.msgid`` is a success with ``duplicate=True``.
        """
        describe = event.replace("_", " ")
        response = await self._request(
            "POST", self._scope(scope_id), wire.MessageEvent(event_type=event, payload=payload), describe=describe
        )
        if response.status_code == 200:
            sent = self._decode(response, wire.SendMessageResponse, describe).new_message
            return Sent(msgid=payload.msgid, amocrm_id=sent.msgid, conversation_id=sent.conversation_id)
        error = self._error(response, describe)
        if event == "new_message" and is_duplicate_msgid(response.status_code, error.body):
            return Sent(msgid=payload.msgid, amocrm_id=None, duplicate=True)
        raise error

    async def send_comment(self, scope_id: str, payload: wire.MessagePayload) -> Sent:
        """Send a comment: a ``new_message`` whose ``message.post`` names the post (spec §7)."""
        if payload.message.post is None:
            raise ValueError("a comment needs message.post (the post it belongs to)")
        return await self.send_message(scope_id, payload)

    async def update_delivery_status(
        self,
        scope_id: str,
        amocrm_id: str,
        delivery_status: Literal[1, 2, -1],
        *,
        error_code: int | None = None,
        error: str | None = None,
    ) -> None:
        """Report delivered (1), read (2) or failed (-1, with ``error_code`` 901–905) for amoCRM's message id."""
        body = wire.DeliveryStatusRequest(
            msgid=amocrm_id, delivery_status=delivery_status, error_code=error_code, error=error
        )
        path = f"{self._scope(scope_id)}/{quote(amocrm_id, safe='')}/delivery_status"
        response = await self._request("POST", path, body, describe="delivery status")
        if response.status_code != 200:
            raise self._error(response, "delivery status")
        if response.content.strip():
            # amojo answers a status it took with an empty 200: anything else came from elsewhere.
            raise AmojoError(
                f"amojo delivery status answered with an unexpected body: {error_body(response)!r}",
                status=200,
                body=error_body(response),
            )

    async def get_history(
        self, scope_id: str, chat_id: str, *, offset: int = 0, limit: int = HISTORY_PAGE_LIMIT
    ) -> list[wire.HistoryMessage]:
        """One page of a chat's messages, newest first; empty when amoCRM knows no such chat (204).

        ``chat_id`` is amoCRM's id of the chat (``conversation.id`` of its webhooks, the ``id``
        *create chat* answers), never our conversation_id: amojo knows no chat by that.
        """
        if not 1 <= limit <= HISTORY_PAGE_LIMIT:
            raise ValueError(f"history limit must be 1..{HISTORY_PAGE_LIMIT}, got {limit}")
        path = f"{self._scope(scope_id)}/chats/{quote(chat_id, safe='')}/history"
        response = await self._request("GET", path, params={"offset": offset, "limit": limit}, describe="history")
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            raise self._error(response, "history")
        return self._decode(response, wire.HistoryResponse, "history").messages

    async def find_message(self, scope_id: str, chat_id: str, msgid: str, *, pages: int = 2) -> str | None:
        """amoCRM's id of our message ``msgid``, looked up in the newest ``pages`` pages of the chat's history.

        ``chat_id`` is amoCRM's id of the chat (see :meth:`get_history`). For a send refused as a
        duplicate, whose first attempt went through unrecorded moments ago: the message is among
        the newest. ``None`` when it is not there.
        """
        for page_number in range(pages):
            page = await self.get_history(scope_id, chat_id, offset=page_number * HISTORY_PAGE_LIMIT)
            found = next((entry.message.id for entry in page if entry.message.client_id == msgid), None)
            if found is not None or len(page) < HISTORY_PAGE_LIMIT:
                return found
        return None

    async def iter_history(
        self, scope_id: str, chat_id: str, *, page_size: int = HISTORY_PAGE_LIMIT
    ) -> AsyncIterator[wire.HistoryMessage]:
        """Every message of a chat (amoCRM's ``chat_id``, see :meth:`get_history`), newest first, page by page."""
        offset = 0
        while True:
            page = await self.get_history(scope_id, chat_id, offset=offset, limit=page_size)
            for message in page:
                yield message
            if len(page) < page_size:
                return
            offset += len(page)

    async def typing(
        self, scope_id: str, conversation_id: str, sender_id: str, *, duration_ms: int | None = None
    ) -> None:
        """Show the manager that the client is typing (default 5 s)."""
        body = wire.TypingRequest(
            conversation_id=conversation_id, sender=wire.UserRef(id=sender_id), duration_ms=duration_ms
        )
        response = await self._request("POST", f"{self._scope(scope_id)}/typing", body, describe="typing")
        if response.status_code not in (200, 204):
            raise self._error(response, "typing")

    async def react(
        self,
        scope_id: str,
        *,
        user_id: str,
        emoji: str | None,
        conversation_id: str | None = None,
        conversation_ref_id: str | None = None,
        msgid: str | None = None,
        amocrm_id: str | None = None,
        user_ref_id: str | None = None,
    ) -> None:
        """Set (``emoji``) or remove (``emoji=None``) a reaction on a message, named by our msgid or amoCRM's id."""
        body = wire.ReactRequest(
            user=wire.ReactUser(id=user_id, ref_id=user_ref_id),
            type="react" if emoji else "unreact",
            conversation_id=conversation_id,
            conversation_ref_id=conversation_ref_id,
            msgid=msgid,
            id=amocrm_id,
            emoji=emoji or None,
        )
        response = await self._request("POST", f"{self._scope(scope_id)}/react", body, describe="react")
        if response.status_code != 200:
            raise self._error(response, "react")
