"""History import (``amoconnect import``): old conversations into amoCRM as one lead each.

Spec §5: old messages go with ``silent: true`` and the newest of each conversation with
``silent: false``, so amoCRM makes one lead and one notification. Every msgid is derived from
the messenger's ids, so an interrupted import simply runs again: what amojo already has is
refused as a duplicate and counted as done.

The input is JSON lines, one :class:`HistoryEntry` a line, as an adapter or an export script
produces them (the format: docs/cli.md, "History import").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from . import ids
from .amojo import wire
from .amojo.client import AmojoClient
from .business import business_payload
from .config import Config
from .errors import ConfigError
from .model import Person

__all__ = ["HistoryEntry", "ImportResult", "import_history", "read_history"]


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One old message of a conversation."""

    instance: str
    """The ``[[sources]]`` name the conversation belongs to."""
    chat: str
    """The messenger's chat id."""
    message_id: str
    """The messenger's message id."""
    timestamp: float
    """Unix seconds."""
    direction: Literal["in", "out"]
    """``in`` from the client, ``out`` from the business."""
    client: Person
    """The client of the conversation."""
    text: str = ""
    media_url: str | None = None
    """A public URL of an attachment (amoCRM downloads it)."""
    media_kind: Literal["picture", "video", "file", "voice", "audio", "sticker"] = "file"
    file_name: str = ""
    file_size: int = 0
    author_amojo_id: str | None = None
    """For ``out``: the amoCRM user who wrote it; the channel bot when absent."""


class ImportResult(msgspec.Struct, frozen=True):
    """What an import did."""

    conversations: int
    sent: int
    already_there: int


def read_history(path: str | Path) -> list[HistoryEntry]:
    """Read a JSON-lines history file; errors name the line."""
    decoder = msgspec.json.Decoder(HistoryEntry)
    entries = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entries.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from exc
    return entries


def _payload(config: Config, entry: HistoryEntry, external_id: str, silent: bool) -> wire.MessagePayload:
    client = wire.Participant(
        id=ids.client_id(entry.instance, entry.client.id),
        name=entry.client.name or entry.client.id,
        avatar=entry.client.avatar,
        profile=wire.Profile(phone=entry.client.phone, email=entry.client.email)
        if entry.client.phone or entry.client.email
        else None,
    )
    if entry.media_url:
        content = wire.MessageContent(
            type=entry.media_kind,
            media=entry.media_url,
            file_name=entry.file_name or entry.media_kind,
            file_size=entry.file_size,
            text=entry.text or None,
        )
    else:
        content = wire.MessageContent(type="text", text=entry.text)
    conversation_id = ids.conversation_id(entry.instance, entry.chat)
    if entry.direction == "out":
        return business_payload(
            msgid=ids.business_msgid(entry.instance, entry.chat, entry.message_id),
            conversation_id=conversation_id,
            timestamp=entry.timestamp,
            author=entry.author_amojo_id or config.channel.bot_id,
            client=client,
            content=content,
            external_id=external_id,
            silent=silent,
        )
    return wire.MessagePayload(
        timestamp=int(entry.timestamp),
        msec_timestamp=int(entry.timestamp * 1000),
        msgid=ids.inbound_msgid(entry.instance, entry.chat, entry.message_id),
        conversation_id=conversation_id,
        silent=silent,
        source=wire.Source(external_id=external_id),
        sender=client,
        message=content,
    )


async def import_history(
    config: Config,
    amojo: AmojoClient,
    entries: Iterable[HistoryEntry],
    *,
    progress: Callable[[int], None] = lambda _: None,
) -> ImportResult:
    """Send ``entries`` conversation by conversation, oldest first; only each conversation's newest notifies."""
    sources = {s.name: s for s in config.sources}
    grouped: dict[tuple[str, str], list[HistoryEntry]] = defaultdict(list)
    for entry in entries:
        if entry.instance not in sources:
            raise ConfigError(f"history names instance {entry.instance!r}, which is not in [[sources]]")
        grouped[(entry.instance, entry.chat)].append(entry)
    sent = already = 0
    for (instance, _), conversation in grouped.items():
        source = sources[instance]
        scope_id = config.account(source.account).scope_id
        ordered: Sequence[HistoryEntry] = sorted(conversation, key=lambda e: (e.timestamp, e.message_id))
        for index, entry in enumerate(ordered):
            if entry.direction == "out" and not (entry.author_amojo_id or config.channel.bot_id):
                raise ConfigError("importing business messages needs channel.bot_id (or author_amojo_id per entry)")
            payload = _payload(config, entry, source.external_id, silent=index < len(ordered) - 1)
            result = await amojo.send_message(scope_id, payload)
            if result.duplicate:
                already += 1
            else:
                sent += 1
            progress(1)
    return ImportResult(len(grouped), sent, already)
