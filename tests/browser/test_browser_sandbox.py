"""The sandbox's page in a real browser: a message crosses both ways and the answer's status ticks over."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[str]:
    """``amoconnect run --sandbox`` (the fake messenger, no scripted rounds), a process of its own: its page's URL."""
    port = free_port()
    command = [sys.executable, "-m", "amoconnect", "run", "--sandbox", "--plugin", "fake", "--port", str(port)]
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
