"""A connector with the console, its operator's token and two stored accounts, for the console's tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from rig import CHANNEL, Rig, rig

from amoconnect.store.registry import AccountRecord

TOKEN = "operator-token-0123456789abcdef0123456789"
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OTHER = "bbbbbbbb-cccc-dddd-eeee-ffffffffffff"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token of a page's forms."""
    found = _CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


@asynccontextmanager
async def console_rig(tmp_path: Path, **overrides: Any) -> AsyncIterator[Rig]:
    """The rig with ``[admin] token`` set and accounts ``shop`` (amocrm.ru) and ``other`` (kommo.com) stored."""
    async with rig(tmp_path, admin={"token": TOKEN}, **overrides) as r:
        for name, amojo_id, domain in (("shop", SHOP, "amocrm.ru"), ("other", OTHER, "kommo.com")):
            await r.runtime.registry.put_account(
                AccountRecord(
                    name=name,
                    amojo_id=amojo_id,
                    scope_id=f"{CHANNEL}_{amojo_id}",
                    subdomain=name,
                    domain=domain,
                    installed_at=1_700_000_000.0,
                )
            )
        yield r


def browser(r: Rig) -> httpx.AsyncClient:
    """A client of the app that keeps cookies, as a browser does (over https, so Secure cookies come back)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=r.runtime.app), base_url="https://amoconnect")


async def sign_in_operator(client: httpx.AsyncClient) -> None:
    form = await client.get("/console/sign-in")
    answer = await client.post("/console/sign-in", data={"csrf": csrf_of(form), "token": TOKEN})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/operator/accounts"


async def sign_in_account(r: Rig, client: httpx.AsyncClient, account: str) -> None:
    """Sign ``client`` in as ``account``'s admin, as the OAuth callback does."""
    from amoconnect.console.session import COOKIE

    codec = r.runtime.console_codec
    session = codec.signed_in("account", account, codec.fresh())
    client.cookies.set(COOKIE, codec.dumps(session))
