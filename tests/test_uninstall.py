"""amoCRM's disconnect hook: an account uninstalls the integration, and nothing it had queued is lost silently."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import msgspec
import pytest
from rig import CHANNEL, SECRET, Rig, message, rig

from amoconnect.core import AMOCRM
from amoconnect.server.oauth import disconnect_signature
from amoconnect.store.base import NewJob
from amoconnect.store.registry import AccountRecord, SourceRecord

pytestmark = pytest.mark.anyio

CLIENT_ID = "01234567-89ab-cdef-0123-456789abcdef"
CLIENT_SECRET = "integration-secret-0123456789abcdefghijklmnopqrstuv"
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SHOP_SCOPE = f"{CHANNEL}_{SHOP}"
AMOCRM_ID = 31337


def signed(account_id: str = str(AMOCRM_ID), client_uuid: str = CLIENT_ID) -> dict[str, str]:
    return {
        "account_id": account_id,
        "client_uuid": client_uuid,
        "signature": disconnect_signature(CLIENT_SECRET, client_uuid, account_id),
    }


async def installed(r: Rig) -> None:
    registry = r.runtime.registry
    await registry.put_account(AccountRecord(name="shop", amojo_id=SHOP, scope_id=SHOP_SCOPE, amocrm_id=AMOCRM_ID))
    await registry.put_source(
        SourceRecord(name="bot2", plugin="loopback", account="shop", external_id="bot2", settings={"secret": "s" * 8})
    )
    r.amojo.connect(SHOP, webhook_url="http://amoconnect/amocrm/:scope_id")


def test_the_signature_is_amocrm_s_hmac_sha256_of_client_uuid_bar_account_id() -> None:
    # hash_hmac('sha256', $clientId . '|' . $accountId, $clientSecret), amoCRM's OAuth "step by step" page
    expected = hmac.new(b"secret", b"client|42", hashlib.sha256).hexdigest()
    assert disconnect_signature("secret", "client", "42") == expected


async def test_an_uninstall_disconnects_unregisters_and_dead_letters_what_was_queued(tmp_path: Path) -> None:
    async with rig(tmp_path, oauth={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}) as r:
        await installed(r)
        adapter = r.adapter("bot2")
        store = r.runtime.store
        # Two jobs of the account wait (due in an hour); one of the file's account must not be touched.
        later = [NewJob(AMOCRM, f"{SHOP_SCOPE}|chat{i}", b"{}", SHOP_SCOPE, delay=3600) for i in range(2)]
        await store.enqueue(later)
        await store.enqueue([NewJob(AMOCRM, "other|chat", b"{}", "other-scope", delay=3600)])
        answer = await r.client.get("/oauth/disconnect", params=signed())
        assert answer.status_code == 200, answer.text
        assert answer.json()["known"] is True
        account = r.runtime.registry.account("shop")
        assert account is not None and account.state == "disconnected"
        assert adapter.unregistered and r.runtime.routing.get("bot2") is None
        assert not r.amojo.connections[SHOP_SCOPE].connected  # the channel left the account in amojo
        dead = await store.dead_letters()
        assert sorted(d.scope_id for d in dead) == [SHOP_SCOPE, SHOP_SCOPE]
        assert all("uninstalled the integration" in d.error for d in dead)
        assert (await store.counts())["queued"] == 1
        # Its further webhooks are refused.
        body = msgspec.json.encode({"account_id": SHOP, "time": 1, "message": {}})
        signature = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        refused = await r.client.post(f"/amocrm/{SHOP_SCOPE}", content=body, headers={"X-Signature": signature})
        assert (refused.status_code, refused.json()["error"]) == (410, "disconnected")
        # A replay changes nothing.
        again = await r.client.get("/oauth/disconnect", params=signed())
        assert again.status_code == 200
        assert [s["outcome"] for s in again.json()["steps"]] == ["skipped"]
        assert len(await store.dead_letters()) == 2
        # The file's account and sources serve on.
        assert (await r.inbound(message("c1", "1"))).status_code == 200


async def test_a_wrong_or_missing_signature_changes_nothing(tmp_path: Path) -> None:
    async with rig(tmp_path, oauth={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}) as r:
        await installed(r)
        forged = {**signed(), "signature": disconnect_signature("not-the-secret", CLIENT_ID, str(AMOCRM_ID))}
        other_account = {**signed(), "account_id": "424242"}  # a signature of one account used for another
        other_client = signed(client_uuid="ffffffff-89ab-cdef-0123-456789abcdef")
        for params in (forged, other_account, other_client):
            answer = await r.client.get("/oauth/disconnect", params=params)
            assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
        for missing in ("account_id", "client_uuid", "signature"):
            params = {k: v for k, v in signed().items() if k != missing}
            assert (await r.client.get("/oauth/disconnect", params=params)).status_code == 400
        unknown = await r.client.get("/oauth/disconnect", params=signed(account_id="777"))
        assert (unknown.status_code, unknown.json()["known"]) == (200, False)
        account = r.runtime.registry.account("shop")
        assert account is not None and account.state == "active"
        assert r.runtime.routing.get("bot2") is not None


async def test_without_oauth_keys_the_hook_is_off(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert (await r.client.get("/oauth/disconnect", params=signed())).status_code == 404
