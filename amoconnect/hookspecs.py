"""The hooks a plugin may implement; docs/hooks.md is their reference.

Implement a hook with a module-level function of the same name, decorated with
:data:`hookimpl`, in the module the entry point names::

    from amoconnect import hookimpl

    @hookimpl
    def register_messengers(register):
        register(TelegramAdapter)

Hooks are synchronous: they register things or look at and alter neutral objects. Async code
lives on :class:`~amoconnect.adapter.MessengerAdapter`. An implementation may take any subset
of a hook's arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .adapter import MessengerAdapter
    from .model import Conversation, DeliveryStatus, InboundMessage, MessageRef, OutgoingMessage, Person

__all__ = [
    "AddRoute",
    "RegisterMessenger",
    "find_contact",
    "hookimpl",
    "hookspec",
    "inbound_message",
    "outgoing_message",
    "register_messengers",
    "startup_routes",
    "status_changed",
]

hookspec = HookspecMarker("amoconnect")
"""Marks a hook specification (amoconnect's own use)."""
hookimpl = HookimplMarker("amoconnect")
"""Marks a plugin's hook implementation."""


class RegisterMessenger(Protocol):
    """The registrar :func:`register_messengers` gets."""

    def __call__(self, adapter: type[MessengerAdapter], /) -> None:
        """Register one adapter class; a bad declaration or a taken name raises ``PluginError``."""


class AddRoute(Protocol):
    """The callback :func:`startup_routes` gets."""

    def __call__(
        self,
        path: str,
        endpoint: Callable[[Request], Awaitable[Response]],
        *,
        methods: Sequence[str] = ("GET",),
    ) -> None:
        """Serve ``endpoint`` (a Starlette request handler) at the absolute ``path``."""


@hookspec
def register_messengers(register: RegisterMessenger) -> None:
    """Register the plugin's messenger adapters.

    Fires once per plugin manager, when the runtime (or ``amoconnect plugins``) collects
    messengers. Call ``register(AdapterClass)`` for each adapter; it validates the class's
    declarations and refuses a messenger name another plugin already registered. Returns nothing.
    """


@hookspec
def inbound_message(event: InboundMessage, conversation: Conversation) -> InboundMessage | None:
    """Look at, or alter, a client's message before it goes to amoCRM.

    Fires in the inbox worker for every :class:`~amoconnect.model.InboundMessage`, once its
    conversation is known and before its media are re-hosted and it is sent to amoCRM. Gets
    the message and its conversation. Return ``None`` to leave it as it is, or a replacement
    (``msgspec.structs.replace(event, text=...)``). Implementations run one after another, each
    getting the message as the previous one left it. May run again when the job is retried, so
    keep side effects idempotent.
    """


@hookspec
def outgoing_message(message: OutgoingMessage, conversation: Conversation) -> OutgoingMessage | None:
    """Look at, or alter, a manager's message before the messenger gets it.

    Fires in the outbox worker for every :class:`~amoconnect.model.OutgoingMessage`, after the
    window and capability checks, right before the adapter's ``send_message``. Gets the message
    and its conversation. Return ``None`` to leave it as it is, or a replacement.
    Implementations run one after another, each getting the message as the previous one left
    it. May run again when the send is retried, so keep side effects idempotent.
    """


@hookspec
def status_changed(message: MessageRef, old: DeliveryStatus | None, new: DeliveryStatus) -> None:
    """Observe a message's delivery status moving forward.

    Fires after the core has recorded the new status, only when it moves forward (a late
    ``delivered`` after ``read`` fires nothing). Gets the message's ids and conversation, the
    previous status (``None`` for the first one) and the new one. Returns nothing.
    """


@hookspec(firstresult=True)
def find_contact(conversation: Conversation, person: Person) -> int | None:
    """Name the amoCRM contact a new conversation belongs to.

    Fires once per conversation, on its first client message, before amoCRM hears of it. Gets
    the conversation and the client. Return an amoCRM contact id to create the chat and link it
    to that contact (instead of a new incoming lead), or ``None`` to leave it to the account's
    ``chat_policy``. The first implementation that returns an id wins. Must not block: an
    implementation that needs IO should have looked the client up before (e.g. from a deep link).
    """


@hookspec
def startup_routes(add_route: AddRoute) -> None:
    """Add HTTP routes to the server.

    Fires once, when the runtime builds its ASGI app. Call
    ``add_route("/path", endpoint, methods=["GET"])`` for each route; paths under ``/hooks/``
    and ``/amocrm/`` belong to the core. Returns nothing.
    """
