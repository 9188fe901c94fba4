"""The account page's activity: how each source's updates arrive, its last messages in and out, and
the account's recent conversations with their newest message and delivery state; one account's only,
and everything in them escaped."""

from __future__ import annotations

import time
from pathlib import Path

import markupsafe
import pytest
from console_rig import browser, console_rig, csrf_of, sign_in_account, sign_in_operator
from rig import SCOPE, Rig, message

from amoconnect.errors import MessengerError
from amoconnect.store.base import RecentConversation
from amoconnect.testing.kit import eventually

pytestmark = pytest.mark.anyio

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'"


async def _newest(r: Rig, msgid: str | None = None, direction: str = "in") -> RecentConversation:
    async def found() -> RecentConversation | None:
        recent = await r.runtime.store.recent_conversations(SCOPE)
        match = [c for c in recent if c.direction == direction and (msgid is None or c.msgid == msgid)]
        return match[0] if match else None

    newest: RecentConversation = await eventually(found)
    return newest


async def test_the_account_page_shows_each_source_s_activity_and_the_recent_conversations(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        r.adapter("lb").context.intake("webhook")
        r.adapter("wa").context.intake("polling")
        await r.inbound(message("c1", "1", "Do you ship to Kazan?"))
        await _newest(r)
        answer = await r.amojo.emit_text(SCOPE, "lb:c1", "Yes, in two days")
        await _newest(r, answer.message_id, "out")
        await r.inbound(message("c2", "1", "price?"), instance="wa")
        r.adapter().failures = [MessengerError("bot was blocked by the user", reason="blocked")]
        refused = await r.amojo.emit_text(SCOPE, "lb:c1", "Are you there?")
        failed = await _newest(r, refused.message_id, "out")
        assert failed.status == -1
        await sign_in_account(r, client, "main")
        russian = await client.get("/console/accounts/main")  # amocrm.ru: Russian, until switched
        assert "вебхук зарегистрирован" in russian.text and "не доставлено" in russian.text
        assert "Последние переписки" in russian.text
        switched = await client.post("/console/language", data={"csrf": csrf_of(russian), "lang": "en"})
        assert switched.status_code == 303
        page = await client.get("/console/accounts/main")
        assert page.status_code == 200
        text = page.text
        assert "webhook registered" in text and "long polling" in text
        assert 'id="conversation-list"' in text
        assert 'manager:</span> <span class="preview">Are you there?' in text
        assert '<span class="delivery delivery-failed">failed</span>' in text
        assert 'client:</span> <span class="preview">price?' in text
        assert "Yes, in two days" not in text  # only each conversation's newest message
        # Each source's last message in and out, shown as UTC minutes.
        (lb,) = [a for a in await r.runtime.store.source_activity(SCOPE) if a.instance == "lb"]
        assert lb.last_in is not None and lb.last_out is not None
        assert text.count(_minute(lb.last_out)) >= 2  # the source's last out and its conversation's time


async def test_another_account_s_conversations_are_never_shown(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.inbound(message("c1", "1", "main's secret question"))
        await _newest(r)
        await sign_in_account(r, client, "shop")
        mine = await client.get("/console/accounts/shop")
        assert mine.status_code == 200 and "main&#39;s secret question" not in mine.text
        theirs = await client.get("/console/accounts/main")
        assert theirs.status_code == 403 and "secret question" not in theirs.text
        # The operator sees it on the account's own page, and only there.
        async with browser(r) as operator:
            await sign_in_operator(operator)
            assert "main&#39;s secret question" in (await operator.get("/console/accounts/main")).text
            assert "main&#39;s secret question" not in (await operator.get("/console/accounts/shop")).text


async def test_markup_in_a_client_s_message_and_chat_is_shown_escaped(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.inbound(message(EVIL, "1", EVIL))
        await _newest(r)
        await sign_in_account(r, client, "main")
        page = await client.get("/console/accounts/main")
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        shown = str(markupsafe.escape(EVIL))
        assert f'<td class="chat">{shown}</td>' in page.text
        assert f'<span class="preview">{shown}</span>' in page.text


def _minute(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))


async def test_a_manager_s_message_given_up_on_is_listed_failed_until_its_retry_sends_it(tmp_path: Path) -> None:
    async with console_rig(tmp_path) as r, browser(r) as client:
        await r.inbound(message("c1", "1", "Is it in stock?"))
        await _newest(r)
        sent = await r.amojo.emit_text(SCOPE, "lb:c1", "Yes, two left")
        await _newest(r, sent.message_id, "out")
        # The messenger times out on every attempt (3 in the rig): the answer becomes a dead letter.
        r.adapter().failures = [MessengerError("Gateway Timeout", retryable=True) for _ in range(3)]
        lost = await r.amojo.emit_text(SCOPE, "lb:c1", "Shall I <b>reserve</b> one?")
        failed = await _newest(r, lost.message_id, "out")
        assert failed.status == -1 and failed.preview == "Shall I <b>reserve</b> one?"
        (dead,) = await r.runtime.store.dead_letters()
        assert r.amojo.message(lost.message_id).statuses[-1].delivery_status == -1  # amoCRM shows it failed too
        await sign_in_account(r, client, "main")
        page = await client.get("/console/accounts/main")
        shown = '<span class="preview">Shall I &lt;b&gt;reserve&lt;/b&gt; one?'
        assert f'<span class="direction direction-out">менеджер:</span> {shown}' in page.text
        assert '<span class="delivery delivery-failed">' in page.text  # not the answer before it, delivered
        assert "Yes, two left" not in page.text
        retried = await client.post(f"/console/accounts/main/dead/{dead.id}/retry", data={"csrf": csrf_of(page)})
        assert retried.status_code == 303
        await eventually(lambda: any(m.text == "Shall I <b>reserve</b> one?" for m in r.adapter().sent))

        async def sent_now() -> bool:
            return (await _newest(r, lost.message_id, "out")).status != -1

        await eventually(sent_now)
        after = await client.get("/console/accounts/main")
        assert "delivery-failed" not in after.text and "reserve" in after.text
