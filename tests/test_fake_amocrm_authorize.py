"""The fake amoCRM's authorisation page: allow, deny, and what amoCRM refuses before asking anyone."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from amoconnect.testing.fake_amocrm import FakeAmoCRM

pytestmark = pytest.mark.anyio

REDIRECT = "https://connector.example/oauth/callback"


def client(fake: FakeAmoCRM) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url=fake.base_url)


async def test_allow_sends_the_browser_back_with_a_code_the_account_and_the_state() -> None:
    fake = FakeAmoCRM(subdomain="shop", client_id="cid", redirect_uri=REDIRECT)
    async with client(fake) as http:
        state = '"><script>alert(1)</script>'
        page = await http.get("/oauth", params={"client_id": "cid", "state": state, "mode": "post_message"})
        assert page.status_code == 200 and "shop.amocrm.ru" in page.text
        assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text  # the state is escaped
        assert fake.codes == set()  # nothing is issued before the admin answers
        form = {"client_id": "cid", "state": state, "mode": "post_message", "decision": "allow"}
        allowed = await http.post("/oauth", data=form)
    assert allowed.status_code == 302
    where = urlsplit(allowed.headers["location"])
    assert f"{where.scheme}://{where.netloc}{where.path}" == REDIRECT
    query = parse_qs(where.query)
    assert query == {
        "code": [next(iter(fake.codes))],
        "referer": ["shop.amocrm.ru"],
        "state": [state],
        "platform": ["1"],
        "client_id": ["cid"],
    }


async def test_deny_sends_the_browser_back_with_access_denied_and_no_code() -> None:
    fake = FakeAmoCRM(subdomain="shop", domain="kommo.com", client_id="cid", redirect_uri=REDIRECT)
    async with client(fake) as http:
        denied = await http.post("/oauth", data={"client_id": "cid", "state": "s1", "decision": "deny"})
        assert denied.status_code == 302
        assert parse_qs(urlsplit(denied.headers["location"]).query) == {
            "error": ["access_denied"],
            "state": ["s1"],
            "client_id": ["cid"],
        }
        assert fake.codes == set()
        assert (await http.post("/oauth", data={"client_id": "cid", "decision": "maybe"})).status_code == 400
    assert "platform=2" in fake.authorize()  # a Kommo account


@pytest.mark.parametrize(
    ("query", "status", "detail"),
    [
        ({}, 400, "client_id is required"),
        ({"client_id": "someone-else"}, 404, "unknown client_id"),
        ({"client_id": "cid", "redirect_uri": "https://evil.example/steal"}, 400, "redirect_uri does not match"),
        ({"client_id": "cid", "mode": "redirect"}, 400, "mode must be"),
    ],
)
async def test_what_amocrm_refuses_before_asking_the_admin(query: dict[str, str], status: int, detail: str) -> None:
    fake = FakeAmoCRM(client_id="cid", redirect_uri=REDIRECT)
    async with client(fake) as http:
        for answer in (
            await http.get("/oauth", params=query),
            await http.post("/oauth", data={**query, "decision": "allow"}),
        ):
            assert answer.status_code == status and detail in answer.json()["detail"]
            assert "location" not in answer.headers
    assert fake.codes == set()
