"""Which adapter instance serves what: sources ↔ accounts ↔ instances. Pure lookups, no IO."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .adapter import MessengerAdapter
from .capabilities import Capability, RateLimit
from .config import AccountConfig, SourceConfig
from .model import Conversation
from .ratelimit import Limiter
from .store.base import ConversationRecord

__all__ = ["Instance", "Routing"]


@dataclass
class Instance:
    """One configured messenger instance (a bot, a number, a community) and its adapter."""

    source: SourceConfig
    account: AccountConfig
    adapter: MessengerAdapter
    limiters: list[tuple[RateLimit, Limiter]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The instance name (``[[sources]] name``)."""
        return self.source.name

    @property
    def scope_id(self) -> str:
        """The amoCRM connection the instance belongs to."""
        return self.account.scope_id

    @property
    def messenger(self) -> str:
        """The adapter's messenger name."""
        return self.adapter.name

    def can(self, capability: Capability) -> bool:
        """True when the adapter declares ``capability``."""
        return capability in self.adapter.capabilities

    async def throttle(self, chat: str) -> None:
        """Wait until the adapter's declared rate limits allow one more send to ``chat``."""
        for limit, limiter in self.limiters:
            await limiter.acquire(chat if limit.scope == "chat" else "")

    async def penalize(self, chat: str, seconds: float) -> None:
        """Hold every send to ``chat`` (and, for instance-wide limits, to the instance) for ``seconds``."""
        for limit, limiter in self.limiters:
            await limiter.penalize(chat if limit.scope == "chat" else "", seconds)

    def conversation(self, record: ConversationRecord) -> Conversation:
        """The neutral view of a stored conversation, for hooks."""
        return Conversation(
            id=record.conversation_id,
            messenger=self.messenger,
            instance=self.name,
            chat=record.chat,
            amocrm_chat_id=record.amocrm_chat_id,
            source=self.source.external_id,
        )


class Routing:
    """Finds instances by name and by amoCRM source."""

    def __init__(self, instances: Iterable[Instance]) -> None:
        self.instances = {instance.name: instance for instance in instances}

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances.values())

    def get(self, name: str) -> Instance | None:
        """The instance called ``name``."""
        return self.instances.get(name)

    def for_source(self, scope_id: str, external_id: str | None) -> Instance | None:
        """The instance that sends for ``external_id`` in a connection; its default source when absent or unknown."""
        candidates = [i for i in self.instances.values() if i.scope_id == scope_id]
        if external_id:
            for instance in candidates:
                if instance.source.external_id == external_id:
                    return instance
            return None
        for instance in candidates:
            if instance.source.default:
                return instance
        return candidates[0] if len(candidates) == 1 else None
