"""Signing an account's admin in to the console through amoCRM: the install itself, and "sign in with
amoCRM" with its ``state``, against the fake amoCRM's authorisation page."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from console_rig import csrf_of
from test_install import CLIENT_ID, allow, installing

from amoconnect.console.session import COOKIE
from amoconnect.runtime import Runtime

pytestmark = pytest.mark.anyio

AUTHORIZE = "https://shop.amocrm.ru/oauth"


def browser(runtime: Runtime) -> httpx.AsyncClient:
    assert runtime.app is not None
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.app), base_url="http://amoconnect")


async def test_the_install_signs_the_admin_in_to_that_account_s_page(tmp_path: Path) -> None:
    async with installing(tmp_path) as (runtime, _, _, amocrm_http), browser(runtime) as client:
        landed = await client.get(await allow(amocrm_http))
        assert landed.status_code == 303 and landed.headers["location"] == "/console/accounts/shop"
        page = await client.get("/console/accounts/shop")
        assert page.status_code == 200 and "shop.amocrm.ru" in page.text
        assert (await client.get("/console/accounts/main")).status_code == 403


async def test_sign_in_with_amocrm_checks_the_state_it_started_with(tmp_path: Path) -> None:
    async with (
        installing(tmp_path, console={"authorize_url": AUTHORIZE}) as (runtime, amocrm, _, amocrm_http),
        browser(runtime) as client,
    ):
        form = await client.get("/console/sign-in")
        assert "/console/sign-in/amocrm" in form.text
        started = await client.post("/console/sign-in/amocrm", data={"csrf": csrf_of(form), "domain": "amocrm.ru"})
        assert started.status_code == 303
        where = urlsplit(started.headers["location"])
        assert f"{where.scheme}://{where.netloc}{where.path}" == AUTHORIZE
        query = parse_qs(where.query)
        assert query["client_id"] == [CLIENT_ID] and query["mode"] == ["post_message"]
        state = query["state"][0]
        assert len(state) >= 24
        # A callback with another state, or none, is refused and installs nothing.
        for forged in (await allow(amocrm_http, "forged"), await allow(amocrm_http)):
            refused = await client.get(forged)
            assert (refused.status_code, refused.json()["error"]) == (400, "bad_state")
        assert runtime.registry.account("shop") is None and amocrm.grants == []
        # amoCRM sends the browser back with the state: signed in as that account's admin.
        callback = await allow(amocrm_http, state)
        landed = await client.get(callback)
        assert landed.headers["location"] == "/console/accounts/shop"
        assert (await client.get("/console/accounts/shop")).status_code == 200
        # The state is spent: the same callback again (with a fresh code) is refused.
        replayed = await client.get(await allow(amocrm_http, state))
        assert (replayed.status_code, replayed.json()["error"]) == (400, "bad_state")
        # Another browser's callback with this state (no flow of its own) is refused too.
        async with browser(runtime) as stranger:
            assert (await stranger.get(await allow(amocrm_http, state))).status_code == 400


async def test_a_request_begun_before_a_sign_in_does_not_put_the_session_from_before_it_back(tmp_path: Path) -> None:
    """A page polls while its visitor starts a sign-in (the sandbox's page polls its state every 400 ms):
    a poll answered after the sign-in began must not set the cookie of the session it brought, or the
    sign-in's ``state`` is lost and amoCRM's callback refused. A response sets the cookie only when the
    session changed."""
    async with (
        installing(tmp_path, console={"authorize_url": AUTHORIZE}) as (runtime, _, _, amocrm_http),
        browser(runtime) as client,
    ):
        form = await client.get("/console/sign-in")
        assert COOKIE in form.cookies  # a new visitor's session
        before = client.cookies[COOKIE]
        assert "set-cookie" not in (await client.get("/console/sign-in")).headers  # the same session
        started = await client.post("/console/sign-in/amocrm", data={"csrf": csrf_of(form), "domain": "amocrm.ru"})
        assert COOKIE in started.cookies  # now with the sign-in's state
        state = parse_qs(urlsplit(started.headers["location"]).query)["state"][0]
        async with browser(runtime) as late:
            stale = await late.get("/console/sign-in", headers={"cookie": f"{COOKIE}={before}"})
        assert stale.status_code == 200 and "set-cookie" not in stale.headers
        landed = await client.get(await allow(amocrm_http, state))
        assert landed.headers["location"] == "/console/accounts/shop"


async def test_sign_in_with_amocrm_is_off_without_the_integration(tmp_path: Path) -> None:
    from console_rig import browser as console_browser
    from console_rig import console_rig

    async with console_rig(tmp_path) as r, console_browser(r) as client:
        form = await client.get("/console/sign-in")
        assert "/console/sign-in/amocrm" not in form.text
        off = await client.post("/console/sign-in/amocrm", data={"csrf": csrf_of(form), "domain": "amocrm.ru"})
        assert off.status_code == 404
