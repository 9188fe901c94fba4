"""The console's pages over HTTP: sign-in, sessions, CSRF, the security headers, both languages, escaping."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from console_rig import TOKEN, browser, console_rig, csrf_of, sign_in_account, sign_in_operator

from amoconnect.console.i18n import LANGUAGES, catalog, choose
from amoconnect.console.session import COOKIE, Session, SessionCodec
from amoconnect.console.web import CSP
from amoconnect.store.registry import AccountRecord, SourceRecord

pytestmark = pytest.mark.anyio


def test_every_key_is_in_every_catalog_and_every_placeholder_too() -> None:
    english = catalog("en")
    for lang in LANGUAGES:
        texts = catalog(lang)
        assert set(texts) == set(english), lang
        for key, text in texts.items():
            assert text.strip(), (lang, key)
            assert sorted(_placeholders(text)) == sorted(_placeholders(english[key])), (lang, key)


def _placeholders(text: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def test_the_language_follows_the_switch_then_the_account_s_domain_then_the_browser() -> None:
    assert choose("", "amocrm.ru", "en-US") == "ru"
    assert choose("", "kommo.com", "ru-RU") == "en"
    assert choose("", "amocrm.com", "ru") == "en"
    assert choose("en", "amocrm.ru", "ru") == "en"
    assert choose("", "", "de-DE,ru;q=0.8,en;q=0.5") == "ru"
    assert choose("", "", "de") == "en"
    assert choose("xx", "", "") == "en"


def test_a_session_cookie_is_refused_when_forged_expired_or_malformed() -> None:
    codec = SessionCodec("k" * 32, 3600)
    good = codec.dumps(Session(role="operator", expires=time.time() + 60))
    assert codec.loads(good) is not None and codec.loads(good).role == "operator"  # type: ignore[union-attr]
    payload, _, signature = good.partition(".")
    assert codec.loads(f"{payload}.{'0' * len(signature)}") is None
    other = SessionCodec("x" * 32, 3600).dumps(Session(role="operator", expires=time.time() + 60))
    assert codec.loads(other) is None
    assert codec.loads(codec.dumps(Session(role="operator", expires=time.time() - 1))) is None
    assert codec.loads("garbage") is None and codec.loads("") is None and codec.loads("a." * 3000) is None


async def test_the_operator_signs_in_with_the_token_and_sees_every_account(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        assert (await client.get("/console/operator/accounts")).headers["location"] == "/console/sign-in"
        form = await client.get("/console/sign-in")
        wrong = await client.post("/console/sign-in", data={"csrf": csrf_of(form), "token": "not-it"})
        assert wrong.status_code == 401 and "not the admin token" in wrong.text
        assert (await client.get("/console/operator/accounts")).status_code == 303
        await sign_in_operator(client)
        page = await client.get("/console/operator/accounts")
        assert page.status_code == 200
        for name in ("main", "shop", "other"):
            assert f'href="/console/accounts/{name}"' in page.text
        assert "shop.amocrm.ru" in page.text and "other.kommo.com" in page.text
        # Sign out: the cookie is gone, the pages want a sign-in again.
        signed_out = await client.post("/console/sign-out", data={"csrf": csrf_of(page)})
        assert signed_out.headers["location"] == "/console/sign-in"
        assert (await client.get("/console/operator/accounts")).headers["location"] == "/console/sign-in"


async def test_the_cookie_is_http_only_lax_and_secure_over_https_only(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r:
        async with browser(r) as client:
            cookie = (await client.get("/console/sign-in")).headers["set-cookie"]
            assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
            assert "Secure" in cookie and "Path=/;" in cookie
        r.client.cookies.clear()  # a new visitor each time: a session the request brings back is not set again
        plain = (await r.client.get("/console/sign-in")).headers["set-cookie"]
        assert "Secure" not in plain
        r.client.cookies.clear()
        forwarded = await r.client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" not in forwarded.headers["set-cookie"]  # the proxy is not trusted by default
    async with console_rig(tmp_path / "trusted", console={"trust_proxy": True}) as r:
        forwarded = await r.client.get("/console/sign-in", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in forwarded.headers["set-cookie"]


async def test_every_page_has_the_strict_policy_and_no_inline_script_or_style(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        pages = ["/console/sign-in"]
        await sign_in_operator(client)
        pages += ["/console/operator/accounts", "/console/accounts/shop"]
        for path in pages:
            page = await client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-security-policy"] == CSP
            assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe" not in CSP
            assert page.headers["x-content-type-options"] == "nosniff"
            assert "<script>" not in page.text and "<style" not in page.text and " style=" not in page.text
            assert " on" not in page.text.replace(" one", "")  # no inline event handlers
            assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
        css = await client.get("/console/static/console.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_a_post_without_this_session_s_csrf_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await client.get("/console/sign-in")
        for data in ({"token": TOKEN}, {"token": TOKEN, "csrf": "forged"}):
            refused = await client.post("/console/sign-in", data=data)
            assert refused.status_code == 403
        assert (await client.get("/console/operator/accounts")).status_code == 303  # still signed out
        await sign_in_operator(client)
        refused = await client.post("/console/sign-out", data={})
        assert refused.status_code == 403
        assert (await client.get("/console/operator/accounts")).status_code == 200  # still signed in
        # Another browser's token does not do either.
        async with browser(r) as other:
            theirs = csrf_of(await other.get("/console/sign-in"))
        assert (await client.post("/console/sign-out", data={"csrf": theirs})).status_code == 403


async def test_a_page_renders_in_both_languages_and_the_switch_keeps_the_choice(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        english = await client.get("/console/sign-in", headers={"Accept-Language": "en"})
        assert '<html lang="en">' in english.text and catalog("en")["sign_in.title"] in english.text
        russian = await client.get("/console/sign-in", headers={"Accept-Language": "ru-RU,ru;q=0.9"})
        assert '<html lang="ru">' in russian.text and catalog("ru")["sign_in.title"] in russian.text
        switched = await client.post(
            "/console/language", data={"csrf": csrf_of(english), "lang": "ru", "back": "/console/sign-in"}
        )
        assert switched.headers["location"] == "/console/sign-in"
        assert '<html lang="ru">' in (await client.get("/console/sign-in", headers={"Accept-Language": "en"})).text
        # The switch never sends the browser away from the console.
        for back in ("https://evil.example/", "//evil.example/console/", "/console/\\evil"):
            away = await client.post("/console/language", data={"csrf": csrf_of(english), "lang": "en", "back": back})
            assert away.headers["location"] == "/console/"


async def test_an_account_s_page_reads_in_its_domain_s_language(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await sign_in_operator(client)
        shop = await client.get("/console/accounts/shop", headers={"Accept-Language": "en"})
        assert '<html lang="ru">' in shop.text and catalog("ru")["sources.title"] in shop.text
        other = await client.get("/console/accounts/other", headers={"Accept-Language": "ru"})
        assert '<html lang="en">' in other.text and catalog("en")["sources.title"] in other.text


async def test_an_account_s_admin_sees_that_account_only(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await sign_in_account(r, client, "shop")
        assert (await client.get("/console/")).headers["location"] == "/console/accounts/shop"
        assert (await client.get("/console/accounts/shop")).status_code == 200
        for path in ("/console/accounts/other", "/console/accounts/main", "/console/operator/accounts"):
            refused = await client.get(path)
            assert refused.status_code == 403, path
            assert "other.kommo.com" not in refused.text


async def test_the_accounts_are_paginated_and_filtered_by_state(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        for i in range(120):
            await r.runtime.registry.put_account(
                AccountRecord(
                    name=f"acct{i:03}",
                    amojo_id=f"id-{i}",
                    scope_id=f"scope-{i}",
                    state="needs_reauth" if i % 10 == 0 else "active",
                )
            )
        await sign_in_operator(client)
        first = await client.get("/console/operator/accounts")
        assert "acct000" in first.text and "acct049" in first.text and "acct050" not in first.text
        assert 'rel="next" href="?page=2"' in first.text
        third = await client.get("/console/operator/accounts?page=3")
        assert "acct119" in third.text and 'rel="next"' not in third.text
        assert ">acct119</a>" in (await client.get("/console/operator/accounts?page=99")).text
        reauth = await client.get("/console/operator/accounts?state=needs_reauth")
        assert "acct010" in reauth.text and "acct011" not in reauth.text
        assert "(12)" in reauth.text
        # The pages share one sorted view of the registry: a change is on the next page load.
        await r.runtime.registry.set_account_state("acct011", "needs_reauth", "refresh token refused")
        await r.runtime.registry.put_account(AccountRecord(name="acct000a", amojo_id="id-a", scope_id="scope-a"))
        after = await client.get("/console/operator/accounts?state=needs_reauth")
        assert "acct011" in after.text and "(13)" in after.text
        assert ">acct000a</a>" in (await client.get("/console/operator/accounts")).text


async def test_names_and_errors_the_pages_show_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'"
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.runtime.registry.put_source(
            SourceRecord(
                name="evil",
                plugin="loopback",
                account="shop",
                external_id="evil",
                title=evil,
                state="failing",
                last_error=evil,
            )
        )
        await sign_in_operator(client)
        for path in ("/console/operator/accounts", "/console/accounts/shop"):
            page = await client.get(path)
            assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
        # The catalogs hold text, not markup.
        for lang in LANGUAGES:
            assert not any("<" in text for text in catalog(lang).values())
        json.dumps(catalog("ru"))


async def test_the_queue_chart_draws_the_last_hour_of_samples() -> None:
    from amoconnect.console.samples import Samples, chart
    from amoconnect.errors import StoreError

    depth, finished, clock = [5], [0.0], [0.0]

    async def counts() -> dict[str, int]:
        if depth[0] < 0:
            raise StoreError("down")
        return {"queued": depth[0], "running": 1, "dead": 3}

    samples = Samples(counts, lambda: finished[0], size=3, clock=lambda: clock[0])
    assert chart(samples.recent()).minutes == 0
    for d, f in ((5, 10.0), (9, 40.0), (-1, 50.0), (1, 70.0), (0, 70.0)):
        depth[0], finished[0] = d, f
        clock[0] += 60
        await samples.take()
    # The ring keeps the last 3; a store that did not answer skipped its minute, the count carried on.
    assert [(s.depth, s.finished) for s in samples.recent()] == [(10, 30), (2, 30), (1, 0)]
    drawn = chart(samples.recent(), width=100, height=50)
    assert (drawn.max_depth, drawn.max_finished, drawn.minutes) == (10, 30, 3)
    assert drawn.depth.split()[0] == "0.0,2.0" and drawn.depth.split()[-1].startswith("100.0,")
    assert drawn.finished.split()[-1] == "100.0,48.0"


async def test_the_operator_s_overview_shows_the_chart_as_an_svg_of_our_own(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.runtime.queue_samples.take()
        await sign_in_operator(client)
        page = await client.get("/console/operator/accounts")
        assert '<svg viewBox="0 0 600 120"' in page.text and 'class="chart-depth" points="' in page.text
