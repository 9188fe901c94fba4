"""Token refresh with real processes: three ``amoconnect run`` processes share one PostgreSQL store and
all need to refresh one account's tokens at once, against the fake amoCRM's refresh tokens, which
work once (as amoCRM's do); and one process on SQLite, killed in the same place and started again.

A fleet needs PostgreSQL: one process owns a SQLite file (its leases are always its own).
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import tomli_w
from anyio.abc import Process
from processes import Slow, free_port, start_connector, stop_connector
from rig import CHANNEL, base_config, eventually

from amoconnect.config import Config, parse_config
from amoconnect.crashpoints import ENV as CRASH_AT
from amoconnect.registry import Registry
from amoconnect.store import opened_store
from amoconnect.store.registry import AccountRecord
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import fresh_postgres_schema

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENT_ID = "client-fleet"
CLIENT_SECRET = "secret-" + "f" * 40
REDIRECT = "http://amoconnect/oauth/callback"
ADMIN = "operator-token-0123456789abcdef0123456789"
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
LEASE = 1.0
"""``store.lease``: how long a dead refresher's lease keeps the others waiting."""
HOLD = 1.5
"""Seconds the fake amoCRM holds its answers back: the processes all start meanwhile."""


@dataclass
class Fleet:
    amocrm: FakeAmoCRM
    config: Config
    config_path: Path
    procs: dict[int, Process]
    """Port → the process serving on it."""

    async def stored(self) -> AccountRecord:
        """The account as the store has it now."""
        async with opened_store(self.config.store) as store:
            registry = Registry(self.config, store)
            await registry.load()
            account = registry.account("shop")
        assert account is not None
        return account

    def token_requests(self) -> list[int]:
        """The statuses of amoCRM's answers to token requests, in order."""
        return [r.status for r in self.amocrm.requests_to("/oauth2/access_token")]

    async def seen_by(self, port: int) -> dict[str, object]:
        """The account as the process on ``port`` has it (its admin API)."""
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"http://127.0.0.1:{port}/admin/api/accounts/shop", headers={"Authorization": f"Bearer {ADMIN}"}
            )
        assert answer.status_code == 200, answer.text
        shown: dict[str, object] = answer.json()["account"]
        return shown


@asynccontextmanager
async def fleet_needing_a_refresh(
    tmp_path: Path, postgres: str | None, env: dict[str, str], *, processes: int = 3
) -> AsyncIterator[Fleet]:
    """``processes`` started at once on a store (PostgreSQL at ``postgres``, else a SQLite file) whose
    one installed account's token is due."""
    amocrm = FakeAmoCRM(subdomain="shop", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=REDIRECT)
    async with serve_app(Slow(amocrm.app, HOLD, hold_answer=True)) as amocrm_url:
        data = base_config(
            tmp_path,
            oauth={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT},
            admin={"token": ADMIN},
            log_level="info",
        )
        data["store"] = {
            "url": fresh_postgres_schema(postgres) if postgres else "",
            "lease": LEASE,
            "path": str(tmp_path / "store.sqlite3"),
            "media_dir": str(tmp_path / "media"),
        }
        config_path = tmp_path / "amoconnect.toml"
        config_path.write_text(tomli_w.dumps(data))
        config = parse_config(data)
        tokens = amocrm.issue_tokens(ttl=60)  # due: well inside the hour before expiry
        async with opened_store(config.store) as store:
            registry = Registry(config, store)
            await registry.load()
            await registry.put_account(
                AccountRecord(
                    name="shop",
                    amojo_id=SHOP,
                    scope_id=f"{CHANNEL}_{SHOP}",
                    subdomain="shop",
                    rest_url=amocrm_url,
                    token=tokens.access_token,
                    refresh_token=tokens.refresh_token or "",
                    token_expires_at=time.time() + 60,
                )
            )
        procs: dict[int, Process] = {}

        async def start(port: int) -> None:
            procs[port] = await start_connector(config_path, port, env)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(processes):
                    tg.start_soon(start, free_port())
            yield Fleet(amocrm, config, config_path, procs)
        finally:
            with anyio.CancelScope(shield=True):
                for proc in procs.values():
                    await stop_connector(proc)


@pytest.mark.timeout(90)
async def test_three_processes_refresh_once_and_each_uses_the_winner_s_pair(tmp_path: Path, postgres: str) -> None:
    async with fleet_needing_a_refresh(tmp_path, postgres, {}) as fleet:
        await eventually(lambda: fleet.amocrm.grants == ["refresh_token"], within=30)
        account = await eventually(lambda: _refreshed(fleet), within=10)  # the stored pair is the newest
        # Every process has the winner's pair (its expiry and the token's last characters).
        for port in fleet.procs:
            await eventually(lambda port=port: _same(fleet, port, account), within=10)
        await anyio.sleep(3 * LEASE)  # the processes that found the lease held have looked again
        assert fleet.token_requests() == [200], "one refresh, made by one process"
        assert all(proc.returncode is None for proc in fleet.procs.values())


async def _refreshed(fleet: Fleet) -> AccountRecord | None:
    account = await fleet.stored()
    fresh = account.refresh_token in fleet.amocrm.refresh_tokens and account.token in fleet.amocrm.access_tokens
    return account if fresh and account.state == "active" else None


async def _same(fleet: Fleet, port: int, account: AccountRecord) -> bool:
    seen = await fleet.seen_by(port)
    return seen["token_expires_at"] == account.token_expires_at and str(seen["token"]).endswith(account.token[-4:])


@pytest.mark.timeout(90)
async def test_a_refresher_killed_after_amocrm_answered_leaves_the_account_needing_re_authorisation(
    tmp_path: Path, postgres: str
) -> None:
    """amoCRM's refresh tokens work once and the answer's pair died with the process: there is no way
    back but installing again. The next refresher's use of the old refresh token is refused, and the
    account is marked with the reason once: no loop, no other process harmed."""
    async with fleet_needing_a_refresh(tmp_path, postgres, {CRASH_AT: "oauth.answer"}) as fleet:
        await eventually(lambda: [p.returncode for p in fleet.procs.values()].count(-signal.SIGKILL) == 1, within=30)
        assert fleet.amocrm.grants == ["refresh_token"]  # amoCRM rotated: the new pair died unstored
        account = await eventually(lambda: _needing_reauth(fleet), within=20)
        assert "Token has been revoked" in (account.state_reason or "")
        assert "install the integration again" in (account.state_reason or "")
        assert fleet.token_requests() == [200, 401]
        await anyio.sleep(3 * LEASE)
        assert fleet.token_requests() == [200, 401], "nobody tries the refused token again"
        alive = [port for port, proc in fleet.procs.items() if proc.returncode is None]
        assert len(alive) == 2
        for port in alive:
            async with httpx.AsyncClient() as client:
                health = (await client.get(f"http://127.0.0.1:{port}/healthz")).json()
            assert health["accounts"]["needs_reauth"] == 1
            shown = await fleet.seen_by(port)
            assert shown["state"] == "needs_reauth" and shown["state_reason"] == account.state_reason


async def _needing_reauth(fleet: Fleet) -> AccountRecord | None:
    account = await fleet.stored()
    return account if account.state == "needs_reauth" else None


@pytest.mark.timeout(90)
async def test_one_process_on_sqlite_killed_after_amocrm_answered_finds_the_account_lost_when_it_starts_again(
    tmp_path: Path,
) -> None:
    async with fleet_needing_a_refresh(tmp_path, None, {CRASH_AT: "oauth.answer"}, processes=1) as fleet:
        ((port, proc),) = fleet.procs.items()
        await eventually(lambda: proc.returncode == -signal.SIGKILL, within=30)
        assert fleet.amocrm.grants == ["refresh_token"]
        assert (await fleet.stored()).state == "active"  # the new pair died with the process
        again = await start_connector(fleet.config_path, port)
        try:
            account = await eventually(lambda: _needing_reauth(fleet), within=20)
            assert "Token has been revoked" in (account.state_reason or "")
            await anyio.sleep(3 * LEASE)
            assert fleet.token_requests() == [200, 401], "refused once, not tried again"
            assert again.returncode is None
        finally:
            await stop_connector(again)
