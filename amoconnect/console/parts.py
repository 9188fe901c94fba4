"""What the console is handed by whoever runs it (it imports no runtime)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..adapter import Intake
from ..store.base import Store
from ..tenants import Tenants
from .samples import Samples
from .session import SessionCodec

__all__ = ["ConsoleParts"]


@dataclasses.dataclass(frozen=True)
class ConsoleParts:
    """The operations (:class:`~amoconnect.tenants.Tenants`), the store (dead letters, conversations),
    the operator's token (empty: no operator sign-in) and the OAuth settings of "sign in with amoCRM"."""

    tenants: Tenants
    store: Store
    codec: SessionCodec
    admin_token: str = ""
    client_id: str = ""
    """The integration's OAuth client id; empty: no "sign in with amoCRM"."""
    authorize_url: str = ""
    """amoCRM's authorisation page; empty: amoCRM's own for the chosen domain."""
    samples: Samples | None = None
    """The queue over the last hour (the operator's chart); None: no chart."""
    intake: Callable[[str], tuple[Intake, float] | None] = lambda name: None
    """How a source's updates reach this process (its webhook registered, long polling), as its
    running adapter reported it, and when; None: not known here."""

    @property
    def can_authorize(self) -> bool:
        return bool(self.client_id)
