"""Fault runs: the connector on a real port, the fakes behind fault-injecting proxies (testing.faultproxy)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import tomli_w
from click.testing import CliRunner
from processes import listening
from prometheus_client.parser import text_string_to_metric_families
from rig import ACCOUNT, CHANNEL, SCOPE, base_config, eventually
from starlette.requests import Request
from starlette.responses import Response
from test_e2e_http import world

from amoconnect.cli import main
from amoconnect.config import parse_config
from amoconnect.runtime import Runtime, serve
from amoconnect.testing import fake_amojo, fakechat_api
from amoconnect.testing.fakechat_api import FakeChat
from amoconnect.testing.faultproxy import FaultProxy
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import counts_are

pytestmark = pytest.mark.anyio

FAILING = ("rate_limited", "server_error", "dropped", "lost_answer")
"""The faults that make a call fail (``slow`` only delays it)."""


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def failures(proxy: FaultProxy) -> int:
    return sum(proxy.injected[kind] for kind in FAILING)


def source(name: str, account: str, chat: FakeChat, api_url: str) -> dict[str, Any]:
    return {"name": name, "plugin": "fake", "account": account, "settings": chat.sandbox_settings(api_url)}


@asynccontextmanager
async def running(config: dict[str, Any], port: int) -> AsyncIterator[Runtime]:
    """``amoconnect run`` in-process: the runtime behind uvicorn on ``port`` until the block ends."""
    runtime = Runtime(parse_config(config), plugin="fake")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=port, stop=stop))
        await eventually(lambda: listening(f"http://127.0.0.1:{port}"), within=10)
        try:
            yield runtime
        finally:
            stop.set()


# -- the proxy itself -----------------------------------------------------------------------------


async def test_the_proxy_forwards_faithfully_and_injects_each_kind_of_fault() -> None:
    seen: list[tuple[str, str, str, dict[str, str], bytes]] = []

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = await request.body()
        seen.append((request.method, scope["raw_path"].decode(), request.url.query, dict(request.headers), body))
        headers = {"X-Upstream": "yes", "Content-Type": "application/x-thing"}
        await Response(b"answer-bytes", 207, headers=headers)(scope, receive, send)

    async with serve_app(upstream) as upstream_url:
        proxy = FaultProxy(upstream_url, enabled=False, retry_after=2, delay=0.05, error=fake_amojo.error_response)
        async with proxy.serve() as url, httpx.AsyncClient(base_url=url) as client:
            answer = await client.put("/a%2Fb/c?x=1&y=%20", content=b"\x00body", headers={"X-Signature": "abc"})
            assert (answer.status_code, answer.content) == (207, b"answer-bytes")
            assert answer.headers["x-upstream"] == "yes"
            assert answer.headers["content-type"] == "application/x-thing"
            method, path, query, headers, body = seen[-1]
            assert (method, path, query, body) == ("PUT", "/a%2Fb/c", "x=1&y=%20", b"\x00body")
            assert headers["x-signature"] == "abc"
            assert proxy.forwarded == 1 and not proxy.injected

            proxy.enabled = True
            proxy.odds["rate_limited"] = 1.0
            limited = await client.post("/limited")
            assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
            assert limited.json() == {"error": "too many requests", "code": "too_many_requests"}
            proxy.odds.update(rate_limited=0.0, server_error=1.0)
            assert (await client.get("/broken")).status_code == 500
            proxy.odds.update(server_error=0.0, dropped=1.0)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/dropped", content=b"lost")
            assert len(seen) == 1, "neither the faulted nor the dropped requests reached the upstream"
            proxy.odds.update(dropped=0.0, lost_answer=1.0)
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/done-but-unanswered", content=b"done")
            assert seen[-1][4] == b"done", "the upstream acted on it"
            proxy.odds.update(lost_answer=0.0, slow=1.0)
            started = time.monotonic()
            assert (await client.get("/slow")).status_code == 207
            assert time.monotonic() - started >= 0.05
            assert proxy.injected == {"rate_limited": 1, "server_error": 1, "dropped": 1, "lost_answer": 1, "slow": 1}
            assert proxy.forwarded == 3


# -- a fault run ----------------------------------------------------------------------------------

N_CONVERSATIONS = 24
N_ROUNDS = 10


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_fault_run_delivers_everything_once_and_in_order(tmp_path: Path) -> None:
    odds = dict(rate_limited=0.10, server_error=0.05, slow=0.01, dropped=0.02, lost_answer=0.02, retry_after=1)
    async with world() as w:
        amojo, chat = w.amojo, w.chat
        to_amojo = FaultProxy(w.amojo_url, seed=1, error=fake_amojo.error_response, **odds)
        # A messenger's 429 holds the whole bot (the adapter's instance-wide rate limit): keep its wait short.
        odds_chat = {**odds, "retry_after": 0.2}
        to_chat = FaultProxy(w.chat_url, seed=2, error=fakechat_api.error_response, enabled=False, **odds_chat)
        async with to_amojo.serve() as amojo_proxy, to_chat.serve() as chat_proxy:
            config = base_config(
                tmp_path,
                channel={"amojo_url": amojo_proxy},
                sources=[{**source("bot", "main", chat, chat_proxy), "default": True}],
                server={"public_url": w.public},
                relay={"backoff": 0.05, "max_backoff": 1.0, "max_attempts": 10},
                http={"attempts": 4},
            )
            async with running(config, w.port) as runtime:
                await eventually(lambda: chat.webhook_url, within=10)
                to_chat.enabled = True  # the adapter's startup (setWebhook) went through; now the faults
                chats = [f"c{i}" for i in range(N_CONVERSATIONS)]
                for c in chats:
                    assert await chat.client_writes(c, "in 0") == 200
                await eventually(lambda: all(amojo.find_chat(f"bot:{c}") for c in chats), within=30)
                for i in range(1, N_ROUNDS):
                    for c in chats:
                        assert await chat.client_writes(c, f"in {i}") == 200
                        assert (await amojo.emit_text(SCOPE, f"bot:{c}", f"out {i}")).status == 200

                def sent(c: str) -> list[str]:
                    return [m.text for m in chat.sent_to(c)]

                def delivered(share: float) -> bool:
                    answers = sum(len(set(sent(c))) for c in chats)
                    everything_in = len(amojo.messages) == len(chats) * (2 * N_ROUNDS - 1)
                    return everything_in and answers >= share * len(chats) * (N_ROUNDS - 1)

                await eventually(lambda: delivered(0.9), within=30)  # most of the run under faults
                to_amojo.enabled = to_chat.enabled = False
                await eventually(lambda: delivered(1.0), within=30)

                await eventually(lambda: counts_are(runtime.store, queued=0, running=0))
                async with httpx.AsyncClient() as client:
                    metrics = (await client.get(f"{w.public}/metrics")).text
                dead = await runtime.store.dead_letters()

    inbound = [m for m in amojo.messages if m.from_client]
    assert len(inbound) == N_CONVERSATIONS * N_ROUNDS
    assert len({m.msgid for m in inbound}) == len(inbound), "no message reached amoCRM twice"
    duplicates = 0
    for c in chats:
        assert [m.text for m in amojo.messages_in(f"bot:{c}") if m.from_client] == [f"in {i}" for i in range(N_ROUNDS)]
        texts = sent(c)
        # A send whose answer was lost is sent again (messengers have no idempotency key), right after itself.
        unique = [t for k, t in enumerate(texts) if k == 0 or texts[k - 1] != t]
        assert unique == [f"out {i}" for i in range(1, N_ROUNDS)], f"order kept in {c}"
        duplicates += len(texts) - len(unique)
    assert duplicates == to_chat.injected["lost_answer"]

    assert failures(to_amojo) > 20 and failures(to_chat) > 10
    assert to_amojo.injected["slow"] + to_chat.injected["slow"] > 0
    # Every failed call was repeated: amojo calls within the job attempt first, the job when those ran out;
    # a send to the messenger is one call, repeated by retrying its job.
    http_retries = metric(metrics, "amoconnect_http_retries_total", service="amojo")
    repeated = http_retries + metric(metrics, "amoconnect_jobs_retried_total", kind="inbound")
    # aiohttp itself repeats, unseen, an idempotent request (a history lookup's GET) that a reused
    # connection lost without an answer: those failures may not reach the counts.
    unseen = sum(to_amojo.injected_on[kind, "GET"] for kind in ("dropped", "lost_answer"))
    assert failures(to_amojo) - unseen <= repeated <= failures(to_amojo)
    assert metric(metrics, "amoconnect_jobs_retried_total", kind="amocrm") == failures(to_chat) > 0
    assert metric(metrics, "amoconnect_jobs_dead_total") == 0 and dead == []
    assert metric(metrics, "amoconnect_jobs_succeeded_total") == len(amojo.messages)


# -- a revoked account ----------------------------------------------------------------------------

ACCOUNT_B = "77777777-8888-9999-0000-111111111111"
SCOPE_B = f"{CHANNEL}_{ACCOUNT_B}"
N_CHATS = 10


@pytest.mark.slow
async def test_a_revoked_account_goes_to_dead_letters_without_slowing_the_other(tmp_path: Path) -> None:
    async with world() as w:
        amojo, bot_a = w.amojo, w.chat
        amojo.connect(ACCOUNT_B, webhook_url=f"{w.public}/amocrm/:scope_id")
        bot_b = FakeChat("2:b", http=amojo.webhook_client)
        async with serve_app(bot_b.app) as b_url:
            config = base_config(
                tmp_path,
                channel={"amojo_url": w.amojo_url},
                accounts=[{"name": "a", "amojo_id": ACCOUNT}, {"name": "b", "amojo_id": ACCOUNT_B}],
                sources=[source("bot-a", "a", bot_a, w.chat_url), source("bot-b", "b", bot_b, b_url)],
                server={"public_url": w.public},
                # The defaults' patience: had a refusal been retried, each job would hold one of the
                # few slots through [http] attempts, then come back for [relay] max_attempts.
                relay={"concurrency": 4, "backoff": 1.0, "max_backoff": 600.0, "max_attempts": 10},
                http={"attempts": 4},
            )
            async with running(config, w.port) as runtime:
                chats = [f"c{i}" for i in range(N_CHATS)]
                for c in chats:
                    assert await bot_a.client_writes(c, "hello") == 200
                    assert await bot_b.client_writes(c, "hello") == 200
                await eventually(lambda: len(amojo.messages) == 2 * N_CHATS)
                welcome_id = (await amojo.emit_text(SCOPE_B, "bot-b:c0", "welcome")).message_id or ""
                (welcome,) = await eventually(lambda: bot_b.sent_to("c0"))
                # Its ids recorded, so the read status below is refused at once rather than first
                # waiting for that record (which would be a retry).
                await eventually(lambda: runtime.store.message_by_amocrm(SCOPE_B, welcome_id))
                amojo.disconnect(ACCOUNT_B)  # account b's admin turns the channel off
                with pytest.raises(LookupError):
                    await amojo.emit_text(SCOPE_B, "bot-b:c0", "amoCRM sends a disconnected scope no hooks")
                assert await bot_b.deliver_status("c0", welcome.message_id, "read") == 200

                for i in range(5):
                    for c in chats:
                        assert await bot_b.client_writes(c, f"b {i}") == 200
                        assert await bot_a.client_writes(c, f"a {i}") == 200
                        assert (await amojo.emit_text(SCOPE, f"bot-a:{c}", f"answer {i}")).status == 200

                def a_done() -> bool:
                    arrived = sum(1 for m in amojo.messages if m.scope_id == SCOPE and m.from_client)
                    return arrived == 6 * N_CHATS and all(len(bot_a.sent_to(c)) == 5 for c in chats)

                await eventually(a_done, within=10)
                dead_total = "amoconnect_jobs_dead_total"
                await eventually(lambda: metric(runtime.metrics.render().decode(), dead_total) == 5 * N_CHATS + 1)
                dead = await runtime.store.dead_letters()
                async with httpx.AsyncClient() as client:
                    metrics = (await client.get(f"{w.public}/metrics")).text
                listed = await anyio.to_thread.run_sync(lambda: jobs_list(tmp_path, config))

                amojo.connect(ACCOUNT_B)  # connected again: the dead letters are re-queued and go through
                assert await runtime.store.requeue() == 5 * N_CHATS + 1

                def b_done() -> bool:
                    arrived = sum(1 for m in amojo.messages if m.scope_id == SCOPE_B and m.from_client)
                    return arrived == 6 * N_CHATS and amojo.message(welcome_id).delivery_status == 2

                await eventually(b_done)

    # Account a kept its pace: account b's refusals were dead letters at once (below), never retries that
    # a's jobs could queue behind.
    assert [m.text for m in amojo.messages_in("bot-a:c3") if m.from_client] == ["hello", *(f"a {i}" for i in range(5))]
    # Account b's jobs (its clients' messages, the read status) are dead letters at their first refusal,
    # saying what to do (and once the account was connected again, re-queued, they went through).
    assert {(d.kind, d.scope_id, d.attempts) for d in dead} == {("inbound", SCOPE_B, 1)}
    assert all("not connected" in d.error and "amoconnect connect" in d.error for d in dead)
    assert metric(metrics, "amoconnect_jobs_dead_total", kind="inbound") == 5 * N_CHATS + 1
    assert metric(metrics, "amoconnect_jobs_retried_total") == metric(metrics, "amoconnect_http_retries_total") == 0
    assert listed["counts"]["dead"] == 5 * N_CHATS + 1
    assert {row["scope_id"] for row in listed["dead"]} == {SCOPE_B}


def jobs_list(tmp_path: Path, config: dict[str, Any]) -> Any:
    """``amoconnect jobs list --json`` on the running connector's store."""
    path = tmp_path / "amoconnect.toml"
    path.write_text(tomli_w.dumps(config))
    result = CliRunner().invoke(main, ["jobs", "list", "--json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)
