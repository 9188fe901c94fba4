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
    tmp_path: Path, *, unreachable: bool = False, **overrides: Any
) -> AsyncIterator[tuple[Runtime, FakeAmoCRM, FakeAmojo, httpx.AsyncClient]]:
    """A runtime with ``[oauth]`` and the fake amoCRM (``unreachable``: every connection to amoCRM fails)."""
    amocrm = FakeAmoCRM(subdomain="shop", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=REDIRECT)
    amojo = FakeAmojo(CHANNEL, SECRET)
    oauth = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uri": REDIRECT}
    config = parse_config(base_config(tmp_path, oauth=oauth, **overrides))
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo.app), base_url="http://amojo.test") as amojo_http,
        httpx.AsyncClient(transport=_down if unreachable else httpx.ASGITransport(app=amocrm.app)) as amocrm_http,
    ):
        pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[MESSENGERS])
        runtime = Runtime(config, plugin_manager=pm, amojo_http=amojo_http, amocrm_http=amocrm_http)
        async with runtime:
            amojo.webhook_client = runtime.client
            yield runtime, amocrm, amojo, amocrm_http


def _refuse_connections(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


_down = httpx.MockTransport(_refuse_connections)


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


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def deny(amocrm_http: httpx.AsyncClient, state: str | None = None) -> str:
    """The admin presses "Deny" on amoCRM's page: where the browser is sent."""
    params = {"client_id": CLIENT_ID, **({"state": state} if state is not None else {})}
    denied = await amocrm_http.post("https://shop.amocrm.ru/oauth", data={**params, "decision": "deny"})
    assert denied.status_code == 302
    return denied.headers["location"].removeprefix("http://amoconnect")


async def test_deny_on_amocrms_page_answers_a_page_saying_the_installation_was_cancelled(tmp_path: Path) -> None:
    async with installing(tmp_path) as (runtime, amocrm, _, amocrm_http):
        callback = await deny(amocrm_http)
        assert "error=access_denied" in callback and "code=" not in callback
        page = await runtime.client.get(callback, headers=BROWSER)
        # A decision, not a failed request: 200 (a browser shows the page either way, and 4xx would
        # read as a fault in the access log, the metrics and the browser's console).
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<h1>Installation cancelled</h1>" in page.text
        assert "Settings → Integrations" in page.text and "&#34;Allow&#34;" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        russian = await runtime.client.get(callback, headers={**BROWSER, "Accept-Language": "ru-RU,ru;q=0.9"})
        assert (russian.status_code, "<h1>Установка отменена</h1>" in russian.text) == (200, True)
        scripted = await runtime.client.get(callback)  # not a browser: JSON
        assert (scripted.status_code, scripted.json()["error"]) == (200, "access_denied")
        assert [a.name for a in runtime.registry.accounts()] == ["main"] and amocrm.grants == []
        # Pressing "Allow" afterwards installs as usual.
        assert (await runtime.client.get(await allow(amocrm_http), headers=BROWSER)).status_code == 303
        assert runtime.registry.account("shop") is not None


@pytest.mark.parametrize(
    ("query", "status", "heading"),
    [
        ({"error": "server_error", "referer": "shop.kommo.com"}, 400, "amoCRM did not authorise the installation"),
        ({"referer": "shop.kommo.com"}, 400, "This installation link is incomplete"),
        (
            {"code": "CODE", "referer": "shop.kommo.com", "state": "forged"},
            400,
            "This sign-in was not started in this browser",
        ),
        ({"code": "CODE", "referer": "shop.amocrm.ru.evil.com"}, 400, "This link does not come from an amoCRM account"),
        ({"code": "made-up", "referer": "shop.kommo.com"}, 400, "amoCRM refused the authorisation"),
    ],
)
async def test_every_other_refused_callback_is_a_readable_page_for_a_browser(
    tmp_path: Path, query: dict[str, str], status: int, heading: str
) -> None:
    async with installing(tmp_path) as (runtime, amocrm, _, _):
        code = amocrm.issue_code()
        query = {k: code if v == "CODE" else v for k, v in query.items()}
        page = await runtime.client.get("/oauth/callback", params=query, headers=BROWSER)
        assert (page.status_code, page.headers["content-type"]) == (status, "text/html; charset=utf-8")
        assert f"<h1>{heading}</h1>" in page.text and "Traceback" not in page.text
        assert 'href="/console/sign-in"' in page.text  # how to try again: "sign in with amoCRM" runs the flow anew
        assert runtime.registry.account("shop") is None and amocrm.grants == []
        assert code in amocrm.codes  # never exchanged


async def test_a_refusal_page_escapes_what_the_callback_carried_and_speaks_the_accounts_language(
    tmp_path: Path,
) -> None:
    async with installing(tmp_path) as (runtime, _, _, _):
        markup = "<script>alert(1)</script>"
        page = await runtime.client.get(
            "/oauth/callback", params={"error": markup, "referer": "shop.amocrm.ru"}, headers=BROWSER
        )
        assert page.status_code == 400 and markup not in page.text and "&lt;script&gt;" in page.text
        assert "<h1>amoCRM не разрешил установку</h1>" in page.text  # an amocrm.ru account reads Russian
        host = await runtime.client.get("/oauth/callback", params={"code": "c", "referer": markup}, headers=BROWSER)
        assert host.status_code == 400 and markup not in host.text


async def test_amocrm_unreachable_during_the_install_is_a_page_not_a_server_error(tmp_path: Path) -> None:
    async with installing(tmp_path, unreachable=True, http={"attempts": 1}) as (runtime, _, _, _):
        params = {"code": "c", "referer": "shop.kommo.com"}
        page = await runtime.client.get("/oauth/callback", params=params, headers=BROWSER)
        assert page.status_code == 502 and "<h1>amoCRM could not be reached</h1>" in page.text
        scripted = await runtime.client.get("/oauth/callback", params=params)
        assert (scripted.status_code, scripted.json()["error"]) == (502, "amocrm_unreachable")
        assert runtime.registry.account("shop") is None
