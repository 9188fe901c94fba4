"""What the relay's job handlers share, and the job kinds and payloads they exchange."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import msgspec
import pluggy

from .amocrm import DEFAULT_RATE, AmoCRMClient
from .amojo.client import AmojoClient
from .config import Config
from .http import RetryPolicy
from .media import MediaStore
from .metrics import Metrics
from .model import InboundEvent
from .ratelimit import Limiter
from .registry import Registry
from .routing import Routing
from .store.base import NewJob, Store
from .store.registry import AccountRecord

__all__ = [
    "AMOCRM",
    "AMOCRM_LIMIT",
    "INBOUND",
    "STATUS",
    "Core",
    "GivenUp",
    "InboundJob",
    "StatusJob",
    "amocrm_limiter",
    "status_job",
]

AMOCRM = "amocrm"
"""A webhook from amoCRM; the payload is its raw body."""
INBOUND = "inbound"
"""An event from a messenger; the payload is an :class:`InboundJob`."""
STATUS = "status"
"""A delivery status to report to amojo; the payload is a :class:`StatusJob`."""
AMOCRM_LIMIT = "amocrm:account"
"""The store's limiter of amoCRM's REST API, keyed by the account's URL."""


def amocrm_limiter(store: Store) -> Limiter:
    """amoCRM's REST limit (7 requests/s per account, keyed by its URL) from ``store``: on PostgreSQL, the fleet's."""
    return store.limiter(AMOCRM_LIMIT, DEFAULT_RATE, 1.0, burst=1)


class InboundJob(msgspec.Struct, frozen=True):
    """An inbound event and the instance it came from."""

    instance: str
    event: InboundEvent


class GivenUp(msgspec.Struct, frozen=True, omit_defaults=True):
    """A manager's message the relay gave up on, as the console lists it: amoCRM's ids of its
    conversation and a preview of its text."""

    conversation: str
    """amoCRM's id of the chat."""
    client_id: str | None = None
    """Our conversation id, as amoCRM's webhook named it (absent on write-first)."""
    preview: str = ""


class StatusJob(msgspec.Struct, frozen=True, omit_defaults=True):
    """A ``delivery_status`` call to make: amoCRM's message id and what to say."""

    amocrm_id: str
    delivery_status: int
    error_code: int | None = None
    error: str | None = None
    given_up: GivenUp | None = None
    """Set when the message became a dead letter: once reported, it is recorded failed and shown as
    its conversation's newest message (the console's list)."""


def status_job(scope_id: str, status: StatusJob) -> NewJob:
    """The job that reports ``status`` to amojo, ordered per message."""
    return NewJob(STATUS, f"{scope_id}|status|{status.amocrm_id}", msgspec.json.encode(status), scope_id)


@dataclass
class Core:
    """The services a job handler works with."""

    config: Config
    store: Store
    amojo: AmojoClient
    routing: Routing
    pm: pluggy.PluginManager
    media: MediaStore
    metrics: Metrics
    registry: Registry
    amocrm_http: httpx.AsyncClient | None = None
    """The HTTP client toward amoCRM's REST API (tests and the sandbox point it at the fake); None: each
    account's client makes its own."""
    _rest: dict[str, AmoCRMClient] = field(default_factory=dict)
    rest_refused_until: dict[str, float] = field(default_factory=dict)
    """Account name → monotonic time until which its REST token counts as refused (see :mod:`.contacts`)."""

    def rest(self, account: AccountRecord) -> AmoCRMClient:
        """The REST API client of ``account`` (one per account; the rate limit is the store's, for the fleet)."""
        key = f"{account.name}\0{account.token}"  # a refreshed token makes a new client
        client = self._rest.get(key)
        if client is None:
            # Lookups sit in front of a client's message: fail fast and fall back rather than wait long.
            client = self._rest[key] = AmoCRMClient(
                account.rest_url,
                tokens=account.token or None,
                retry=RetryPolicy(attempts=2, backoff=0.2),
                limiter=amocrm_limiter(self.store),
                client=self.amocrm_http,
            )
        return client

    async def aclose(self) -> None:
        """Close the REST clients."""
        for client in self._rest.values():
            await client.aclose()
        self._rest.clear()
