"""Which adapter instance serves what: sources ↔ accounts ↔ instances. Dictionary lookups, no IO.

The registry's changes reach it at run time (:mod:`amoconnect.instances` adds, replaces and
removes instances, and hands instances their account's new record)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .adapter import MessengerAdapter
from .capabilities import Capability, RateLimit
from .model import Conversation
from .ratelimit import Limiter
from .store.base import ConversationRecord
from .store.registry import AccountRecord, SourceRecord

__all__ = ["Instance", "Routing"]


@dataclass
class Instance:
    """One messenger instance (a bot, a number, a community) and its adapter."""

    source: SourceRecord
    account: AccountRecord
    adapter: MessengerAdapter
    limiters: list[tuple[RateLimit, Limiter]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The instance name (the source's)."""
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
        self.instances: dict[str, Instance] = {}
        self._by_scope: dict[str, dict[str, Instance]] = {}
        for instance in instances:
            self.add(instance)

    def __iter__(self) -> Iterator[Instance]:
        return iter(list(self.instances.values()))

    def get(self, name: str) -> Instance | None:
        """The instance called ``name``."""
        return self.instances.get(name)

    def add(self, instance: Instance) -> None:
        """Route to ``instance`` (replacing one of its name)."""
        self.remove(instance.name)
        self.instances[instance.name] = instance
        self._by_scope.setdefault(instance.scope_id, {})[instance.name] = instance

    def remove(self, name: str) -> Instance | None:
        """Stop routing to the instance called ``name``; the instance, if there was one."""
        instance = self.instances.pop(name, None)
        if instance is not None:
            of_scope = self._by_scope.get(instance.scope_id, {})
            of_scope.pop(name, None)
            if not of_scope:
                self._by_scope.pop(instance.scope_id, None)
        return instance

    def of_scope(self, scope_id: str) -> list[Instance]:
        """The instances of the account connected under ``scope_id``."""
        return list(self._by_scope.get(scope_id, {}).values())

    def set_account(self, account: AccountRecord) -> None:
        """Hand the account's instances its new record (state, tokens); its scope is the same."""
        for instance in self.of_scope(account.scope_id):
            instance.account = account

    def for_source(self, scope_id: str, external_id: str | None) -> Instance | None:
        """The instance that sends for ``external_id`` in a connection; its default source when absent or unknown."""
        candidates = list(self._by_scope.get(scope_id, {}).values())
        if external_id:
            for instance in candidates:
                if instance.source.external_id == external_id:
                    return instance
            return None
        for instance in candidates:
            if instance.source.default:
                return instance
        return candidates[0] if len(candidates) == 1 else None
