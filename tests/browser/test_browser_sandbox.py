"""The sandbox's page in a real browser: a message crosses both ways and the answer's status ticks over."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_sandbox(tmp_path: Path, plugin: str) -> Iterator[str]:
    """``amoconnect run --sandbox --plugin PLUGIN`` (no scripted rounds), a process of its own: its page's URL."""
    port = free_port()
    command = [sys.executable, "-m", "amoconnect", "run", "--sandbox", "--plugin", plugin, "--port", str(port)]
    log = (tmp_path / "sandbox.log").open("wb")
    process = subprocess.Popen([*command, "--no-browser"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/console/sandbox"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "sandbox.log").read_text()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the sandbox's page did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode == 0, (tmp_path / "sandbox.log").read_text()
    assert url in (tmp_path / "sandbox.log").read_text()  # the page is named at start


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    """The sandbox of the fake messenger: its page's URL."""
    with running_sandbox(tmp_path, "fake") as url:
        yield url


@pytest.fixture
def telegram_sandbox(tmp_path: Path) -> Iterator[str]:
    """The sandbox of the Telegram plugin (its fake Bot API): its page's URL."""
    pytest.importorskip("amoconnect_telegram")
    with running_sandbox(tmp_path, "telegram") as url:
        yield url


def test_a_message_crosses_both_ways_and_the_answer_is_delivered_then_read(
    sandbox: str, page: Page, shot: Callable[[str], Any]
) -> None:
    from playwright.sync_api import expect

    page.goto(sandbox)
    expect(page.get_by_role("heading", name="Sandbox: one conversation, both sides")).to_be_visible()
    expect(page.locator("#manager-send")).to_be_disabled()  # amoCRM has no chat until the client writes
    shot("empty")

    page.get_by_placeholder("Write as the client").fill("Hello, do you deliver <b>on Sundays</b>?")
    page.get_by_placeholder("Write as the client").press("Enter")
    amocrm, messenger = page.locator("#amocrm-chat li"), page.locator("#messenger-chat li")
    expect(amocrm).to_have_count(1)
    expect(amocrm.first).to_have_class("line from-client")
    expect(amocrm.first.locator(".text")).to_have_text("Hello, do you deliver <b>on Sundays</b>?")  # as text
    expect(amocrm.first.locator(".status")).to_have_text("received")
    expect(messenger.first.locator(".text")).to_have_text("Hello, do you deliver <b>on Sundays</b>?")
    expect(page.locator("#manager-send")).to_be_enabled()
    shot("the client's message in amoCRM")

    page.get_by_placeholder("Answer as the manager").fill("Yes, every day until 9 pm.")
    page.locator("#manager-send").click()
    expect(messenger).to_have_count(2)
    expect(messenger.nth(1)).to_have_class("line from-manager")
    expect(messenger.nth(1).locator(".text")).to_have_text("Yes, every day until 9 pm.")
    status = amocrm.nth(1).locator(".status")
    expect(amocrm.nth(1).locator(".text")).to_have_text("Yes, every day until 9 pm.")
    # the client's phone reports the answer delivered at once, and read when the client opens it
    expect(status).to_have_text("delivered")
    shot("the answer delivered")
    expect(status).to_have_text("read")
    expect(page.get_by_placeholder("Answer as the manager")).to_have_value("")
    shot("the answer read")


def test_the_page_speaks_russian(sandbox: str, page: Page, shot: Callable[[str], Any]) -> None:
    from playwright.sync_api import expect

    page.goto(sandbox)
    shot("english")
    page.get_by_role("button", name="Русский").click()
    expect(page.get_by_role("heading", name="Песочница: одна переписка с двух сторон")).to_be_visible()
    expect(page).to_have_url(sandbox)
    page.get_by_placeholder("Написать как клиент").fill("Здравствуйте!")
    page.get_by_role("button", name="Отправить").first.click()
    expect(page.locator("#amocrm-chat .status")).to_have_text("получено")
    shot("russian")


def test_install_from_the_page_then_add_a_bot_then_the_first_message(
    sandbox: str, page: Page, shot: Callable[[str], Any], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(sandbox)
    shot("the sandbox")
    names, values = (
        page.locator("#bot-settings dt").all_inner_texts(),
        page.locator("#bot-settings dd").all_inner_texts(),
    )
    bot = dict(zip(names, values, strict=True))
    assert set(bot) == {"plugin", "token", "secret", "api_url"}
    page.locator("#install").click()
    # the fake amoCRM's authorisation page, on its own origin
    expect(page.get_by_role("heading", name="Allow access")).to_be_visible()
    assert "shop.amocrm.ru" in page.content() and not page.url.startswith(sandbox.removesuffix("/console/sandbox"))
    shot("amoCRM asks the admin")
    page.get_by_role("button", name="Allow").click()
    # the connector installed the account and signed its admin in to its page
    expect(page).to_have_url(sandbox.replace("/console/sandbox", "/console/accounts/shop"))
    expect(page.locator("main")).to_contain_text("shop.amocrm.ru")
    shot("the installed account")

    page.locator("#add-source").click()
    shot("add a source")
    page.locator("#plugin").select_option(bot["plugin"])
    page.locator("form.row button[type=submit]").click()  # the page speaks Russian now: an amocrm.ru account
    shot("the bot's form")
    page.locator("#name").fill("shop-bot")
    for name in ("token", "secret", "api_url"):
        page.locator(f"#f-{name}").fill(bot[name])
    page.locator("form#add-source button[type=submit]").click()
    expect(page.locator("main h1")).to_contain_text("shop-bot")
    shot("the bot added")
    steps = page.locator("main table tbody tr")
    expect(steps).to_have_count(4)  # settings, amoCRM's source, the record, the messenger's webhook: each done
    expect(page.locator("main table .error")).to_have_count(0)

    page.goto(sandbox)
    page.get_by_placeholder("Write as the client").fill("Hello, shop!")
    page.get_by_placeholder("Write as the client").press("Enter")
    line = page.locator("#amocrm-chat li", has_text="Hello, shop!")
    expect(line.locator(".status")).to_have_text("received")
    page.get_by_placeholder("Answer as the manager").fill("Welcome to the shop.")
    page.locator("#manager-send").click()
    expect(page.locator("#messenger-chat li", has_text="Welcome to the shop.")).to_be_visible()
    expect(page.locator("#amocrm-chat li", has_text="Welcome to the shop.").locator(".status")).to_have_text("read")
    shot("the first message of the new account")
    log = [json.loads(line) for line in (tmp_path / "sandbox.log").read_text().splitlines() if line.startswith("{")]
    installed = next(e for e in log if e["event"] == "account installed the integration")
    assert installed["account"] == "shop"
    inbound = [e for e in log if e["event"] == "relayed to amoCRM" and e.get("kind") == "inbound"]
    assert inbound and {e["scope_id"] for e in inbound} == {installed["scope_id"]}  # through the new account's bot


def test_deny_on_amocrms_page_says_the_installation_was_cancelled_and_trying_again_installs(
    sandbox: str, page: Page, shot: Callable[[str], Any]
) -> None:
    from playwright.sync_api import expect

    page.goto(sandbox)
    shot("the sandbox")
    page.locator("#install").click()
    expect(page.get_by_role("heading", name="Allow access")).to_be_visible()
    shot("amoCRM asks the admin")
    page.get_by_role("button", name="Deny").click()
    # back on the connector: a page (200, no error in the browser) saying what happened and what to do
    expect(page.get_by_role("heading", name="Installation cancelled")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Settings → Integrations")
    shot("the installation cancelled")
    page.get_by_role("link", name="Try again: sign in with amoCRM").click()
    expect(page.get_by_role("button", name="Sign in with amoCRM")).to_be_visible()
    shot("sign in again")
    page.get_by_role("button", name="Sign in with amoCRM").click()
    expect(page.get_by_role("heading", name="Allow access")).to_be_visible()
    shot("amoCRM asks again")
    page.get_by_role("button", name="Allow").click()
    expect(page).to_have_url(sandbox.replace("/console/sandbox", "/console/accounts/shop"))
    shot("installed after all")


def catalog(lang: str) -> dict[str, str]:
    """The console's words in ``lang`` (its catalog, ``amoconnect/console/locales``)."""
    from importlib import resources

    text = resources.files("amoconnect.console").joinpath("locales", f"{lang}.json").read_text("utf-8")
    return dict(json.loads(text))


DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


def docs_image(page: Page, name: str) -> None:
    """The page as README shows it (``docs/img/NAME``): what a 1280x800 window shows of it."""
    size = page.viewport_size
    page.set_viewport_size({"width": 1280, "height": 800})
    try:
        page.screenshot(path=str(DOCS_IMAGES / name))
    finally:
        if size is not None:
            page.set_viewport_size(size)


WHEN = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}"
"""A moment as the console shows it."""


def reloaded_until(page: Page, what: str, text: str, tries: int = 100) -> None:
    """Reload the (server-rendered) page until ``what`` (a selector) contains ``text``: the job that
    records it may finish a moment after the fake it went to has it. Fails as ``expect`` does."""
    from playwright.sync_api import expect

    for _ in range(tries):
        if text in page.locator(what).inner_text():
            return
        page.reload()
    expect(page.locator(what)).to_contain_text(text)


def test_an_admin_installs_adds_a_telegram_bot_follows_its_conversation_and_retries_a_dead_letter(
    telegram_sandbox: str, page: Page, shot: Callable[[str], Any], tmp_path: Path
) -> None:
    """The account's admin's journey, on Telegram's fake Bot API, all through pages: install in
    "amoCRM", add the bot through the form its settings schema makes, watch its state and its
    conversation on the account's page (in Russian: an amocrm.ru account), and retry a manager's
    answer that became a dead letter while the bot was removed."""
    from playwright.sync_api import expect

    ru, en = catalog("ru"), catalog("en")  # the account's page speaks Russian, the sandbox's English
    sandbox = telegram_sandbox
    account_page = sandbox.replace("/console/sandbox", "/console/accounts/shop")
    page.goto(sandbox)
    shot("the telegram sandbox")
    names = page.locator("#bot-settings dt").all_inner_texts()
    bot = dict(zip(names, page.locator("#bot-settings dd").all_inner_texts(), strict=True))
    assert bot["plugin"] == "telegram" and set(bot) == {"plugin", "token", "api_url"}

    page.locator("#install").click()
    expect(page.get_by_role("heading", name="Allow access")).to_be_visible()
    shot("amoCRM asks the admin")
    page.get_by_role("button", name="Allow").click()
    expect(page).to_have_url(account_page)
    expect(page.locator("main")).to_contain_text(ru["sources.none"])
    shot("the installed account, in Russian")

    def add_the_bot() -> None:
        page.goto(account_page)
        page.locator("#add-source").click()
        expect(page.locator("main")).to_contain_text(ru["sources.limit"].format(count=0, limit=50))
        shot("add a source")
        page.locator("#plugin").select_option("telegram")
        page.get_by_role("button", name=ru["source.choose"]).click()
        # the form the plugin's settings schema makes: the token a password input, the mode a choice
        expect(page.get_by_role("heading", name=ru["source.settings"].format(plugin="telegram"))).to_be_visible()
        expect(page.locator("#f-token")).to_have_attribute("type", "password")
        expect(page.locator("#f-mode")).to_have_value("webhook")
        expect(page.locator("#f-api_url")).to_have_value("https://api.telegram.org")  # the default, filled in
        shot("the telegram bot's form")
        page.locator("#name").fill("shop-bot")
        page.locator("#title").fill("Shop & Co")
        page.locator("#f-token").fill(bot["token"])
        page.locator("#f-api_url").fill(bot["api_url"])
        page.get_by_role("button", name=ru["source.add"]).click()
        expect(page.locator("main h1")).to_have_text(ru["outcome.added"].format(name="shop-bot"))
        steps = page.locator("main table.steps tbody tr")
        expect(steps).to_have_count(4)  # settings, amoCRM's source, the record, the bot's webhook
        expect(steps.locator(".state-done")).to_have_count(4)
        assert bot["token"] not in page.content()  # the secret never comes back
        shot("the bot added")

    add_the_bot()
    page.goto(account_page)
    source = page.locator("main table").first.locator("tbody tr", has_text="shop-bot")
    cells = source.locator("td")
    expect(cells.nth(0)).to_contain_text("Shop & Co")  # the title, as text
    expect(cells.nth(2)).to_have_text(ru["state.active"])
    expect(cells.nth(3)).to_have_text(ru["intake.webhook"])  # the bot's webhook registered with Telegram
    expect(cells.nth(4)).to_have_text("—")  # no message in or out yet
    expect(cells.nth(5)).to_have_text("—")
    expect(page.locator("#conversation-list tbody")).to_have_text(ru["conversations.none"])
    shot("the bot, webhook registered, no message yet")

    # A client writes to the bot in Telegram; a manager answers in amoCRM.
    page.goto(sandbox)
    page.get_by_placeholder("Write as the client").fill("Hello! Do you deliver <b>on Sundays</b>?")
    page.get_by_placeholder("Write as the client").press("Enter")
    amocrm = page.locator("#amocrm-chat li")
    expect(amocrm.first.locator(".status")).to_have_text(en["sandbox.status.received"])
    shot("the client's message in amoCRM")
    page.goto(account_page)
    conversation = page.locator("#conversation-list tr.conversation")
    reloaded_until(page, "#conversation-list", "Do you deliver")
    expect(conversation).to_have_count(1)
    expect(conversation.locator(".last")).to_have_text(
        f"{ru['conversations.in']} Hello! Do you deliver <b>on Sundays</b>?"
    )
    expect(conversation.locator(".delivery")).to_have_text(ru["delivery.in"])
    expect(conversation.locator("td").first).to_have_text("Shop & Co")
    expect(cells.nth(4)).to_have_text(re.compile(WHEN))
    expect(cells.nth(5)).to_have_text("—")
    shot("the client's message on the account's page")

    page.goto(sandbox)
    page.get_by_placeholder("Answer as the manager").fill("Yes, every day until 9 pm.")
    page.locator("#manager-send").click()
    expect(page.locator("#messenger-chat li", has_text="Yes, every day until 9 pm.")).to_be_visible()
    expect(amocrm.nth(1).locator(".status")).to_have_text(
        en["sandbox.status.delivered"]
    )  # Telegram's send counts as delivered
    shot("the manager's answer delivered")
    page.goto(account_page)
    reloaded_until(page, "#conversation-list", "every day")
    expect(conversation.locator(".last")).to_have_text(f"{ru['conversations.out']} Yes, every day until 9 pm.")
    expect(conversation.locator(".delivery")).to_have_text(ru["delivery.delivered"])
    expect(cells.nth(4)).to_have_text(re.compile(WHEN))
    expect(cells.nth(5)).to_have_text(re.compile(WHEN))
    dead = page.locator("main table").last.locator("tbody tr")  # the account's dead letters
    expect(dead).to_have_text([ru["dead.none"]])
    shot("the conversation on the account's page")

    # The admin removes the bot (after a confirmation); a manager answers the client meanwhile: the
    # answer has no bot to go through, so it becomes a dead letter and amoCRM shows it not delivered.
    source.locator("a").first.click()
    expect(page.locator("#f-token")).to_have_value("")  # the stored token is never sent back
    shot("the bot's page")
    page.get_by_role("button", name=ru["source.remove"]).click()
    expect(page.locator("main h1")).to_have_text(ru["source.remove_confirm"].format(name="Shop & Co"))
    shot("remove the bot?")
    page.get_by_role("button", name=ru["source.remove"]).click()
    expect(page.locator("main h1")).to_have_text(ru["outcome.removed"].format(name="shop-bot"))
    shot("the bot removed")
    page.goto(sandbox)
    page.get_by_placeholder("Answer as the manager").fill("The courier comes at 10 am.")
    page.locator("#manager-send").click()
    expect(amocrm.nth(2).locator(".status")).to_have_text(en["sandbox.status.failed"])
    shot("the answer not delivered")
    page.goto(account_page)
    reloaded_until(page, "#conversation-list", "The courier")  # written once the dead letter is reported
    expect(dead).to_have_count(1)
    expect(dead.locator("td").nth(1)).to_have_text(ru["kind.amocrm"])
    expect(dead.locator(".error")).to_have_text("instance 'shop-bot' of the conversation is no longer configured")
    letter = dead.locator("td").first.inner_text()
    # ... and the conversation's newest message is that answer, not delivered
    expect(conversation.locator(".last")).to_have_text(f"{ru['conversations.out']} The courier comes at 10 am.")
    expect(conversation.locator(".delivery")).to_have_text(ru["delivery.failed"])
    shot("the dead letter")

    # The bot is back: the admin retries the dead letter, and the answer reaches the client.
    add_the_bot()
    page.goto(account_page)
    expect(cells.nth(3)).to_have_text(ru["intake.webhook"])
    # The switch on the page: English from now on, the account's domain notwithstanding.
    page.get_by_role("button", name=en["lang.en"]).click()
    expect(page).to_have_url(account_page)
    expect(page.get_by_role("heading", name=en["sources.title"])).to_be_visible()
    expect(cells.nth(3)).to_have_text(en["intake.webhook"])
    expect(conversation.locator(".delivery")).to_have_text(en["delivery.failed"])
    expect(dead.locator("td").nth(1)).to_have_text(en["kind.amocrm"])
    shot("the account's page in English")
    if os.environ.get("AMOCONNECT_DOCS_IMAGES"):
        docs_image(page, "console.png")
    dead.get_by_role("button", name=en["dead.retry"]).click()
    expect(page.get_by_role("status")).to_have_text(en["dead.retried"].format(id=letter))
    expect(dead).to_have_text([en["dead.none"]])  # gone from the dead letters
    shot("the dead letter retried")
    page.goto(sandbox)
    expect(page.locator("#messenger-chat li", has_text="The courier comes at 10 am.")).to_be_visible()
    expect(amocrm.nth(2).locator(".status")).to_have_text(en["sandbox.status.delivered"])
    shot("the retried answer delivered")
    page.goto(account_page)
    reloaded_until(page, "#conversation-list", en["delivery.delivered"])  # the retried answer, sent
    expect(conversation.locator(".last")).to_have_text(f"{en['conversations.out']} The courier comes at 10 am.")
    expect(conversation.locator(".delivery")).to_have_text(en["delivery.delivered"])
    shot("the account's page at the end")
