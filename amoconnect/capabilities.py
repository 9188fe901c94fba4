"""What a messenger can do, declared as data on its adapter class.

The core reads these declarations; it never asks a messenger by name. A capability that needs
code names the adapter methods in :data:`CAPABILITY_METHODS`; the plugin manager refuses an
adapter that declares the capability without overriding them, and the core never calls a
method whose capability is not declared.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

import msgspec

__all__ = ["CAPABILITY_METHODS", "Capability", "RateLimit", "ReactionSet"]


class Capability(StrEnum):
    """One thing a messenger can do beyond sending text to a known chat."""

    write_first = "write_first"
    """Start a chat from a phone number (``OutgoingMessage.phone``)."""
    typing = "typing"
    """Show the manager typing (``send_typing``)."""
    reactions = "reactions"
    """Set and remove reactions (``send_reaction``); the client's reactions come in too."""
    comments = "comments"
    """Client comments on public posts come in; the manager answers them (``send_comment_reply``)."""
    templates = "templates"
    """Send approved templates (``OutgoingMessage.template``)."""
    list_messages = "list_messages"
    """Send list menus (``OutgoingMessage.list_message``)."""
    buttons = "buttons"
    """Send inline buttons (``OutgoingMessage.buttons``)."""
    media = "media"
    """Send and receive attachments."""
    edits = "edits"
    """The client's edits come in (``InboundEdit``)."""
    replies = "replies"
    """Quote a message (``OutgoingMessage.reply_to``); the client's quotes come in."""
    delivery_receipts = "delivery_receipts"
    """The messenger reports delivery: an ``InboundStatus`` ``delivered``, or a send that returns
    ``SendResult(status="delivered")`` because the messenger confirms it synchronously."""
    read_receipts = "read_receipts"
    """The messenger reports reading (``InboundStatus`` ``read``)."""
    time_window = "time_window"
    """Free text may only be sent within ``reply_window`` seconds of the client's last message."""
    echoes = "echoes"
    """Messages the business sends outside amoCRM (in the messenger's own app) come in as
    ``InboundEcho`` and show in amoCRM as the channel bot's; echoes of amoconnect's own sends are
    dropped. Needs ``channel.bot_id``."""


CAPABILITY_METHODS: Final[Mapping[Capability, tuple[str, ...]]] = MappingProxyType(
    {
        Capability.write_first: (),
        Capability.typing: ("send_typing",),
        Capability.reactions: ("send_reaction",),
        Capability.comments: ("send_comment_reply",),
        Capability.templates: (),
        Capability.list_messages: (),
        Capability.buttons: (),
        Capability.media: (),
        Capability.edits: (),
        Capability.replies: (),
        Capability.delivery_receipts: (),
        Capability.read_receipts: (),
        Capability.time_window: (),
        Capability.echoes: (),
    }
)
"""The adapter methods each capability requires beyond ``send_message``; empty when the
capability is a field of a message ``send_message`` must honour, or a fact about the messenger."""


def _plain(emoji: str) -> str:
    """An emoji without variation selectors: ``❤️`` and ``❤`` are the same reaction."""
    return emoji.replace("\ufe0f", "").replace("\ufe0e", "")


class ReactionSet(msgspec.Struct, frozen=True):
    """The reactions a messenger accepts: any emoji (``only`` is ``None``) or a fixed set."""

    only: frozenset[str] | None = frozenset()
    """The allowed emoji; ``None`` means any emoji, empty means none."""

    @classmethod
    def any(cls) -> ReactionSet:
        """Any emoji is allowed."""
        return cls(only=None)

    @classmethod
    def of(cls, *emoji: str) -> ReactionSet:
        """Exactly these emoji are allowed: ``ReactionSet.of("👍", "❤")``."""
        return cls(only=frozenset(emoji))

    def __bool__(self) -> bool:
        return self.only is None or bool(self.only)

    def match(self, emoji: str) -> str | None:
        """The messenger's own spelling of ``emoji``, or ``None`` when it is not allowed.

        Variation selectors are ignored when comparing, so amoCRM's ``❤️`` finds Telegram's ``❤``.
        """
        if not emoji:
            return None
        if self.only is None:
            return emoji
        if emoji in self.only:
            return emoji
        plain = _plain(emoji)
        return next((allowed for allowed in self.only if _plain(allowed) == plain), None)

    def __contains__(self, emoji: object) -> bool:
        return isinstance(emoji, str) and self.match(emoji) is not None


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    """At most ``count`` sends every ``per`` seconds, per adapter instance or per chat."""

    count: int
    """Sends allowed in the period."""
    per: float
    """Length of the period in seconds."""
    scope: Literal["instance", "chat"] = "instance"
    """``instance``: all chats of one bot or number together; ``chat``: each chat on its own."""
