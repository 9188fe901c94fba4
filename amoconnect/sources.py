"""``amoconnect sources sync|list``: the configured sources as amoCRM sources (spec §1, §10).

Each ``[[sources]]`` entry becomes one amoCRM source of its account with its ``external_id``,
name and default flag; for a messenger amoCRM knows as a service (WhatsApp), the service is
declared with ``waba`` and ``is_supports_list_message`` taken from the adapter's capabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec

from .adapter import MessengerAdapter
from .amocrm import AmoCRMClient, Source, SourceService, SourceServiceParams
from .capabilities import Capability
from .config import AccountConfig, Config

__all__ = ["SourceLike", "SyncResult", "amocrm_source", "desired_sources", "sync_sources"]


@dataclass(frozen=True)
class SyncResult:
    """What a sync did in one account."""

    created: list[str]
    updated: list[str]
    unchanged: list[str]


class SourceLike(Protocol):
    """What makes an amoCRM source: a ``[[sources]]`` entry or a stored source."""

    @property
    def name(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def default(self) -> bool: ...


def amocrm_source(source: SourceLike, adapter: type[MessengerAdapter] | None) -> Source:
    """The amoCRM source of ``source`` (``waba`` and ``is_supports_list_message`` from ``adapter``'s capabilities)."""
    services = None
    if adapter is not None and adapter.amocrm_service:
        params = SourceServiceParams(
            waba=Capability.templates in adapter.capabilities or None,
            is_supports_list_message=Capability.list_messages in adapter.capabilities or None,
        )
        services = [SourceService(type=adapter.amocrm_service, params=params)]
    return Source(
        name=source.title or source.name,
        external_id=source.external_id,
        default=source.default or None,
        services=services,
    )


def desired_sources(
    config: Config, account: AccountConfig, messengers: dict[str, type[MessengerAdapter]]
) -> list[Source]:
    """The amoCRM sources the configuration asks for in ``account``."""
    return [amocrm_source(s, messengers.get(s.plugin)) for s in config.sources if s.account == account.name]


def _same(current: Source, wanted: Source) -> bool:
    return (
        current.name == wanted.name
        and bool(current.default) == bool(wanted.default)
        and (wanted.services is None or current.services == wanted.services)
    )


async def sync_sources(client: AmoCRMClient, wanted: list[Source]) -> SyncResult:
    """Create the missing sources and update the changed ones (by ``external_id``); never deletes."""
    existing = {s.external_id: s for s in await client.list_sources()}
    create = [s for s in wanted if s.external_id not in existing]
    update = []
    unchanged = []
    for source in wanted:
        current = existing.get(source.external_id)
        if current is None:
            continue
        if _same(current, source):
            unchanged.append(source.external_id)
        else:
            update.append(msgspec.structs.replace(source, id=current.id))
    if create:
        await client.create_sources(create)
    if update:
        await client.update_sources(update)
    return SyncResult([s.external_id for s in create], [s.external_id for s in update], unchanged)
