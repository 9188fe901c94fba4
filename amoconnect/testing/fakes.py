"""Building blocks of a faithful fake messenger, and what the conformance suite asks of one.

A plugin ships a fake of its messenger's API (for its tests, the sandbox and the conformance
suite). A fake is worth having only when it refuses what the real API refuses, answers in the
real envelope, throttles and fails on demand, and delivers signed webhooks with retries. The
parts here carry the repetitive half of that:

- :class:`FakeAPI`: a Starlette app of JSON methods with typed, strictly decoded parameters, one
  place for the API's envelope (:meth:`FakeAPI.ok`, :meth:`FakeAPI.error`), token checks, a
  record of every call and fault injection (:meth:`FakeAPI.fail_next`);
- :class:`WebhookSender`: signed webhook delivery, one at a time, in order, retried with a
  doubling backoff, optionally twice (as messengers sometimes do);
- the driver protocol of :mod:`amoconnect.testing.conformance`: :class:`ConformanceMessenger`,
  the records it returns (:class:`ReceivedMessage`, :class:`ReceivedReaction`) and
  :data:`DRIVER_METHODS`, which of its methods each capability needs.

Nothing here imports pytest or the runtime, so a plugin's fake may live in its package and
serve as its ``sandbox_factory``. :mod:`amoconnect.testing.fakechat_api` is a complete example.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import httpx
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..capabilities import Capability
from ..model import Button, ListMessage, MediaKind
from ..signing import same_secret

__all__ = [
    "DRIVER_METHODS",
    "ApiCall",
    "ApiError",
    "ClientMedia",
    "ConformanceMessenger",
    "Delivery",
    "FakeAPI",
    "Fault",
    "MemoryState",
    "ReceivedMessage",
    "ReceivedReaction",
    "WebhookSender",
]

_P = TypeVar("_P")


# -- what a client sends and sees ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClientMedia:
    """A file a client sends (``client_writes(chat, media=ClientMedia(...))``)."""

    kind: MediaKind
    """What the file is."""
    content: bytes
    """The bytes."""
    file_name: str = ""
    """The name the client's app shows."""
    mime_type: str = ""
    """MIME type; guessed from ``file_name`` when empty."""


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    """A message the client got from the connector, as a fake describes it to the conformance suite."""

    message_id: str
    """The messenger's id of the message (what a status or a quote names)."""
    text: str = ""
    """Text, or the caption of media."""
    kind: str = "text"
    """``text``, ``list``, ``template`` or a media kind (``picture``, ``file``, ...)."""
    media_url: str | None = None
    """Where the media was taken from, when the messenger keeps a URL."""
    file_name: str = ""
    """File name of media, when the messenger keeps one."""
    buttons: tuple[tuple[Button, ...], ...] = ()
    """Inline buttons, row by row."""
    list_message: ListMessage | None = None
    """The list menu, for ``kind == "list"``."""
    template: str | None = None
    """The messenger's name of the template, for ``kind == "template"``."""
    template_params: tuple[str, ...] = ()
    """The template's values, in order."""
    reply_to: str | None = None
    """The messenger's id of the message this one quotes."""


@dataclass(frozen=True)
class ReceivedReaction:
    """A reaction the connector set on a message of the chat; ``emoji`` is empty when it took one back."""

    message_id: str
    emoji: str


@runtime_checkable
class ConformanceMessenger(Protocol):
    """A fake messenger as :class:`~amoconnect.testing.conformance.MessengerConformance` drives it.

    It extends :class:`~amoconnect.sandbox.SandboxMessenger` (the first four members). The client
    methods deliver what a client did to the connector and return once the webhook was answered
    (or, for a polling adapter, once the update is queued); the first ``client_writes`` in a chat
    creates the client. The ``received*`` methods say what the connector did in the messenger.
    Only the methods :data:`DRIVER_METHODS` lists for the adapter's declared capabilities are
    needed; a fake whose own methods are spelled differently is wrapped in a small driver class.
    """

    app: Any
    """The fake API, an ASGI app."""

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of one adapter instance talking to this fake served at ``api_url``; the
        adapter's ``startup`` registers the webhook at ``context.public_url``."""
        ...

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """A client writes ``text`` in ``chat``."""
        ...

    def sandbox_received(self, chat: str) -> list[str]:
        """The texts the connector sent to ``chat``, oldest first."""
        ...

    async def client_writes(
        self, chat: str, text: str = "", *, media: ClientMedia | None = None, reply_to: str | None = None
    ) -> object:
        """The client of ``chat`` sends text, media with a caption, or a quote of message ``reply_to``."""
        ...

    def received(self, chat: str) -> Sequence[ReceivedMessage]:
        """What the connector sent to ``chat``, oldest first."""
        ...

    async def client_edits(self, chat: str, message_id: str, text: str) -> object:
        """The client edits its message ``message_id`` to ``text`` (capability ``edits``)."""
        ...

    async def client_presses(self, chat: str, callback_data: str) -> object:
        """The client presses the newest button or list row with ``callback_data`` (``buttons``, ``list_messages``)."""
        ...

    async def client_reacts(self, chat: str, message_id: str, emoji: str, removed: bool = False) -> object:
        """The client sets, or with ``removed`` takes back, a reaction on a message (``reactions``)."""
        ...

    def received_reactions(self, chat: str) -> Sequence[ReceivedReaction]:
        """The reactions the connector set or took back in ``chat``, in order (``reactions``)."""
        ...

    async def client_types(self, chat: str) -> object:
        """The client starts typing (``typing``; optional, for messengers that report it)."""
        ...

    def received_typing(self, chat: str) -> int:
        """How many times the connector showed typing in ``chat`` (``typing``)."""
        ...

    async def client_comments(self, chat: str, post_id: str, text: str) -> object:
        """The client of ``chat`` comments on post ``post_id``, published if new (``comments``)."""
        ...

    def received_comment_replies(self, post_id: str) -> Sequence[str]:
        """The texts the connector answered in public under post ``post_id`` (``comments``)."""
        ...

    async def deliver_status(self, chat: str, message_id: str, status: Literal["delivered", "read"]) -> object:
        """The messenger reports a message it got from the connector delivered or read (receipts)."""
        ...

    def register_phone(self, phone: str) -> str:
        """A person with ``phone`` joins; returns the chat id that writing to the phone opens (``write_first``)."""
        ...

    async def business_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> object:
        """The business answers the client of ``chat`` in the messenger's own app, quoting ``reply_to`` (``echoes``)."""
        ...


DRIVER_METHODS: Final[Mapping[Capability | None, tuple[str, ...]]] = MappingProxyType(
    {
        None: ("app", "sandbox_settings", "sandbox_client_writes", "sandbox_received", "client_writes", "received"),
        Capability.edits: ("client_edits",),
        Capability.buttons: ("client_presses",),
        Capability.list_messages: ("client_presses",),
        Capability.reactions: ("client_reacts", "received_reactions"),
        Capability.typing: ("received_typing",),
        Capability.comments: ("client_comments", "received_comment_replies"),
        Capability.delivery_receipts: ("deliver_status",),
        Capability.read_receipts: ("deliver_status",),
        Capability.write_first: ("register_phone",),
        Capability.echoes: ("business_writes",),
    }
)
"""The :class:`ConformanceMessenger` members a fake needs: ``None`` lists those every fake needs,
a capability those the suite uses once an adapter declares it. ``client_types`` is optional: a
messenger that declares ``typing`` shows the manager typing, but not every one reports the client's."""


# -- the API side -------------------------------------------------------------------------------


class ApiError(Exception):
    """Raise it in a method of a :class:`FakeAPI` to answer with the API's error envelope."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        """HTTP status."""
        self.message = message
        """The API's own description of the error."""
        self.retry_after = retry_after
        """Seconds to wait, for a 429."""


@dataclass(kw_only=True)
class Fault:
    """A failure :meth:`FakeAPI.fail_next` injected: the next ``remaining`` calls of ``endpoint`` (or any)."""

    remaining: int
    status: int
    message: str
    retry_after: float | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class ApiCall:
    """One call of the fake API: the endpoint's name, its JSON parameters and the HTTP status answered."""

    endpoint: str
    params: dict[str, Any]
    status: int


_DEFAULT_MESSAGES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
}


class FakeAPI:
    """Base of a fake messenger API: subclass it, list its routes, override the envelope to match the real one.

    ``routes()`` returns Starlette routes, usually built with :meth:`method` from a handler and
    its parameters' ``msgspec.Struct`` (decoded strictly: declare it with
    ``forbid_unknown_fields=True`` so a typo in an adapter is a 400, as it would be for real).
    A handler returns the result (plain data) or raises :class:`ApiError`. ``token`` is the
    credential :meth:`authorized` checks; ``clock`` gives unix seconds.
    """

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self.clock = clock
        self.calls: list[ApiCall] = []
        """Every call of a :meth:`method` route, in order."""
        self.faults: list[Fault] = []
        """Injected failures not used up yet."""
        self._ids = itertools.count(1)
        self.app = Starlette(routes=self.routes(), exception_handlers={HTTPException: self._http_error})
        """The ASGI app serving the API."""

    # -- to override ----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The API's routes (none by default)."""
        return []

    def ok(self, result: Any) -> Response:
        """The envelope of a successful answer: ``{"result": ...}`` unless overridden."""
        return JSONResponse({"result": result})

    def error(self, error: ApiError) -> Response:
        """The envelope of an error: ``{"error": {"code", "message", "retry_after"?}}`` with its status."""
        body: dict[str, Any] = {"code": error.status, "message": error.message}
        if error.retry_after is not None:
            body["retry_after"] = error.retry_after
        headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
        return JSONResponse({"error": body}, error.status, headers=headers)

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the token: ``Authorization: Bearer <token>`` unless overridden."""
        return same_secret(request.headers.get("authorization", ""), f"Bearer {self.token}")

    # -- helpers --------------------------------------------------------------------------------

    def next_id(self, prefix: str = "") -> str:
        """A fresh id, unique within this fake: ``prefix`` and a number."""
        return f"{prefix}{next(self._ids)}"

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        endpoint: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``n`` calls (of ``endpoint`` only, when given) with an error of ``status``."""
        text = message or _DEFAULT_MESSAGES.get(status, "injected failure")
        self.faults.append(Fault(remaining=n, status=status, message=text, retry_after=retry_after, endpoint=endpoint))

    def take_fault(self, endpoint: str) -> ApiError | None:
        """The injected failure the next call of ``endpoint`` gets, if any (counting it used)."""
        for fault in self.faults:
            if fault.endpoint in (None, endpoint):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return ApiError(fault.status, fault.message, retry_after=fault.retry_after)
        return None

    def guard(self, request: Request, endpoint: str) -> ApiError | None:
        """What stops a call before its handler: an injected fault, then a missing or wrong token."""
        fault = self.take_fault(endpoint)
        if fault is not None:
            return fault
        if not self.authorized(request):
            return ApiError(401, _DEFAULT_MESSAGES[401])
        return None

    def method(
        self,
        path: str,
        handler: Callable[[_P], Any],
        params: type[_P],
        *,
        name: str | None = None,
        methods: Sequence[str] = ("POST",),
    ) -> Route:
        """A route calling ``handler`` (sync or async) with the JSON body decoded as ``params``.

        The call is recorded in :attr:`calls` under ``name`` (the path by default); faults and
        the token are checked first (:meth:`guard`).
        """
        endpoint_name = name or path

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            response = await self._call(request, endpoint_name, body, handler, params)
            try:
                raw = msgspec.json.decode(body) if body.strip() else {}
            except msgspec.DecodeError:
                raw = {}
            self.calls.append(ApiCall(endpoint_name, raw if isinstance(raw, dict) else {}, response.status_code))
            return response

        return Route(path, endpoint, methods=list(methods), name=endpoint_name)

    async def _call(
        self, request: Request, name: str, body: bytes, handler: Callable[[_P], Any], params: type[_P]
    ) -> Response:
        refused = self.guard(request, name)
        if refused is not None:
            return self.error(refused)
        try:
            decoded = msgspec.json.decode(body if body.strip() else b"{}", type=params)
        except msgspec.ValidationError as exc:
            return self.error(ApiError(400, f"bad request: {exc}"))
        except msgspec.DecodeError:
            return self.error(ApiError(400, "bad request: the body is not JSON"))
        try:
            result = handler(decoded)
            if inspect.isawaitable(result):
                result = await result
        except ApiError as exc:
            return self.error(exc)
        return self.ok(result)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.error(ApiError(exc.status_code, _DEFAULT_MESSAGES.get(exc.status_code, str(exc.detail))))


# -- webhooks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver a webhook; ``status`` is ``None`` when no answer came."""

    attempt: int
    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None


@dataclass
class WebhookSender:
    """Delivers a fake's webhooks to the connector: signed, one at a time, in order, with retries.

    ``http`` posts them (a fresh client per delivery when ``None``); ``sign`` gives the headers
    that sign a body (``{"X-Signature": ...}``); a delivery is tried ``attempts`` times, waiting
    ``backoff`` seconds after the first failure and twice as long after each next one. ``url``
    is ``None`` until the adapter registers its webhook.
    """

    http: httpx.AsyncClient | None = None
    url: str | None = None
    sign: Callable[[bytes], Mapping[str, str]] | None = None
    attempts: int = 3
    backoff: float = 0.05
    deliveries: list[Delivery] = field(default_factory=list)
    """Every attempt, in order."""
    _duplicate: bool = field(default=False, repr=False)
    _lock: anyio.Lock = field(default_factory=anyio.Lock, repr=False)

    def duplicate_next(self) -> None:
        """Deliver the next webhook twice (same body), as messengers sometimes do."""
        self._duplicate = True

    async def send(self, payload: Any) -> int | None:
        """Deliver ``payload`` (bytes as they are, anything else as JSON); the last answer's status.

        Raises :class:`RuntimeError` when no webhook is registered.
        """
        async with self._lock:
            if self.url is None:
                raise RuntimeError("the fake has no webhook: the adapter registers one at startup")
            body = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
            headers = {"Content-Type": "application/json", **(self.sign(body) if self.sign else {})}
            times, self._duplicate = (2 if self._duplicate else 1), False
            status: int | None = None
            for _ in range(times):
                status = await self._post(self.url, body, headers)
            return status

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int | None:
        delay = self.backoff
        status: int | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                status = await _post(self.http, url, body, headers)
            except httpx.TransportError:
                status = None
            self.deliveries.append(Delivery(attempt, url, body, dict(headers), status))
            if status is not None and 200 <= status < 300:
                break
            if attempt < self.attempts:
                await anyio.sleep(delay)
                delay *= 2
        return status


async def _post(http: httpx.AsyncClient | None, url: str, body: bytes, headers: dict[str, str]) -> int:
    if http is None:
        async with httpx.AsyncClient() as client:
            return (await client.post(url, content=body, headers=headers, timeout=10.0)).status_code
    return (await http.post(url, content=body, headers=headers, timeout=10.0)).status_code


class MemoryState:
    """An adapter's :class:`~amoconnect.adapter.StateStore` in memory, for adapter tests without a runtime."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        return self.data.get(key)

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        self.data[key] = value

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        self.data.pop(key, None)
