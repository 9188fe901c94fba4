"""The operator's console in a real browser: sign in with the admin token, the accounts with their
states, the sources failing now, the queue chart, the dead letters across accounts (filter, retry,
purge after a confirmation) and the plugins, in English and in Russian.

The connector runs in-process (tests/console_rig.py: the fake amojo, the test messengers); every
state the pages show is reached through the product (the admin API, the relay giving up on jobs
while amojo fails, a messenger refusing a source), but for one account marked as needing
re-authorisation through the registry, as the token refresher does when amoCRM refuses its token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from anyio.from_thread import BlockingPortal
from console_rig import SHOP, TOKEN, console_rig
from rig import SCOPE, Rig, message

from amoconnect.store.registry import AccountRecord
from amoconnect.tenants import SourceSpec
from amoconnect.testing.kit import eventually
from amoconnect.testing.servers import serve_app

if TYPE_CHECKING:
    from playwright.sync_api import Page

SHOP_SCOPE = f"{SCOPE.split('_')[0]}_{SHOP}"
NORTH = "cccccccc-dddd-eeee-ffff-000000000000"


def catalog(lang: str) -> dict[str, str]:
    """The console's words in ``lang`` (``amoconnect/console/locales``)."""
    text = resources.files("amoconnect.console").joinpath("locales", f"{lang}.json").read_text("utf-8")
    return dict(json.loads(text))


EN, RU = catalog("en"), catalog("ru")


async def _fleet(r: Rig) -> None:
    """Accounts in every state, a failing source and a dead letter in two accounts, all as the product makes them."""
    runtime = r.runtime
    # "north" (kommo.com): amoCRM refused its refresh token, as the token refresher records it.
    await runtime.registry.put_account(
        AccountRecord(
            name="north",
            amojo_id=NORTH,
            scope_id=f"{SCOPE.split('_')[0]}_{NORTH}",
            subdomain="north",
            domain="kommo.com",
            installed_at=1_700_000_000.0,
        )
    )
    await runtime.registry.set_account_state("north", "needs_reauth", "amoCRM refused the refresh token")
    # "other": disconnected by the operator through the admin API.
    answer = await r.client.post("/admin/api/accounts/other/disconnect", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    # "shop": a bot that works and one its messenger refuses (failing now).
    r.amojo.connect(SHOP, webhook_url="http://amoconnect/amocrm/:scope_id")
    added = await runtime.tenants.add_source("shop", SourceSpec(name="shop-lb", plugin="loopback"))
    assert added.ok, added
    refused = await runtime.tenants.add_source(
        "shop", SourceSpec(name="shop-old", plugin="loopback", settings={"refused": "the bot's token was revoked"})
    )
    assert not refused.ok
    await eventually(lambda: runtime.routing.get("shop-lb") is not None)
    # amojo answers 500 to everything of "main" and "shop": each client's message becomes a dead
    # letter once the relay has tried it max_attempts times (3 in the rig).
    for scope in (SCOPE, SHOP_SCOPE):
        r.amojo.fail_next(500, times=1000, path_contains=scope)
    for instance, chat in (("lb", "main-client"), ("shop-lb", "shop-client")):
        hook = await r.inbound(message(chat, f"{chat}-1", f"Hello from {chat}"), instance=instance)
        assert hook.status_code == 200, hook.text
    await eventually(lambda: _dead_count(r, 2), within=20)
    r.amojo.clear_faults()
    # amojo is back: another client's message goes through, and the chart's minute counts it.
    hook = await r.inbound(message("regular", "regular-1", "Hello again"))
    assert hook.status_code == 200, hook.text
    await eventually(lambda: any(m.text == "Hello again" for m in r.amojo.messages))
    await eventually(lambda: _idle(r))
    # the relay counts a job finished just after the store has it finished
    await eventually(lambda: _succeeded(r, "inbound") >= 1)
    await runtime.queue_samples.take()  # a minute's sample now, rather than in a minute


def _succeeded(r: Rig, kind: str) -> float:
    """Jobs of ``kind`` this process finished (its metric, which the chart samples)."""
    found = r.runtime.metrics.registry.get_sample_value("amoconnect_jobs_succeeded_total", {"kind": kind})
    return found or 0.0


async def _idle(r: Rig) -> bool:
    counts = await r.runtime.store.counts()
    return counts.get("queued", 0) + counts.get("running", 0) == 0


async def _dead_count(r: Rig, count: int) -> bool:
    return len(await r.runtime.store.dead_letters()) == count


@pytest.fixture
def fleet(portal: BlockingPortal, tmp_path: Path) -> Iterator[tuple[Rig, str]]:
    """The connector with its accounts in every state (:func:`_fleet`), served: the rig and its URL."""
    with ExitStack() as stack:
        r = stack.enter_context(portal.wrap_async_context_manager(console_rig(tmp_path)))
        portal.call(_fleet, r)
        url = stack.enter_context(portal.wrap_async_context_manager(serve_app(r.runtime.app)))
        yield r, str(url)


def sign_in(page: Page, url: str, shot: Callable[[str], Any], page_problems: Any) -> None:
    """The operator signs in, after a wrong token first."""
    from playwright.sync_api import expect

    page.goto(url + "/console/")  # to the sign-in page
    expect(page.get_by_role("heading", name=EN["sign_in.operator"])).to_be_visible()
    shot("sign in")
    page_problems.allow(401, r"/console/sign-in$")
    page.get_by_label(EN["sign_in.token"]).fill("not-the-token")
    page.get_by_role("button", name=EN["sign_in.submit"]).click()
    expect(page.locator("main")).to_contain_text(EN["sign_in.wrong_token"])
    shot("a wrong token")
    page.get_by_label(EN["sign_in.token"]).fill(TOKEN)
    page.get_by_role("button", name=EN["sign_in.submit"]).click()
    expect(page).to_have_url(url + "/console/operator/accounts")
    shot("signed in: the accounts")


def test_the_operator_sees_every_account_s_state_the_failing_sources_the_queue_and_the_plugins(
    fleet: tuple[Rig, str], page: Page, shot: Callable[[str], Any], page_problems: Any
) -> None:
    from playwright.sync_api import expect

    r, url = fleet
    sign_in(page, url, shot, page_problems)
    accounts = page.locator("main table").first.locator("tbody tr")
    expect(accounts).to_have_count(4)
    states = {
        "main": EN["state.active"],
        "north": EN["state.needs_reauth"],
        "other": EN["state.disconnected"],
        "shop": EN["state.active"],
    }
    for row, (name, state) in zip(accounts.all(), states.items(), strict=True):
        expect(row.locator("td").first).to_contain_text(name)
        expect(row.locator(".state")).to_have_text(state)
    expect(accounts.filter(has_text="shop").locator("td").nth(3)).to_have_text("2")  # its two sources
    expect(accounts.first).to_contain_text(EN["accounts.fixed"])  # "main" is the configuration file's
    # The sources failing now: the bot whose messenger refused it, with the messenger's reason.
    failing = page.locator("main table").last.locator("tbody tr")
    expect(failing).to_have_count(1)
    expect(failing).to_contain_text("shop-old")
    expect(failing.locator(".error")).to_contain_text("the bot's token was revoked")
    expect(page.get_by_role("heading", name=f"{EN['failing.title']} (1)")).to_be_visible()
    # The queue over the last hour: an SVG chart of this process's own samples.
    chart = page.get_by_role("img", name=EN["chart.title"])
    expect(chart).to_be_visible()
    for line in (chart.locator("polyline.chart-depth"), chart.locator("polyline.chart-finished")):
        expect(line).to_have_attribute("points", re.compile(r"^\d"))
    samples = len(r.runtime.queue_samples.recent())
    assert samples >= 2
    legend = page.locator(".chart .meta")
    expect(legend).to_contain_text(EN["chart.minutes"].format(minutes=samples))
    peak = EN["chart.finished"].split("{")[0]  # the jobs this process finished: the message that went through
    expect(legend).to_contain_text(re.compile(re.escape(peak) + r"[1-9]"))
    shot("the accounts, the failing source and the queue")

    page.get_by_role("link", name=f"{EN['state.needs_reauth']} (1)").click()
    expect(accounts).to_have_count(1)
    expect(accounts).to_contain_text("north")
    shot("the accounts needing re-authorisation")

    page.get_by_role("link", name=EN["nav.plugins"]).click()
    plugins = page.locator("main table tbody tr")
    loopback = plugins.filter(has=page.locator("td", has_text="loopback")).first
    expect(loopback.locator("td").nth(1)).to_have_text("3")  # lb, shop-lb, shop-old
    declared = type(r.adapter("lb")).capabilities  # what the plugin's class declares, by name
    expect(loopback.locator(".tag")).to_have_text(sorted(c.value for c in declared))
    plain = plugins.filter(has=page.locator("td", has_text="plain")).first
    expect(plain.locator(".tag")).to_have_text(sorted(c.value for c in type(r.adapter("pl")).capabilities))
    shot("the plugins")

    # The same pages in Russian: the switch on the page, which the session keeps.
    page.get_by_role("button", name=RU["lang.ru"]).click()
    expect(page.get_by_role("heading", name=RU["plugins.title"])).to_be_visible()
    expect(page.locator("main thead")).to_contain_text(RU["plugins.capabilities"])
    shot("the plugins in Russian")
    page.get_by_role("link", name=RU["nav.accounts"]).click()
    expect(page.get_by_role("heading", name=RU["accounts.title"])).to_be_visible()
    expect(accounts.filter(has_text="north").locator(".state")).to_have_text(RU["state.needs_reauth"])
    expect(accounts.filter(has_text="other").locator(".state")).to_have_text(RU["state.disconnected"])
    expect(page.get_by_role("heading", name=f"{RU['failing.title']} (1)")).to_be_visible()
    expect(page.get_by_role("img", name=RU["chart.title"])).to_be_visible()
    shot("the accounts in Russian")
    page.get_by_role("button", name=EN["lang.en"]).click()
    expect(page.get_by_role("heading", name=EN["accounts.title"])).to_be_visible()
    shot("back in English")


def test_the_operator_filters_retries_and_purges_dead_letters_across_accounts(
    fleet: tuple[Rig, str], page: Page, shot: Callable[[str], Any], page_problems: Any, portal: BlockingPortal
) -> None:
    from playwright.sync_api import expect

    r, url = fleet
    sign_in(page, url, shot, page_problems)
    page.get_by_role("link", name=EN["nav.dead"]).click()
    expect(page.get_by_role("heading", name=f"{EN['dead.title']} (2)")).to_be_visible()
    letters = page.locator("main table tbody tr")
    expect(letters).to_have_count(2)
    expect(letters.locator("td:nth-child(2)")).to_have_text(["main", "shop"])  # oldest first
    expect(letters.locator("td:nth-child(3)")).to_have_text([EN["kind.inbound"]] * 2)
    expect(letters.locator(".error").first).to_contain_text("gave up after 3 attempts")
    shot("every account's dead letters")

    # Only shop's, then retry it: amojo answers again, and the client's message arrives in amoCRM.
    page.get_by_label(EN["sources.account"]).select_option("shop")
    page.get_by_role("button", name=EN["dead.filter"], exact=True).click()
    expect(letters).to_have_count(1)
    expect(letters.locator("td:nth-child(2)")).to_have_text("shop")
    shot("shop's dead letters")
    letters.get_by_role("button", name=EN["dead.retry"]).click()
    expect(page.get_by_role("status")).to_have_text(EN["dead.done.retried"].format(count=1))
    expect(page).to_have_url(url + "/console/operator/dead?account=shop&done=retried%3A1")  # the filter kept
    expect(letters).to_have_text([EN["dead.none"]])
    shot("shop's dead letter retried")

    async def arrived() -> bool:
        return any(m.text == "Hello from shop-client" for m in r.amojo.messages if m.scope_id == SHOP_SCOPE)

    portal.call(eventually, arrived, 10.0)

    # Every account's again: purge main's, after the confirmation.
    page.get_by_label(EN["sources.account"]).select_option("")
    page.get_by_role("button", name=EN["dead.filter"], exact=True).click()
    expect(page.get_by_role("heading", name=f"{EN['dead.title']} (1)")).to_be_visible()
    expect(letters.locator("td:nth-child(2)")).to_have_text("main")
    shot("main's dead letter left")
    letters.get_by_role("button", name=EN["dead.purge"]).click()
    expect(page.get_by_role("heading", name=EN["dead.purge_confirm"].format(count=1))).to_be_visible()
    expect(page.locator("main")).to_contain_text(EN["dead.purge_help"])
    shot("purge: are you sure?")
    assert len(portal.call(r.runtime.store.dead_letters)) == 1  # nothing purged before the confirmation
    page.get_by_role("button", name=EN["dead.purge"], exact=True).click()
    expect(page.get_by_role("status")).to_have_text(EN["dead.done.purged"].format(count=1))
    expect(page.get_by_role("heading", name=f"{EN['dead.title']} (0)")).to_be_visible()
    expect(letters).to_have_text([EN["dead.none"]])
    shot("main's dead letter purged")
    assert portal.call(r.runtime.store.dead_letters) == []
    assert not any(m.text == "Hello from main-client" for m in r.amojo.messages)  # purged: never sent
