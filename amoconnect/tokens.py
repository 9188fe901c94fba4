"""Installed accounts' OAuth tokens, refreshed before they expire, once per account across a fleet.

amoCRM's access tokens last a day and every refresh rotates the refresh token: the old one stops
working at once, with no grace period. So a refresh is done by one process at a time per account
(the fleet-wide lease ``oauth-refresh:{account}``, renewed while amoCRM answers and running out
``store.lease`` seconds after its holder died; within a process, a lock), the new pair is written
to the store before anything uses it, and a process that did not refresh uses the winner's pair,
which reaches it through the registry. Before refreshing, the lease holder reads the registry
again: a winner that just finished leaves nothing to do; a process that found the lease held looks
again once it could have run out.

amoCRM refusing the refresh token (revoked: the integration was turned off; or already used: a
refresher died between amoCRM's answer and the store write, so the new pair is lost and amoCRM
offers no way back) marks the account ``needs_reauth`` with the reason (``state_reason``) and a
log line, and nobody tries again until it installs again; messages keep flowing (they need only
the channel).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import httpx
import msgspec
import structlog

from .amocrm import AmoCRMClient, OAuthApp, Tokens
from .config import OAuthConfig
from .crashpoints import crash_point
from .errors import AmoconnectError, AmoCRMError, StoreError
from .registry import Registry
from .signing import same_secret
from .store.base import Store
from .store.registry import AccountRecord

__all__ = ["CHECK_EVERY", "LEASE_SECONDS", "REFRESH_BEFORE", "REFUSED", "TokenKeeper"]

log = structlog.get_logger("amoconnect.tokens")

REFRESH_BEFORE = 3600.0
"""Refresh an access token this many seconds before it expires."""
CHECK_EVERY = 60.0
"""Seconds between two looks for tokens to refresh."""
LEASE_SECONDS = 60.0
"""How long one process holds an account's refresh by default: longer than a refresh takes."""
REFUSED = (
    "amoCRM refused the refresh token{hint}: the integration was turned off in the account, or a refresh's "
    "new pair was lost (the process stopped between amoCRM's answer and the store write; amoCRM's refresh "
    "tokens work once). The account's admin must install the integration again"
)
"""``state_reason`` of an account whose refresh token amoCRM refused (``{hint}``: amoCRM's words)."""


class TokenKeeper:
    """Refreshes the stored accounts' OAuth tokens (module docstring)."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        oauth: OAuthConfig,
        *,
        http: httpx.AsyncClient | None = None,
        wall_clock: Callable[[], float] = time.time,
        lease: float = LEASE_SECONDS,
    ) -> None:
        self.registry = registry
        self.store = store
        self.app = OAuthApp(
            client_id=oauth.client_id, client_secret=oauth.client_secret, redirect_uri=oauth.redirect_uri
        )
        self._http = http
        self._now = wall_clock
        self._locks: dict[str, anyio.Lock] = {}
        self.lease = lease
        self.held_elsewhere: set[str] = set()
        """Accounts due whose refresh another process held at the last look."""

    def _due(self, account: AccountRecord | None) -> bool:
        return (
            account is not None
            and not account.fixed
            and account.state == "active"
            and bool(account.refresh_token)
            and account.token_expires_at is not None
            and account.token_expires_at - REFRESH_BEFORE <= self._now()
        )

    async def run(self) -> None:
        """Until cancelled: refresh what is due every :data:`CHECK_EVERY` seconds."""
        while True:
            try:
                await self.refresh_due()
            except AmoconnectError as exc:
                log.warning("token refresh round failed; trying again later", error=str(exc))
            # A refresher that died holds its lease until it runs out: look again then, not a minute later.
            await anyio.sleep(min(CHECK_EVERY, self.lease) if self.held_elsewhere else CHECK_EVERY)

    async def refresh_due(self) -> list[str]:
        """Refresh every token due; the accounts refreshed here."""
        done = []
        self.held_elsewhere.clear()
        for account in list(self.registry.accounts()):
            if self._due(account) and await self.refresh(account.name):
                done.append(account.name)
        return done

    async def refresh(self, name: str) -> bool:
        """Refresh ``name``'s tokens unless another process does or did; True when this one did."""
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            lease = f"oauth-refresh:{name}"
            if not await self.store.hold_lease(lease, self.lease):
                self.held_elsewhere.add(name)
                return False  # another process refreshes: its pair reaches us through the registry
            try:
                await self.registry.refresh()  # a winner that just finished left nothing to do
                account = self.registry.account(name)
                if account is None or not self._due(account):
                    return False
                # Shielded: a stop (SIGTERM of a rolling restart) must not fall between amoCRM's answer and
                # the store write, which would lose the only valid pair; a refresh is bounded by HTTP timeouts.
                done = False
                with anyio.CancelScope(shield=True):
                    done = await self._refresh_holding(account, lease)
                return done
            finally:
                with anyio.CancelScope(shield=True):
                    await self.store.release_lease(lease)

    async def _refresh_holding(self, account: AccountRecord, lease: str) -> bool:
        """:meth:`_refresh` while renewing ``lease``, so that a slow answer is not refreshed twice (a
        refresher that dies stops renewing, and the others take over once it runs out); its error as is."""
        outcome: list[bool] = []
        failure: list[Exception] = []

        async def refresh() -> None:
            try:
                outcome.append(await self._refresh(account))
            except Exception as exc:  # raised below, outside the task group (which would wrap it)
                failure.append(exc)
            finally:
                tasks.cancel_scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._renew, lease)
            tasks.start_soon(refresh)
        if failure:
            raise failure[0]
        return outcome[0]

    async def _renew(self, lease: str) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self.store.hold_lease(lease, self.lease)
            except StoreError as exc:  # never cut the refresh short: its answer must reach the store
                log.warning("token refresh lease renewal failed", lease=lease, error=str(exc))

    async def _refresh(self, account: AccountRecord) -> bool:
        async def store_first(tokens: Tokens) -> None:
            crash_point("oauth.answer")
            # Written before anything uses the pair: the old refresh token no longer works. Onto the
            # record as it is now: a disconnect that came meanwhile stays.
            await self.registry.refresh()
            await self.registry.put_account(
                msgspec.structs.replace(
                    self.registry.account(account.name) or account,
                    token=tokens.access_token,
                    refresh_token=tokens.refresh_token or account.refresh_token,
                    token_expires_at=tokens.expires_at,
                )
            )

        expires_at = int(account.token_expires_at) if account.token_expires_at is not None else None
        tokens = Tokens(access_token=account.token, refresh_token=account.refresh_token, expires_at=expires_at)
        async with AmoCRMClient(
            account.rest_url, tokens=tokens, oauth=self.app, on_tokens=store_first, client=self._http
        ) as rest:
            try:
                await rest.refresh()
            except AmoCRMError as exc:
                if exc.status not in (400, 401):
                    raise
                await self.registry.refresh()
                now = self.registry.account(account.name)
                if now is not None and not same_secret(now.refresh_token, account.refresh_token):
                    log.info(
                        "another process refreshed the account's tokens first; using its pair", account=account.name
                    )
                    return False
                hint = exc.body.get("hint") if isinstance(exc.body, dict) else None
                reason = REFUSED.format(hint=f" ({hint})" if hint else "")
                await self.registry.set_account_state(account.name, "needs_reauth", reason)
                log.error(
                    "amoCRM refused the account's refresh token: it needs to install the integration again",
                    account=account.name,
                    status=exc.status,
                    reason=reason,
                )
                return False
        log.info("OAuth tokens refreshed", account=account.name)
        return True
