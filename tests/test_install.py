"""Installing the integration from amoCRM: the authorisation step, the callback, the strict host check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from rig import CHANNEL, MESSENGERS, SECRET, base_config, message

from amoconnect.config import parse_config
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.server.oauth import account_host, disconnect_signature
from amoconnect.store.registry import SourceRecord
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.kit import eventually

pytestmark = pytest.mark.anyio

CLIENT_ID = "01234567-89ab-cdef-0123-456789abcdef"
CLIENT_SECRET = "integration-secret-0123456789abcdefghijklmnopqrstuv"
REDIRECT = "http://amoconnect/oauth/callback"


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("shop.amocrm.ru", ("shop", "amocrm.ru")),
        ("Shop.AmoCRM.com", ("shop", "amocrm.com")),
        ("my-co.kommo.com", ("my-co", "kommo.com")),
        ("https://shop.kommo.com", ("shop", "kommo.com")),
        ("https://shop.kommo.com/", ("shop", "kommo.com")),
        ("shop.amocrm.ru.evil.com", None),
        ("evilamocrm.ru", None),
        ("amocrm.ru", None),
        ("shop.evil-amocrm.ru", None),
        ("a.b.amocrm.ru", None),
        ("shop.amocrm.ru:8443", None),
        ("https://shop.amocrm.ru:443", None),
        ("https://user@shop.amocrm.ru", None),
        ("https://shop.amocrm.ru@evil.com", None),
        ("evil.com#.amocrm.ru", None),
        ("http://shop.amocrm.ru", None),
        ("https://shop.amocrm.ru/path", None),
        ("https://shop.amocrm.ru?x=.amocrm.ru", None),
        ("127.0.0.1", None),
        ("[::1]", None),
        ("169.254.169.254", None),
        ("-shop.amocrm.ru", None),
        ("shop-.amocrm.ru", None),
        ("shop.amocrm.ru\n", ("shop", "amocrm.ru")),
        ("shop.amocrm.ru\nevil.com", None),
        ("shop.аmocrm.ru", None),  # a Cyrillic "а"
        ("", None),
    ],
)
def test_only_an_amocrm_or_kommo_account_host_is_accepted(referer: str, expected: tuple[str, str] | None) -> None:
    assert account_host(referer) == expected


@asynccontextmanager
async def installing(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Runtime, FakeAmoCRM, FakeAmojo, httpx.AsyncClient]]:
    amocrm = FakeAmoCRM(subdomain="shop", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=REDIRECT)
    amojo = FakeAmojo(CHANNEL, SECRET)
    oauth = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT}
    config = parse_config(base_config(tmp_path, oauth=oauth, **overrides))
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo.app), base_url="http://amojo.test") as amojo_http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as amocrm_http,
    ):
        pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[MESSENGERS])
        runtime = Runtime(config, plugin_manager=pm, amojo_http=amojo_http, amocrm_http=amocrm_http)
        async with runtime:
            amojo.webhook_client = runtime.client
            yield runtime, amocrm, amojo, amocrm_http


async def allow(amocrm_http: httpx.AsyncClient, state: str | None = None) -> str:
    """The admin presses "allow" on amoCRM's page (from the marketplace: no ``state``): where the browser is sent."""
    params = {"client_id": CLIENT_ID, **({"state": state} if state is not None else {})}
    page = await amocrm_http.get("https://shop.amocrm.ru/oauth", params=params)
    assert page.status_code == 200 and 'value="allow"' in page.text
    allowed = await amocrm_http.post("https://shop.amocrm.ru/oauth", data={**params, "decision": "allow"})
    assert allowed.status_code == 302
    location = allowed.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return location.removeprefix("http://amoconnect")


async def test_install_then_a_bot_then_the_first_message_then_uninstall_then_install_again(tmp_path: Path) -> None:
    async with installing(tmp_path) as (runtime, amocrm, amojo, amocrm_http):
        callback = await allow(amocrm_http)
        answer = await runtime.client.get(callback)
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/console/accounts/shop"  # signed in to the console
        account = runtime.registry.account("shop")
        assert account is not None and account.state == "active" and not account.fixed
        assert (account.amojo_id, account.amocrm_id, account.domain) == (amocrm.amojo_id, 30000001, "amocrm.ru")
        assert account.scope_id == f"{CHANNEL}_{amocrm.amojo_id}"
        assert account.token in amocrm.access_tokens and account.refresh_token in amocrm.refresh_tokens
        assert amocrm.grants == ["authorization_code"]
        assert amojo.connections[account.scope_id].connected
        # The account adds a bot; the first message crosses.
        await runtime.registry.put_source(
            SourceRecord(name="shopbot", plugin="loopback", account="shop", external_id="shopbot")
        )
        import msgspec
        from messengers.loopback import SIGNATURE_HEADER, sign

        body = msgspec.json.encode([message("c1", "1", "first")])
        sent = await runtime.client.post(
            "/hooks/loopback/shopbot", content=body, headers={SIGNATURE_HEADER: sign(body)}
        )
        assert sent.status_code == 200
        await eventually(lambda: amojo.messages_in("shopbot:c1", scope_id=account.scope_id))
        # The admin turns the integration off: amoCRM calls the disconnect hook.
        amocrm_id = str(account.amocrm_id)
        signature = disconnect_signature(CLIENT_SECRET, CLIENT_ID, amocrm_id)
        params = {"account_id": amocrm_id, "client_uuid": CLIENT_ID, "signature": signature}
        gone = await runtime.client.get("/oauth/disconnect", params=params)
        assert (gone.status_code, gone.json()["known"]) == (200, True)
        assert runtime.routing.get("shopbot") is None
        assert not amojo.connections[account.scope_id].connected
        after = await runtime.client.post(
            "/hooks/loopback/shopbot", content=body, headers={SIGNATURE_HEADER: sign(body)}
        )
        assert after.status_code == 404
        # Installing again brings the account back, with its bot.
        assert (await runtime.client.get(await allow(amocrm_http))).status_code == 303
        back = runtime.registry.account("shop")
        assert back is not None and back.state == "active"
        assert runtime.routing.get("shopbot") is not None


async def test_forged_replayed_or_foreign_codes_record_nothing(tmp_path: Path) -> None:
    async with installing(tmp_path) as (runtime, amocrm, _, amocrm_http):
        forged = await runtime.client.get("/oauth/callback", params={"code": "made-up", "referer": "shop.amocrm.ru"})
        assert (forged.status_code, forged.json()["error"]) == (400, "install_failed")
        callback = await allow(amocrm_http)
        assert (await runtime.client.get(callback)).status_code == 303
        replayed = await runtime.client.get(callback)  # a code works once
        assert replayed.status_code == 400
        code = amocrm.issue_code()
        for referer in ("shop.amocrm.ru.evil.com", "127.0.0.1", "https://x@shop.amocrm.ru", "shop.amocrm.ru:81"):
            foreign = await runtime.client.get("/oauth/callback", params={"code": code, "referer": referer})
            assert foreign.status_code == 400 and "not an amoCRM or Kommo account's host" in foreign.json()["detail"]
        assert code in amocrm.codes  # never sent anywhere
        missing = await runtime.client.get("/oauth/callback", params={"referer": "shop.amocrm.ru"})
        assert missing.status_code == 400
        assert [a.name for a in runtime.registry.accounts()] == ["main", "shop"]
        assert amocrm.grants == ["authorization_code"]
