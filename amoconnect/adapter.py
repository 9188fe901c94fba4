"""The messenger adapter: the one class a messenger plugin writes.

An adapter translates its messenger ↔ the neutral model (:mod:`amoconnect.model`) and declares
what the messenger can do as class attributes. The runtime builds one adapter per configured
instance (one bot, one phone number, one community) and calls:

- :meth:`~MessengerAdapter.verify_headers` before reading the body, then :meth:`~MessengerAdapter.verify`
  and :meth:`~MessengerAdapter.parse` for each webhook request on one of its
  :attr:`~MessengerAdapter.routes` under ``/hooks/{messenger}/{instance}``;
- :meth:`~MessengerAdapter.send_message` and, only for declared capabilities, the other sends;
- :meth:`~MessengerAdapter.startup`, :meth:`~MessengerAdapter.run` and
  :meth:`~MessengerAdapter.shutdown` around the instance's life.

:func:`validate_adapter` checks the declarations against the code when the plugin loads.
"""

from __future__ import annotations

import abc
import inspect
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import httpx
import msgspec
from structlog.typing import FilteringBoundLogger

from .buttondata import ButtonData
from .capabilities import CAPABILITY_METHODS, Capability, RateLimit, ReactionSet
from .errors import PluginError
from .model import (
    FailureReason,
    HistoryEntry,
    InboundEvent,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    SendResult,
)
from .ratelimit import Limiter, LimiterFactory, LocalLimiters, RateLimiter
from .urlguard import UrlGuard

__all__ = [
    "AdapterContext",
    "FetchedMedia",
    "Intake",
    "MessengerAdapter",
    "Route",
    "StateStore",
    "WebhookRequest",
    "WebhookResponse",
    "validate_adapter",
]


@dataclass(frozen=True, kw_only=True)
class WebhookRequest:
    """A messenger's HTTP request to one of the adapter's routes, read in full."""

    method: str
    """``GET`` or ``POST``."""
    path: str = ""
    """The route's path below ``/hooks/{messenger}/{instance}/`` (``""`` for the root)."""
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    """Request headers (case-insensitive)."""
    query: httpx.QueryParams = field(default_factory=httpx.QueryParams)
    """Query string parameters."""
    body: bytes = b""
    """The raw body, exactly as received (signatures are computed over it)."""


@dataclass(frozen=True, kw_only=True)
class WebhookResponse:
    """What to answer a messenger's request."""

    status: int = 200
    """HTTP status."""
    body: bytes = b""
    """Response body."""
    content_type: str = "text/plain; charset=utf-8"
    """``Content-Type`` of the body."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Further response headers (``Retry-After`` on an overload answer)."""


@dataclass(frozen=True, kw_only=True)
class Route:
    """A path the adapter serves below ``/hooks/{messenger}/{instance}``."""

    path: str = ""
    """Relative path without a leading slash; ``""`` is the instance's root."""
    methods: tuple[str, ...] = ("POST",)
    """HTTP methods: ``POST``, and ``GET`` for handshakes (Meta's ``hub.challenge``)."""


@dataclass(frozen=True, kw_only=True)
class FetchedMedia:
    """The bytes behind an :attr:`Attachment.fetch <amoconnect.model.Attachment.fetch>` handle."""

    content: bytes | AsyncIterable[bytes]
    """The bytes, whole or as a stream."""
    content_type: str | None = None
    """MIME type, when the messenger says."""
    file_name: str | None = None
    """File name, when the messenger says."""
    size: int | None = None
    """Size in bytes, when known before reading."""


class StateStore(Protocol):
    """A small durable key-value store, private to one adapter instance (offsets, tokens, caches)."""

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None``."""
        ...

    async def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any value."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``; nothing happens when it is absent."""
        ...


Intake = Literal["webhook", "polling", "not_registered"]
"""How the messenger's updates reach an instance, as its adapter reports it (:attr:`AdapterContext.intake`)."""


def _unreported(intake: Intake) -> None:
    return


async def _run_here(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """One process, no fleet: run the work here."""
    await work()


def _in_process_amocrm_limit() -> Limiter:
    from .amocrm import DEFAULT_RATE  # amocrm imports the package, which imports this module

    return RateLimiter(DEFAULT_RATE, 1.0, burst=1)


@dataclass(frozen=True, kw_only=True)
class AdapterContext:
    """What the runtime gives an adapter instance."""

    instance: str
    """The instance's name from the configuration."""
    http: httpx.AsyncClient
    """The shared HTTP client (per-host in-flight cap, the configured transport); never close it."""
    log: FilteringBoundLogger
    """A logger bound to the messenger and instance."""
    state: StateStore
    """The instance's key-value store."""
    submit: Callable[[Sequence[InboundEvent]], Awaitable[None]]
    """Hand inbound events to the core; returns once they are stored durably (for long polling)."""
    history: Callable[[str], AsyncIterator[HistoryEntry]] | None = None
    """A chat's messages as amoCRM keeps them, newest first, by the messenger's chat id (context for an agent);
    empty until amoCRM's chat id of the conversation is known (its first message reached amoCRM)."""
    public_url: str | None = None
    """Public URL of the instance's webhook root (``.../hooks/{messenger}/{instance}``); ``None`` when not served."""
    exclusive: Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]] = _run_here
    """``await context.exclusive(name, work)``: run ``work`` in one process of the fleet at a time
    (e.g. long polling: a bot must be polled once, however many processes serve it), taking over
    when that process dies. ``name`` is the work's name within the instance."""
    url_guard: UrlGuard = field(default_factory=UrlGuard)
    """The SSRF guard for URLs from outside (a manager's attachment, a file link in an event): pass it to
    :func:`amoconnect.media.download` / :func:`~amoconnect.media.fetch_url`. Strict unless configured."""
    limiter: LimiterFactory = field(default_factory=LocalLimiters)
    """``limiter(name, rate, per=1.0, burst=None)``: the instance's rate limit called ``name`` (``"api"``).

    The runtime's come from its store, so on PostgreSQL they hold for every process serving the
    instance; names are the instance's own (the store sees ``{messenger}:{instance}:{name}``).
    Outside a runtime the default is in-process.
    """
    button_data: ButtonData = field(default_factory=ButtonData)
    """Button data longer than the messenger holds (:mod:`amoconnect.buttondata`): put
    ``await context.button_data.shorten(value, fits)`` on a button instead of cutting ``value``,
    and relay ``await context.button_data.resolve(data)`` for a press (``None``: the button expired).
    The runtime's keeps the values in its store, for every process; outside a runtime, in memory."""
    intake: Callable[[Intake], None] = _unreported
    """``context.intake("webhook")`` once the messenger accepted the webhook, ``"polling"`` when long
    polling starts, ``"not_registered"`` when the webhook could not be registered (no public URL; the
    messenger refused or is not reachable yet): the console shows it with the source. No IO; outside
    a runtime it does nothing."""
    amocrm_limiter: Limiter = field(default_factory=_in_process_amocrm_limit)
    """amoCRM's REST rate limit (7 requests/s per account), the one the core's own calls take: pass it
    as ``limiter`` to an :class:`~amoconnect.amocrm.AmoCRMClient` the adapter makes, so that together
    they stay within the account's limit (on PostgreSQL, with every process's). Outside a runtime, in-process."""


class MessengerAdapter(abc.ABC):
    """Base class of messenger adapters: subclass it, declare, implement ``send_message`` and the rest.

    The class attributes below are the declarations :func:`validate_adapter` checks; ``name``
    and ``settings`` have no default. ``async def`` lives here, never in hooks.
    """

    name: ClassVar[str]
    """The messenger's name: lowercase letters, digits, ``_`` and ``-`` (``"telegram"``)."""
    settings: ClassVar[type[msgspec.Struct]]
    """Schema of one instance's settings; the runtime decodes the configuration into it."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    """What the messenger can do; the core uses nothing else."""
    reactions: ClassVar[ReactionSet] = ReactionSet()
    """The emoji the messenger accepts as reactions (with capability ``reactions``)."""
    reply_window: ClassVar[float | None] = None
    """Seconds after the client's last message during which free text may be sent (``time_window``)."""
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    """Send limits the relay keeps to."""
    routes: ClassVar[tuple[Route, ...]] = (Route(),)
    """Webhook paths served; ``()`` for an adapter that only polls."""
    webhook_ack: ClassVar[WebhookResponse] = WebhookResponse()
    """The answer to a webhook once its events are stored (VK wants the body ``ok``)."""
    error_reasons: ClassVar[Mapping[str, FailureReason]] = {}
    """The messenger's own error codes → neutral failure reasons, extending the core's table: a
    failed :class:`~amoconnect.model.InboundStatus` whose reason is ``other`` (or absent) and whose
    ``error_code`` is listed here is reported with the listed reason (and so its amoCRM error code)."""
    amocrm_service: ClassVar[str | None] = None
    """The service type amoCRM knows this messenger's sources by (``"whatsapp"``), or ``None``;
    ``amoconnect sources sync`` declares it with ``waba`` (capability ``templates``) and
    ``is_supports_list_message`` (capability ``list_messages``)."""
    sandbox_factory: ClassVar[Callable[..., Any] | None] = None
    """Builds the messenger's fake for ``amoconnect run --sandbox``: called with ``http=`` (the
    ``httpx.AsyncClient`` its webhooks go out on), it returns an :class:`~amoconnect.sandbox.SandboxMessenger`;
    ``None`` if the plugin ships no fake. A class, or a function wrapped in ``staticmethod``, so that
    it is not bound to an instance."""

    config: msgspec.Struct
    """This instance's settings, an instance of :attr:`settings` (narrow the annotation in subclasses)."""
    context: AdapterContext
    """What the runtime gave this instance."""

    def __init__(self, config: msgspec.Struct, context: AdapterContext) -> None:
        self.config = config
        self.context = context

    # -- webhooks ---------------------------------------------------------------------------

    async def verify_headers(self, request: WebhookRequest) -> None:
        """Refuse a request from its method, path, headers and query alone, before its body is read.

        ``request.body`` is empty here. Raise :class:`~amoconnect.errors.SignatureError` when these
        already show the request is not the messenger's (a secret header missing or wrong, a
        signature header missing or malformed): the runtime answers 401 and never reads the body,
        so a flood of unsigned requests costs no memory. The default accepts everything;
        :meth:`verify` still sees the whole request.
        """
        return

    async def verify(self, request: WebhookRequest) -> WebhookResponse | None:
        """Check that ``request`` comes from the messenger.

        Raise :class:`~amoconnect.errors.SignatureError` when it does not (the runtime answers
        401); return a :class:`WebhookResponse` to answer at once without parsing (a handshake
        such as Meta's ``hub.challenge`` or VK's confirmation); return ``None`` to go on to
        :meth:`parse`. Required when :attr:`routes` is not empty.
        """
        raise NotImplementedError(f"{type(self).__qualname__} serves no webhooks")

    async def parse(self, request: WebhookRequest) -> Sequence[InboundEvent]:
        """The neutral events in a verified request (often several, often none).

        Raise :class:`~amoconnect.errors.WebhookError` for a body of the wrong shape. No IO
        here but a press's :meth:`context.button_data.resolve <amoconnect.buttondata.ButtonData.resolve>`
        (a read of the core's store): the runtime stores the events and answers :attr:`webhook_ack` right after.
        """
        raise NotImplementedError(f"{type(self).__qualname__} serves no webhooks")

    # -- sends ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def send_message(self, message: OutgoingMessage) -> SendResult:
        """Send ``message``; raise :class:`~amoconnect.errors.MessengerError` (or a subclass) on failure."""

    async def send_reaction(self, reaction: OutgoingReaction) -> None:
        """Set or remove a reaction (capability ``reactions``)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not declare capability 'reactions'")

    async def send_typing(self, typing: OutgoingTyping) -> None:
        """Show the typing indicator (capability ``typing``)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not declare capability 'typing'")

    async def send_comment_reply(self, reply: OutgoingCommentReply) -> SendResult:
        """Answer a comment in public (capability ``comments``)."""
        raise NotImplementedError(f"{type(self).__qualname__} does not declare capability 'comments'")

    async def fetch_media(self, handle: str) -> FetchedMedia:
        """The bytes behind an attachment's ``fetch`` handle; needed once ``parse`` emits one."""
        raise NotImplementedError(f"{type(self).__qualname__} emits no fetch handles")

    # -- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Prepare the instance before traffic flows (register the webhook at ``context.public_url``)."""
        return

    async def run(self) -> None:
        """Long-running work such as long polling, handing events to ``context.submit``.

        The runtime runs it in a task after :meth:`startup` and cancels it before
        :meth:`shutdown`. The default returns at once.
        """
        return

    async def shutdown(self) -> None:
        """Release what :meth:`startup` took."""
        return

    async def unregister(self) -> None:
        """The source is being removed for good (or its account uninstalled the integration): undo what
        :meth:`startup` registered with the messenger, such as its webhook. Called once, in one process,
        while the instance is started (:meth:`shutdown` follows), or by a command run beside the
        connector on an instance built but never started: use only what ``__init__`` set up. The
        default does nothing."""
        return


_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}\Z")
_ROUTE_PATH = re.compile(r"(?:[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*)?\Z")
_ROUTE_METHODS = frozenset({"GET", "POST"})
_ASYNC_METHODS = tuple(
    name
    for name, member in vars(MessengerAdapter).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)


def _overrides(cls: type[MessengerAdapter], method: str) -> bool:
    return getattr(cls, method, None) is not getattr(MessengerAdapter, method)


def _declared(cls: type[MessengerAdapter], attribute: str) -> Any:
    """A declaration as the class really holds it, which need not be what the annotation says."""
    return getattr(cls, attribute, None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _capabilities(cls: type[MessengerAdapter], problems: list[str]) -> set[Capability]:
    declared = _declared(cls, "capabilities")
    if not isinstance(declared, frozenset):
        problems.append(f"capabilities must be a frozenset of Capability, got {declared!r}")
        return set()
    found: set[Capability] = set()
    for item in sorted(declared, key=str):
        try:
            found.add(Capability(item))
        except ValueError:
            problems.append(f"unknown capability {item!r}; known: {', '.join(Capability)}")
    for capability in sorted(found):
        problems.extend(
            f"declares capability {capability.value!r} but does not implement {method}(); "
            "implement it or drop the capability"
            for method in CAPABILITY_METHODS[capability]
            if not _overrides(cls, method)
        )
    return found


def _methods(cls: type[MessengerAdapter], problems: list[str]) -> None:
    problems.extend(f"does not implement {method}()" for method in sorted(cls.__abstractmethods__))
    problems.extend(
        f"{method}() must be 'async def'"
        for method in _ASYNC_METHODS
        if _overrides(cls, method) and not inspect.iscoroutinefunction(getattr(cls, method))
    )


def _data(cls: type[MessengerAdapter], declared: set[Capability], problems: list[str]) -> None:
    name = _declared(cls, "name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name {name!r} is not a messenger name: use lowercase letters, digits, '_' and '-'")

    settings = _declared(cls, "settings")
    if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)):
        problems.append(f"settings must be a msgspec.Struct subclass, got {settings!r}")

    reactions = _declared(cls, "reactions")
    if not isinstance(reactions, ReactionSet):
        problems.append(f"reactions must be a ReactionSet, got {reactions!r}")
    elif reactions and Capability.reactions not in declared:
        problems.append("declares reactions without capability 'reactions'")
    elif not reactions and Capability.reactions in declared:
        problems.append(
            "declares capability 'reactions' with an empty reaction set; "
            "set reactions = ReactionSet.any() or ReactionSet.of(...)"
        )

    window = _declared(cls, "reply_window")
    if window is not None and (not _is_number(window) or window <= 0):
        problems.append(f"reply_window must be a positive number of seconds or None, got {window!r}")
    elif window is not None and Capability.time_window not in declared:
        problems.append("declares reply_window without capability 'time_window'")
    elif window is None and Capability.time_window in declared:
        problems.append("declares capability 'time_window' without reply_window (seconds)")

    limits = _declared(cls, "rate_limits")
    if not isinstance(limits, tuple) or not all(isinstance(limit, RateLimit) for limit in limits):
        problems.append(f"rate_limits must be a tuple of RateLimit, got {limits!r}")
    else:
        problems.extend(
            f"{limit!r} needs count >= 1 and per > 0 seconds"
            for limit in limits
            if not (isinstance(limit.count, int) and limit.count >= 1 and _is_number(limit.per) and limit.per > 0)
        )

    ack = _declared(cls, "webhook_ack")
    if not isinstance(ack, WebhookResponse):
        problems.append(f"webhook_ack must be a WebhookResponse, got {ack!r}")
    sandbox = _declared(cls, "sandbox_factory")
    if sandbox is not None and not callable(sandbox):
        problems.append(f"sandbox_factory must be callable or None, got {sandbox!r}")


def _routes(cls: type[MessengerAdapter], problems: list[str]) -> None:
    routes = _declared(cls, "routes")
    if not isinstance(routes, tuple) or not all(isinstance(route, Route) for route in routes):
        problems.append(f"routes must be a tuple of Route, got {routes!r}")
        return
    seen: set[str] = set()
    for route in routes:
        if not _ROUTE_PATH.match(route.path):
            problems.append(f"route path {route.path!r} must be relative, like 'updates' or '' (no leading '/')")
        if route.path in seen:
            problems.append(f"route path {route.path!r} is declared twice")
        seen.add(route.path)
        if not route.methods or not set(route.methods) <= _ROUTE_METHODS:
            problems.append(f"route {route.path!r} has methods {route.methods!r}; allowed: GET, POST")
    if routes:
        problems.extend(
            f"serves webhook routes but does not implement {method}()"
            for method in ("verify", "parse")
            if not _overrides(cls, method)
        )


def validate_adapter(cls: object, *, plugin: str | None = None) -> None:
    """Check an adapter class's declarations against its code; raise :class:`PluginError` if they disagree.

    The message names the plugin (``plugin``, else the adapter's own name), the class, and
    every problem found.
    """
    label = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"
    owner = plugin or getattr(cls, "name", None) or "?"
    if not (isinstance(cls, type) and issubclass(cls, MessengerAdapter)):
        raise PluginError(f"plugin {owner!r} registered {label}, which is not a MessengerAdapter subclass")
    problems: list[str] = []
    declared = _capabilities(cls, problems)
    _methods(cls, problems)
    _data(cls, declared, problems)
    _routes(cls, problems)
    if len(problems) == 1:
        raise PluginError(f"plugin {owner!r}, adapter {label}: {problems[0]}")
    if problems:
        listing = "".join(f"\n  - {problem}" for problem in problems)
        raise PluginError(f"plugin {owner!r}, adapter {label} has {len(problems)} problems:{listing}")
