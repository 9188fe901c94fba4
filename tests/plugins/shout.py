"""A tiny plugin for tests that alters messages: inbound text in capitals, outgoing text signed."""

from __future__ import annotations

import msgspec

from amoconnect.hookspecs import hookimpl
from amoconnect.model import Conversation, InboundMessage, OutgoingMessage


@hookimpl
def inbound_message(event: InboundMessage) -> InboundMessage:
    return msgspec.structs.replace(event, text=event.text.upper())


@hookimpl
def outgoing_message(message: OutgoingMessage, conversation: Conversation) -> OutgoingMessage | None:
    if not message.text:
        return None
    return msgspec.structs.replace(message, text=f"{message.text} (via {conversation.instance})")
