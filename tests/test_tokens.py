"""Installed accounts' OAuth tokens: refreshed before they expire, once across processes, the new pair stored
before use, a refused refresh token marking the account for re-authorisation."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
from processes import Slow
from rig import CHANNEL, SECRET, base_config, eventually, message, rig

from amoconnect.amojo import wire
from amoconnect.config import OAuthConfig, parse_config
from amoconnect.errors import AmoCRMError
from amoconnect.registry import Registry
from amoconnect.store import build_store
from amoconnect.store.base import Store
from amoconnect.store.registry import AccountRecord, SourceRecord
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.stores import postgres_url
from amoconnect.tokens import REFRESH_BEFORE, TokenKeeper

pytestmark = pytest.mark.anyio

OAUTH = OAuthConfig(client_id="client-1", client_secret="secret-" + "x" * 30, redirect_uri="http://c/oauth/callback")
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def fake() -> FakeAmoCRM:
    return FakeAmoCRM(
        subdomain="shop", client_id=OAUTH.client_id, client_secret=OAUTH.client_secret, redirect_uri=OAUTH.redirect_uri
    )


async def install(registry: Registry, amocrm: FakeAmoCRM, ttl: int) -> AccountRecord:
    tokens = amocrm.issue_tokens(ttl=ttl)
    record = AccountRecord(
        name="shop",
        amojo_id=SHOP,
        scope_id=f"{CHANNEL}_{SHOP}",
        subdomain="shop",
        rest_url="https://shop.amocrm.ru",
        token=tokens.access_token,
        refresh_token=tokens.refresh_token or "",
        token_expires_at=time.time() + ttl,
    )
    await registry.put_account(record)
    return record


async def stores(tmp_path: Path, count: int) -> list[Store]:
    """``count`` stores on one database: processes of a fleet (PostgreSQL), or one process's (SQLite)."""
    config = parse_config(base_config(tmp_path))
    opened = []
    for _ in range(count):
        store = build_store(config.store)
        await store.open()
        opened.append(store)
    return opened


async def test_a_token_due_is_refreshed_and_the_new_pair_stored(tmp_path: Path) -> None:
    amocrm = fake()
    (store,) = await stores(tmp_path, 1)
    try:
        config = parse_config(base_config(tmp_path))
        registry = Registry(config, store)
        await registry.load()
        old = await install(registry, amocrm, ttl=int(REFRESH_BEFORE) + 600)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
            keeper = TokenKeeper(registry, store, OAUTH, http=http)
            assert await keeper.refresh_due() == []  # not due yet
            await install(registry, amocrm, ttl=60)
            old = registry.account("shop")  # type: ignore[assignment]
            assert await keeper.refresh_due() == ["shop"]
        new = registry.account("shop")
        assert new is not None and old is not None
        assert new.token != old.token and new.refresh_token != old.refresh_token
        assert new.token in amocrm.access_tokens and new.refresh_token in amocrm.refresh_tokens
        assert old.refresh_token not in amocrm.refresh_tokens  # rotated: the old one is gone
        assert new.token_expires_at is not None and new.token_expires_at > time.time() + REFRESH_BEFORE
        # Another reader of the store has the stored pair.
        other = Registry(config, store)
        await other.load()
        assert other.account("shop") == new
    finally:
        await store.close()


@pytest.mark.skipif(postgres_url() is None, reason="processes of a fleet share a PostgreSQL store (--postgres)")
async def test_three_processes_racing_refresh_once_and_all_use_the_winner_s_pair(tmp_path: Path) -> None:
    amocrm = fake()
    opened = await stores(tmp_path, 3)
    try:
        config = parse_config(base_config(tmp_path))
        registries = [Registry(config, s) for s in opened]
        for registry in registries:
            await registry.load()
        await install(registries[0], amocrm, ttl=60)
        for registry in registries:
            await registry.refresh()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
            keepers = [TokenKeeper(r, s, OAUTH, http=http) for r, s in zip(registries, opened, strict=True)]
            async with anyio.create_task_group() as tg:
                for keeper in keepers:
                    tg.start_soon(keeper.refresh_due)
                    tg.start_soon(keeper.refresh_due)
        assert amocrm.grants == ["refresh_token"]  # one refresh, whoever won
        for registry in registries:
            await registry.refresh()
        pairs = {(r.account("shop").token, r.account("shop").refresh_token) for r in registries}  # type: ignore[union-attr]
        assert len(pairs) == 1
        ((token, refresh),) = pairs
        assert token in amocrm.access_tokens and refresh in amocrm.refresh_tokens
    finally:
        for store in opened:
            await store.close()


async def test_a_refresh_that_loses_the_race_uses_the_winner_s_pair(tmp_path: Path) -> None:
    """A keeper whose refresh token was just rotated by another (it read the store before the winner
    wrote) is refused by amoCRM: it takes the winner's pair instead of marking the account."""
    amocrm = fake()
    (store,) = await stores(tmp_path, 1)
    try:
        config = parse_config(base_config(tmp_path))
        loser, winner = Registry(config, store), Registry(config, store)
        await loser.load()
        await install(loser, amocrm, ttl=60)
        await winner.load()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
            assert await TokenKeeper(winner, store, OAUTH, http=http).refresh_due() == ["shop"]
            slow = TokenKeeper(loser, store, OAUTH, http=http)
            stale = loser.account("shop")
            assert stale is not None
            assert await slow._refresh(stale) is False  # as if it had read the store just before the winner wrote
        account = loser.account("shop")
        assert account is not None and account.state == "active"
        assert account.refresh_token in amocrm.refresh_tokens and account == winner.account("shop")
    finally:
        await store.close()


async def test_a_stop_while_amocrm_answers_a_refresh_still_stores_the_new_pair(tmp_path: Path) -> None:
    """A rolling restart's SIGTERM cancels the keeper while amoCRM's answer is on its way: the answer is
    still read and stored, since amoCRM already rotated and the old refresh token no longer works."""
    amocrm = fake()
    held = Slow(amocrm.app, 0.3, hold_answer=True)
    (store,) = await stores(tmp_path, 1)
    try:
        registry = Registry(parse_config(base_config(tmp_path)), store)
        await registry.load()
        await install(registry, amocrm, ttl=60)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=held)) as http:
            keeper = TokenKeeper(registry, store, OAUTH, http=http)
            async with anyio.create_task_group() as tg:
                tg.start_soon(keeper.run)
                await eventually(lambda: held.in_flight == 1)  # amoCRM rotated; its answer is held back
                tg.cancel_scope.cancel()
        assert amocrm.grants == ["refresh_token"]
        account = registry.account("shop")
        assert account is not None and account.refresh_token in amocrm.refresh_tokens
        assert account.token in amocrm.access_tokens
    finally:
        await store.close()


async def test_a_refresh_amocrm_fails_is_an_error_of_that_round_and_the_next_one_refreshes(tmp_path: Path) -> None:
    amocrm = fake()
    (store,) = await stores(tmp_path, 1)
    try:
        registry = Registry(parse_config(base_config(tmp_path)), store)
        await registry.load()
        await install(registry, amocrm, ttl=60)
        old = registry.account("shop")
        amocrm.fail_next(1, 403, path="/oauth2/access_token")  # as amoCRM answers an IP it banned
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
            keeper = TokenKeeper(registry, store, OAUTH, http=http)
            with pytest.raises(AmoCRMError) as info:  # as is: ``run`` logs it and tries again later
                await keeper.refresh_due()
            assert info.value.status == 403
            assert registry.account("shop") == old  # nothing changed, nothing marked
            assert await keeper.refresh_due() == ["shop"]
    finally:
        await store.close()


async def test_a_revoked_refresh_token_marks_the_account_for_re_authorisation_once(tmp_path: Path) -> None:
    amocrm = fake()
    (store,) = await stores(tmp_path, 1)
    try:
        registry = Registry(parse_config(base_config(tmp_path)), store)
        await registry.load()
        await install(registry, amocrm, ttl=60)
        amocrm.refresh_tokens.clear()  # revoked (the admin turned the integration off, or a lost pair)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
            keeper = TokenKeeper(registry, store, OAUTH, http=http)
            assert await keeper.refresh_due() == []
            account = registry.account("shop")
            assert account is not None and account.state == "needs_reauth" and account.active
            assert "Token has been revoked" in (account.state_reason or "")  # amoCRM's words, and what to do
            assert "install the integration again" in (account.state_reason or "")
            requests = len(amocrm.requests)
            assert await keeper.refresh_due() == []  # no retrying forever
            assert len(amocrm.requests) == requests
    finally:
        await store.close()


async def test_an_account_needing_re_authorisation_shows_in_healthz_and_metrics(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await install(r.runtime.registry, fake(), ttl=60)
        await r.runtime.registry.set_account_state("shop", "needs_reauth")
        health = (await r.client.get("/healthz")).json()
        assert health["accounts"] == {"active": 1, "needs_reauth": 1, "disconnected": 0}
        text = (await r.client.get("/metrics")).text
        assert 'amoconnect_accounts{state="needs_reauth"} 1.0' in text
        assert 'amoconnect_accounts{state="active"} 1.0' in text


def _manager_answer(text: str) -> tuple[bytes, dict[str, str]]:
    """A signed amoCRM webhook: a manager's answer in the shop's chat with client c1."""
    hook = wire.MessageHook(
        account_id=SHOP,
        time=int(time.time()),
        message=wire.HookMessage(
            conversation=wire.Conversation(id="amo-chat-1", client_id="bot2:c1"),
            source=wire.Source(external_id="bot2"),
            sender=wire.HookSender(id="manager-1", name="Manager"),
            receiver=wire.HookReceiver(id="client-1", client_id="bot2:c1", name="Client"),
            timestamp=int(time.time()),
            msec_timestamp=int(time.time() * 1000),
            message=wire.HookMessageBody(id=f"m-{text}", type="text", text=text),
        ),
    )
    body = msgspec.json.encode(hook)
    signature = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    return body, {"X-Signature": signature, "Content-Type": "application/json"}


async def test_tokens_revoked_mid_flow_leave_the_messages_flowing_and_the_account_waiting_for_an_install(
    tmp_path: Path,
) -> None:
    """The account's admin revokes the integration's access in amoCRM while its chats are busy: the
    refresh is refused once, the account needs re-authorisation with the reason, and its messages
    keep flowing both ways (they need only the channel)."""
    amocrm = fake()
    async with rig(tmp_path) as r, httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as http:
        registry = r.runtime.registry
        await install(registry, amocrm, ttl=60)
        r.amojo.connect(SHOP, webhook_url="http://amoconnect/amocrm/:scope_id")
        scope = f"{CHANNEL}_{SHOP}"
        bot = {"secret": "bot2-secret"}
        await registry.put_source(
            SourceRecord(name="bot2", account="shop", plugin="loopback", external_id="bot2", settings=bot)
        )
        assert (await r.inbound(message("c1", "1", "before"), instance="bot2", secret="bot2-secret")).status_code == 200
        await eventually(lambda: r.amojo.messages_in("bot2:c1", scope_id=scope))
        amocrm.access_tokens.clear()  # revoked: the pair no longer works
        amocrm.refresh_tokens.clear()
        keeper = TokenKeeper(registry, r.runtime.store, OAUTH, http=http)
        assert await keeper.refresh_due() == []
        account = registry.account("shop")
        assert account is not None and account.state == "needs_reauth"
        assert "Token has been revoked" in (account.state_reason or "")
        assert (await keeper.refresh_due(), len(amocrm.requests_to("/oauth2/access_token"))) == ([], 1)
        assert (await r.inbound(message("c1", "2", "after"), instance="bot2", secret="bot2-secret")).status_code == 200
        await eventually(
            lambda: [m.content.text for m in r.amojo.messages_in("bot2:c1", scope_id=scope)][-1:] == ["after"]
        )
        body, headers = _manager_answer("still here")
        assert (await r.client.post(f"/amocrm/{scope}", content=body, headers=headers)).status_code == 200
        (sent,) = await eventually(lambda: r.adapter("bot2").sent)
        assert sent.text == "still here"
        assert (await r.client.get("/healthz")).json()["accounts"]["needs_reauth"] == 1
