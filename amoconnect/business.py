"""Messages the business wrote outside amoCRM, as amojo takes them (spec §5, "who is the sender").

Such a message goes from the channel bot (``sender.ref_id`` = ``channel.bot_id``), or from a known
amoCRM user (their amojo_id), to the client (``receiver``); amoCRM sends no webhook back for it.
The history import (``amoconnect import``) and live echoes (capability ``echoes``) both build
their payloads here. Pure logic.
"""

from __future__ import annotations

from collections.abc import Mapping

from .amojo import wire

__all__ = ["author_ref", "business_payload"]


def author_ref(bot_id: str, authors: Mapping[str, str], author: str | None) -> str:
    """The amojo id a business message goes under: the amoCRM user ``authors`` maps the messenger's
    ``author`` id to, else the channel bot ``bot_id``."""
    if author is not None and authors.get(author):
        return authors[author]
    return bot_id


def business_payload(
    *,
    msgid: str,
    conversation_id: str,
    timestamp: float,
    author: str,
    client: wire.Participant,
    content: wire.MessageContent,
    external_id: str,
    silent: bool,
    conversation_ref_id: str | None = None,
    reply_to: wire.ReplyTo | None = None,
    amocrm_id: str | None = None,
) -> wire.MessagePayload:
    """The payload of a message ``author`` (an amojo id: the bot or a user) sent the client; with
    ``amocrm_id`` (amoCRM's id of it), the payload of its ``edit_message``."""
    return wire.MessagePayload(
        timestamp=int(timestamp),
        msec_timestamp=int(timestamp * 1000),
        msgid=msgid,
        conversation_id=conversation_id,
        conversation_ref_id=conversation_ref_id,
        silent=silent,
        source=wire.Source(external_id=external_id),
        sender=wire.Participant(ref_id=author, name=""),
        receiver=client,
        message=content,
        reply_to=reply_to,
        id=amocrm_id,
    )
