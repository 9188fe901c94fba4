"""The console's account and operator pages over HTTP: the source form its plugin's schema makes, change,
test and remove, dead letters (retry, purge with a confirmation), and another account's ids refused."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from console_rig import browser, console_rig, csrf_of, sign_in_account, sign_in_operator
from rig import Rig

from amoconnect.console.forms import fields_of, settings_of
from amoconnect.store.base import DeadLetter, NewJob
from amoconnect.store.registry import SourceRecord
from amoconnect.testing.kit import eventually

pytestmark = pytest.mark.anyio

SECRET = "source-secret-that-must-never-show-9876"
EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'"


class ThirdPartySettings(msgspec.Struct):
    api_key: Annotated[str, msgspec.Meta(title="API key", description="From the vendor's page.")]
    routes: dict[str, str] = {}
    """Where to send what."""
    ratio: float | None = None


async def dead_letter(r: Rig, account: str, error: str = "amoCRM answered 400") -> DeadLetter:
    """A dead letter of ``account``: a job that waits (so no worker takes it), buried with ``error``."""
    found = r.runtime.registry.account(account)
    assert found is not None
    await r.runtime.store.enqueue([NewJob("inbound", f"{account}:chat", b"{}", found.scope_id, delay=3600)])
    assert await r.runtime.registry.bury_jobs_of(found.scope_id, error) == 1
    (letter,) = await r.runtime.store.dead_letters(scope_id=found.scope_id)
    return letter


def test_a_plugin_s_settings_schema_becomes_its_form() -> None:
    from amoconnect_telegram.adapter import TelegramSettings

    fields = {f.name: f for f in fields_of(TelegramSettings)}
    token, mode, timeout, drop = (
        fields["token"],
        fields["mode"],
        fields["polling_timeout"],
        fields["drop_pending_updates"],
    )
    assert (token.kind, token.required, token.title) == ("secret", True, "Token")
    assert "@BotFather" in token.help and "``" not in token.help  # the field's docstring, as plain text
    assert (mode.kind, mode.choices, mode.default) == ("choice", ("polling", "webhook"), "webhook")
    assert (timeout.kind, timeout.integer, timeout.default) == ("number", True, 25)
    assert drop.kind == "bool" and fields["secret_token"].kind == "secret"
    # A secret is never shown back, a stored one is kept when the field is left empty.
    assert token.shown({"token": "123:SECRET"}) == ""
    form = {"settings.token": "", "settings.mode": "polling", "settings.polling_timeout": "30"}
    settings, problems = settings_of(list(fields.values()), form, {"token": "123:stored"})
    assert problems == [] and settings["token"] == "123:stored" and settings["polling_timeout"] == 30
    assert settings["drop_pending_updates"] is False and "api_url" not in settings


def test_meta_titles_and_descriptions_win_and_other_types_are_json() -> None:
    key, routes, ratio = fields_of(ThirdPartySettings)
    assert (key.kind, key.title, key.help) == ("secret", "API key", "From the vendor's page.")
    assert (routes.kind, routes.help) == ("json", "Where to send what.")
    assert (ratio.kind, ratio.integer, ratio.required) == ("number", False, False)
    _, problems = settings_of([routes], {"settings.routes": "{not json"})
    assert problems == ["settings.routes: not JSON"]


async def test_a_source_is_added_through_the_generated_form_and_its_secret_never_comes_back(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await sign_in_account(r, client, "shop")
        page = await client.get("/console/accounts/shop")
        assert "0 из 50" in page.text  # the limit, in the account's language (amocrm.ru: Russian)
        form = await client.get("/console/accounts/shop/sources/new?plugin=loopback")
        assert form.status_code == 200
        assert 'type="password" name="settings.secret"' in form.text  # a secret is a password input
        assert 'name="settings.files"' in form.text and "fetch handle" in form.text  # help from the docstring
        data = {"csrf": csrf_of(form), "plugin": "loopback", "name": "bot2", "title": "Shop bot"}
        added = await client.post("/console/accounts/shop/sources", data={**data, "settings.secret": SECRET})
        assert added.status_code == 200, added.text
        assert SECRET not in added.text
        source = r.runtime.registry.source("bot2")
        assert source is not None and source.account == "shop" and source.settings["secret"] == SECRET
        await eventually(lambda: r.runtime.routing.get("bot2") is not None)
        shown = await client.get("/console/accounts/shop/sources/bot2")
        assert shown.status_code == 200 and SECRET not in shown.text and SECRET[-4:] not in shown.text
        # Changing the title with the secret left empty keeps the secret.
        changed = await client.post(
            "/console/accounts/shop/sources/bot2",
            data={"csrf": csrf_of(shown), "title": "Renamed", "settings.secret": ""},
        )
        assert changed.status_code == 200, changed.text
        after = r.runtime.registry.source("bot2")
        assert after is not None and after.title == "Renamed" and after.settings["secret"] == SECRET
        tested = await client.post("/console/accounts/shop/sources/bot2/test", data={"csrf": csrf_of(shown)})
        assert tested.status_code == 200
        # Removing asks first.
        asked = await client.post("/console/accounts/shop/sources/bot2/remove", data={"csrf": csrf_of(shown)})
        assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
        assert r.runtime.registry.source("bot2") is not None
        removed = await client.post(
            "/console/accounts/shop/sources/bot2/remove", data={"csrf": csrf_of(shown), "confirm": "yes"}
        )
        assert removed.status_code == 200 and r.runtime.registry.source("bot2") is None


async def test_settings_the_schema_refuses_come_back_with_the_reasons_and_nothing_is_written(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await sign_in_account(r, client, "shop")
        csrf = csrf_of(await client.get("/console/accounts/shop/sources/new?plugin=loopback"))
        refused = await client.post(
            "/console/accounts/shop/sources",
            data={"csrf": csrf, "plugin": "loopback", "name": "Bad Name!", "settings.files": "[1, 2]"},
        )
        assert refused.status_code == 400
        assert "lower-case letters" in refused.text and "settings.files" in refused.text
        assert r.runtime.registry.sources("shop") == []
        # A messenger that refuses the source: recorded failing, its reason shown in plain words.
        failing = await client.post(
            "/console/accounts/shop/sources",
            data={"csrf": csrf, "plugin": "loopback", "name": "bot3", "settings.refused": "Unauthorized: bad token"},
        )
        assert failing.status_code == 502 and "Unauthorized: bad token" in failing.text
        page = await client.get("/console/accounts/shop")
        assert "Unauthorized: bad token" in page.text


async def test_the_fifty_first_source_is_refused_with_the_limit_shown(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        for i in range(50):
            await r.runtime.registry.put_source(
                SourceRecord(name=f"s{i}", plugin="plain", account="other", external_id=f"s{i}")
            )
        await sign_in_account(r, client, "other")
        page = await client.get("/console/accounts/other")
        assert "50 of the 50 sources" in page.text and "/sources/new" not in page.text
        form = await client.get("/console/accounts/other/sources/new?plugin=loopback")
        assert "the most amoCRM allows" in form.text
        refused = await client.post(
            "/console/accounts/other/sources", data={"csrf": csrf_of(form), "plugin": "loopback", "name": "s50"}
        )
        assert refused.status_code == 409 and "(50)" in refused.text
        assert r.runtime.registry.source("s50") is None


async def test_an_account_s_dead_letter_is_retried_from_its_page(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        mine = await dead_letter(r, "shop", "amoCRM answered 400: chat not found")
        await sign_in_account(r, client, "shop")
        page = await client.get("/console/accounts/shop")
        assert "amoCRM answered 400: chat not found" in page.text
        assert f'/console/accounts/shop/dead/{mine.id}/retry"' in page.text
        retried = await client.post(f"/console/accounts/shop/dead/{mine.id}/retry", data={"csrf": csrf_of(page)})
        assert retried.headers["location"] == f"/console/accounts/shop?retried={mine.id}"
        again = await r.runtime.store.dead_letters()
        assert all(d.id != mine.id or d.failed_at > mine.failed_at for d in again)  # it ran again
        gone = await client.post(f"/console/accounts/shop/dead/{mine.id + 1000}/retry", data={"csrf": csrf_of(page)})
        assert gone.status_code == 404


async def test_another_account_s_ids_are_refused_on_every_route_and_nothing_changes(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        theirs_source = SourceRecord(
            name="theirs", plugin="loopback", account="other", external_id="theirs", settings={"secret": SECRET}
        )
        await r.runtime.registry.put_source(theirs_source)
        theirs_dead = await dead_letter(r, "other")
        await sign_in_account(r, client, "shop")
        csrf = csrf_of(await client.get("/console/accounts/shop"))
        gets = [
            "/console/accounts/other",
            "/console/accounts/other/sources/new?plugin=loopback",
            "/console/accounts/other/sources/theirs",
            "/console/accounts/shop/sources/theirs",  # their source through my account
            "/console/operator/accounts",
            "/console/operator/dead",
            "/console/operator/plugins",
        ]
        for path in gets:
            answer = await client.get(path)
            assert answer.status_code == 403, path
            assert SECRET[-4:] not in answer.text and "other.kommo.com" not in answer.text
        posts = [
            ("/console/accounts/other/sources", {"plugin": "loopback", "name": "intruder"}),
            ("/console/accounts/other/sources/theirs", {"title": "pwned"}),
            ("/console/accounts/shop/sources/theirs", {"title": "pwned"}),
            ("/console/accounts/other/sources/theirs/test", {}),
            ("/console/accounts/shop/sources/theirs/test", {}),
            ("/console/accounts/other/sources/theirs/remove", {"confirm": "yes"}),
            ("/console/accounts/shop/sources/theirs/remove", {"confirm": "yes"}),
            (f"/console/accounts/other/dead/{theirs_dead.id}/retry", {}),
            ("/console/operator/dead/retry", {}),
            ("/console/operator/dead/purge", {"confirm": "yes"}),
        ]
        for path, data in posts:
            answer = await client.post(path, data={"csrf": csrf, **data})
            assert answer.status_code == 403, path
        # Their dead letter through my account is not found.
        mine_path = f"/console/accounts/shop/dead/{theirs_dead.id}/retry"
        assert (await client.post(mine_path, data={"csrf": csrf})).status_code == 404
        assert r.runtime.registry.source("theirs") == theirs_source
        assert r.runtime.registry.source("intruder") is None
        assert await r.runtime.store.dead_letters() == [theirs_dead]


async def test_the_operator_filters_retries_and_purges_dead_letters_with_a_confirmation(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        shop = await dead_letter(r, "shop", "shop's failure")
        other = await dead_letter(r, "other", "other's failure")
        await sign_in_operator(client)
        page = await client.get("/console/operator/dead")
        assert "shop&#39;s failure" in page.text and "other&#39;s failure" in page.text
        filtered = await client.get("/console/operator/dead?account=other")
        assert "other&#39;s failure" in filtered.text and "shop&#39;s failure" not in filtered.text
        csrf = csrf_of(page)
        asked = await client.post("/console/operator/dead/purge", data={"csrf": csrf, "account": "other"})
        assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
        assert len(await r.runtime.store.dead_letters()) == 2  # nothing yet
        purged = await client.post(
            "/console/operator/dead/purge", data={"csrf": csrf, "account": "other", "confirm": "yes"}
        )
        assert purged.headers["location"] == "/console/operator/dead?account=other&done=purged%3A1"
        assert [d.id for d in await r.runtime.store.dead_letters()] == [shop.id]
        assert other.id not in [d.id for d in await r.runtime.store.dead_letters()]
        retried = await client.post("/console/operator/dead/retry", data={"csrf": csrf, "id": str(shop.id)})
        assert retried.headers["location"] == "/console/operator/dead?done=retried%3A1"
        plugins = await client.get("/console/operator/plugins")
        assert plugins.status_code == 200 and "loopback" in plugins.text and "write_first" in plugins.text


async def test_markup_in_names_texts_and_errors_is_shown_escaped_on_every_page(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.runtime.registry.put_source(
            SourceRecord(
                name="evil",
                plugin="loopback",
                account="shop",
                external_id="evil",
                title=EVIL,
                state="failing",
                last_error=EVIL,
                settings={"secret": "x" * 16, "refused": EVIL},
            )
        )
        await dead_letter(r, "shop", EVIL)
        await sign_in_operator(client)
        pages = [
            "/console/operator/accounts",
            "/console/operator/dead",
            "/console/accounts/shop",
            "/console/accounts/shop/sources/evil",
        ]
        for path in pages:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
