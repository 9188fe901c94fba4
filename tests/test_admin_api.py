"""The operator's admin API: accounts and sources at run time, step by step, against the fake amoCRM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from rig import CHANNEL, Rig, message, rig

from amoconnect.store.registry import AccountRecord, SourceRecord
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.kit import eventually
from amoconnect.testing.servers import serve_app

pytestmark = pytest.mark.anyio

TOKEN = "operator-token-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHOP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
BOT_SECRET = "bot-secret-that-must-never-show-in-full"


@asynccontextmanager
async def admin_rig(tmp_path: Path, *, token: str = TOKEN) -> AsyncIterator[tuple[Rig, FakeAmoCRM]]:
    fake = FakeAmoCRM()
    rest_token = fake.add_long_lived_token()
    async with serve_app(fake.app) as url, rig(tmp_path, admin={"token": token}) as r:
        for name, amojo_id in (("shop", SHOP), ("other", "bbbbbbbb-cccc-dddd-eeee-ffffffffffff")):
            await r.runtime.registry.put_account(
                AccountRecord(
                    name=name, amojo_id=amojo_id, scope_id=f"{CHANNEL}_{amojo_id}", rest_url=url, token=rest_token
                )
            )
        r.amojo.connect(SHOP, webhook_url="http://amoconnect/amocrm/:scope_id")
        yield r, fake


def bot(name: str = "bot2", **fields: Any) -> dict[str, Any]:
    return {"name": name, "plugin": "loopback", "settings": {"secret": BOT_SECRET}, **fields}


async def add(client: httpx.AsyncClient, spec: dict[str, Any], account: str = "shop") -> httpx.Response:
    return await client.post(f"/admin/api/accounts/{account}/sources", json=spec, headers=AUTH)


async def test_every_route_wants_the_operator_s_token_and_the_document_says_so(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            refused = await r.client.get("/admin/api/accounts", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
        listed = await r.client.get("/admin/api/accounts", headers=AUTH)
        assert listed.status_code == 200
        assert {a["name"]: a["fixed"] for a in listed.json()["accounts"]} == {
            "main": True,
            "shop": False,
            "other": False,
        }
        assert all(a["token"] in ("", "…") or a["token"].startswith("…") for a in listed.json()["accounts"])
        document = (await r.client.get("/admin/api/openapi.json")).json()
        assert document["openapi"].startswith("3.1")
        assert "/admin/api/accounts/{account}/sources/{source}" in document["paths"]
        assert "SourceSpec" in document["components"]["schemas"]


async def test_without_a_token_in_the_config_the_api_is_off(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        off = await r.client.get("/admin/api/accounts", headers={"Authorization": "Bearer "})
        assert (off.status_code, off.json()["error"]) == (404, "not_found")


async def test_a_source_is_added_step_by_step_and_serves_at_once(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, fake):
        with structlog.testing.capture_logs() as logs:
            added = await add(r.client, bot(title="Shop bot", default=True))
        assert added.status_code == 201, added.text
        body = added.json()
        assert body["ok"] is True
        assert [(s["step"], s["outcome"]) for s in body["steps"]] == [
            ("settings", "done"),
            ("amocrm", "done"),
            ("record", "done"),
            ("messenger", "done"),
        ]
        (created,) = fake.sources.values()
        assert (created["external_id"], created["name"], created["default"]) == ("bot2", "Shop bot", True)
        assert body["source"]["amocrm_source_id"] == created["id"]
        assert body["source"]["settings"]["secret"] == "…" + BOT_SECRET[-4:]  # never in full
        assert BOT_SECRET not in added.text and BOT_SECRET not in repr(logs)
        response = await r.inbound(message("c1", "1", "hi"), instance="bot2", secret=BOT_SECRET)
        assert response.status_code == 200
        await eventually(lambda: r.amojo.messages_in("bot2:c1", scope_id=f"{CHANNEL}_{SHOP}"))
        shown = await r.client.get("/admin/api/accounts/shop/sources/bot2", headers=AUTH)
        assert shown.json()["source"]["state"] == "active" and BOT_SECRET not in shown.text


async def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, fake):
        bad_settings = await add(r.client, bot(settings={"secret": 5, "nonsense": 1}))
        assert bad_settings.status_code == 400
        problems = bad_settings.json()["problems"]
        assert any("settings.secret" in p for p in problems) and any("nonsense" in p for p in problems)
        for spec, status, words in (
            (bot(name="Bad Name"), 400, "lower-case letters"),
            (bot(plugin="nonesuch"), 400, "not installed"),
            (bot(external_id="x" * 41), 400, "1-40 printable ASCII"),
            ({"name": "x", "plugin": "loopback", "surprise": 1}, 400, "surprise"),
            (bot(name="lb"), 400, "taken"),
        ):
            answer = await add(r.client, spec)
            assert (answer.status_code, words in answer.json()["detail"]) == (status, True), answer.text
        not_json = await r.client.post("/admin/api/accounts/shop/sources", content=b"{", headers=AUTH)
        assert not_json.status_code == 400
        huge = await r.client.post("/admin/api/accounts/shop/sources", content=b" " * 70_000, headers=AUTH)
        assert huge.status_code == 400
        nobody = await add(r.client, bot(), account="nobody")
        assert nobody.status_code == 404
        assert fake.sources == {} and r.runtime.registry.source("bot2") is None


async def test_another_account_s_source_is_not_found_through_an_account(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, _):
        assert (await add(r.client, bot())).status_code == 201
        for method in ("GET", "PATCH", "DELETE"):
            answer = await r.client.request(
                method, "/admin/api/accounts/other/sources/bot2", headers=AUTH, json={} if method == "PATCH" else None
            )
            assert answer.status_code == 404, method
        assert (await r.client.post("/admin/api/accounts/other/sources/bot2/test", headers=AUTH)).status_code == 404
        assert r.runtime.registry.source("bot2") is not None


async def test_the_fifty_first_source_of_an_account_is_refused_with_that_reason(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, fake):
        fake.max_sources = None  # the account's limit is the connector's to keep
        for i in range(50):
            await r.runtime.registry.put_source(
                SourceRecord(name=f"s{i}", plugin="plain", account="shop", external_id=f"s{i}")
            )
        refused = await add(r.client, bot())
        assert refused.status_code == 409
        assert "has 50 sources, the most amoCRM allows" in refused.json()["detail"]
        assert fake.sources == {}


async def test_amocrm_refusing_the_source_records_nothing(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, fake):
        fake.fail_next(1, 400, path="/api/v4/sources")
        answer = await add(r.client, bot())
        assert answer.status_code == 502
        assert [s["outcome"] for s in answer.json()["steps"]] == ["done", "failed"]
        assert r.runtime.registry.source("bot2") is None and r.runtime.routing.get("bot2") is None


async def test_a_source_its_messenger_refuses_is_recorded_failing_and_nothing_else_is_affected(
    tmp_path: Path,
) -> None:
    async with admin_rig(tmp_path) as (r, _):
        refused = await add(r.client, bot(settings={"secret": BOT_SECRET, "refused": "token revoked"}))
        assert refused.status_code == 201
        body = refused.json()
        assert body["ok"] is False
        messenger = body["steps"][-1]
        assert messenger["outcome"] == "failed" and "token revoked" in messenger["detail"]
        assert BOT_SECRET not in refused.text  # the messenger's error quoted it
        source = r.runtime.registry.source("bot2")
        assert source is not None and source.state == "failing" and "token revoked" in (source.last_error or "")
        assert BOT_SECRET not in (source.last_error or "")
        assert r.runtime.routing.get("bot2") is None
        assert (await r.inbound(message("c1", "1"))).status_code == 200  # the others serve on
        # Testing it again keeps it failing; fixed settings bring it up.
        again = await r.client.post("/admin/api/accounts/shop/sources/bot2/test", headers=AUTH)
        assert again.json()["ok"] is False
        fixed = await r.client.patch(
            "/admin/api/accounts/shop/sources/bot2", json={"settings": {"secret": BOT_SECRET}}, headers=AUTH
        )
        assert fixed.status_code == 200 and fixed.json()["ok"] is True, fixed.text
        assert r.runtime.routing.get("bot2") is not None


async def test_removing_a_source_reverses_each_step(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, fake):
        assert (await add(r.client, bot())).status_code == 201
        adapter = r.adapter("bot2")
        removed = await r.client.delete("/admin/api/accounts/shop/sources/bot2", headers=AUTH)
        assert removed.status_code == 200, removed.text
        assert [(s["step"], s["outcome"]) for s in removed.json()["steps"]] == [
            ("messenger", "done"),
            ("amocrm", "done"),
            ("record", "done"),
        ]
        assert adapter.unregistered and fake.sources == {}
        assert r.runtime.routing.get("bot2") is None and r.runtime.registry.source("bot2") is None
        fixed = await r.client.delete("/admin/api/accounts/main/sources/lb", headers=AUTH)
        assert (fixed.status_code, "fixed by the configuration file" in fixed.json()["detail"]) == (409, True)


async def test_an_account_is_disconnected_by_the_operator(tmp_path: Path) -> None:
    async with admin_rig(tmp_path) as (r, _):
        assert (await add(r.client, bot())).status_code == 201
        done = await r.client.post("/admin/api/accounts/shop/disconnect", headers=AUTH)
        assert (done.status_code, done.json()["account"]["state"]) == (200, "disconnected")
        assert r.runtime.routing.get("bot2") is None
        shown = await r.client.get("/admin/api/accounts/shop", headers=AUTH)
        assert shown.json()["account"]["state"] == "disconnected"
        assert [s["name"] for s in shown.json()["sources"]] == ["bot2"]
        fixed = await r.client.post("/admin/api/accounts/main/disconnect", headers=AUTH)
        assert fixed.status_code == 409
