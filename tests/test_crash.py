"""Crash safety with real processes: ``amoconnect run`` is killed with SIGKILL mid-flow and restarted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import tomli_w
from processes import Slow, connector, free_port
from rig import ACCOUNT, CHANNEL, SCOPE, SECRET, base_config, message

from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import table_rows

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CONVERSATIONS = 20
N_MESSAGES = 300


async def restart_until_drained(
    config: Path, port: int, data: dict[str, Any], fake: FakeAmojo, total: int
) -> SimpleNamespace:
    """Start the connector again and wait (30 s at most) until amoCRM has ``total`` messages and the
    queue is empty; the store, for :func:`table_rows`."""
    store = SimpleNamespace(url=data["store"].get("url"), path=data["store"]["path"])
    async with connector(config, port):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(fake.messages) >= total and table_rows(store, "queue")[0][0] == 0:
                break
            await anyio.sleep(0.05)
    return store


async def test_kill_9_mid_flow_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    from messengers.loopback import SIGNATURE_HEADER, sign

    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    port = free_port()
    # amojo answers slowly enough (4 in flight, 50 ms each) that the relay cannot keep up with the
    # webhooks, so the kill lands while acknowledged messages are still queued.
    async with serve_app(Slow(fake.app, 0.05)) as amojo_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url}, relay={"concurrency": 4, "backoff": 0.05})
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        events = [message(f"c{i % N_CONVERSATIONS}", str(i), f"m{i}") for i in range(N_MESSAGES)]
        acked: set[int] = set()
        url = f"http://127.0.0.1:{port}/hooks/loopback/lb"

        async def post(client: httpx.AsyncClient, i: int) -> None:
            body = msgspec.json.encode([events[i]])
            try:
                response = await client.post(url, content=body, headers={SIGNATURE_HEADER: sign(body)})
            except httpx.TransportError:
                return  # not acknowledged: the messenger will send it again
            if response.status_code == 200:
                acked.add(i)

        async with connector(config, port) as proc, httpx.AsyncClient(timeout=5) as client:
            killed_at = None
            for i in range(N_MESSAGES):
                await post(client, i)
                if len(acked) >= N_MESSAGES // 2 and killed_at is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    await proc.wait()
                    killed_at = len(fake.messages)
                    break
        assert killed_at is not None
        assert killed_at < len(acked), "the kill should land while acknowledged messages are still queued"
        restarted = time.monotonic()
        async with connector(config, port), httpx.AsyncClient(timeout=5) as client:
            first_after = None
            # A messenger re-sends what we did not acknowledge, and re-sends some it did (it cannot know).
            for i in range(N_MESSAGES):
                if i not in acked or i % 10 == 0:
                    await post(client, i)
                if first_after is None and len(fake.messages) > killed_at:
                    first_after = time.monotonic() - restarted
            deadline = time.monotonic() + 30
            while len(fake.messages) < N_MESSAGES and time.monotonic() < deadline:
                await anyio.sleep(0.05)
    msgids = [m.msgid for m in fake.messages]
    assert len(msgids) == N_MESSAGES == len(set(msgids)), "each message reaches amoCRM exactly once"
    for c in range(N_CONVERSATIONS):
        texts = [m.text for m in fake.messages if m.conversation_id == f"lb:c{c}"]
        assert texts == [f"m{i}" for i in range(c, N_MESSAGES, N_CONVERSATIONS)], f"order in conversation c{c}"
    assert SCOPE in fake.connections


class HeldAfter:
    """Passes the first ``count`` requests to ``app``, then holds the others until :meth:`release`."""

    def __init__(self, app: Any, count: int) -> None:
        self.app, self.count = app, count
        self._released = anyio.Event()

    def release(self) -> None:
        self._released.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if self.count > 0:
                self.count -= 1
            else:
                await self._released.wait()
        await self.app(scope, receive, send)


async def test_kill_9_while_sending_to_the_messenger_loses_no_manager_message(tmp_path: Path) -> None:
    from amoconnect.testing.fakechat_api import FakeChat

    port = free_port()
    async with httpx.AsyncClient(timeout=5) as http:
        fake = FakeAmojo(CHANNEL, SECRET, webhook_client=http)
        fake.connect(ACCOUNT, webhook_url=f"http://127.0.0.1:{port}/amocrm/:scope_id")
        chat = FakeChat("42:token", http=http, delivery_backoff=0.01)
        # The messenger takes 30 requests, then holds every other one until the connector is dead:
        # the kill lands with sends in flight and acknowledged answers queued, however fast the relay is.
        messenger = HeldAfter(chat.app, 30)
        async with serve_app(fake.app) as amojo_url, serve_app(messenger) as chat_url:
            data = base_config(tmp_path, channel={"amojo_url": amojo_url}, relay={"concurrency": 8, "backoff": 0.05})
            data["sources"] = [
                {
                    "name": "bot",
                    "plugin": "fake",
                    "account": "main",
                    "default": True,
                    "settings": chat.sandbox_settings(chat_url),
                }
            ]
            data["server"]["public_url"] = f"http://127.0.0.1:{port}"
            config = tmp_path / "amoconnect.toml"
            config.write_text(tomli_w.dumps(data))
            conversations = [f"c{i}" for i in range(10)]
            async with connector(config, port) as proc:
                for c in conversations:
                    assert await chat.client_writes(c, "hello") == 200
                deadline = time.monotonic() + 10
                while len(fake.messages) < len(conversations) and time.monotonic() < deadline:
                    await anyio.sleep(0.02)
                acked = []
                for i in range(200):
                    c = conversations[i % len(conversations)]
                    result = await fake.emit_text(SCOPE, f"bot:{c}", f"answer {i}")
                    if result.status == 200:
                        acked.append(i)
                    if len(acked) == 100:
                        os.kill(proc.pid, signal.SIGKILL)
                        await proc.wait()
                        break
            delivered_at_kill = sum(len([m for m in chat.sent_to(c)]) for c in conversations)
            assert delivered_at_kill <= 30, "the kill lands while acknowledged answers are still queued"
            messenger.release()  # the sends held in flight reach the messenger now, their answers nowhere
            async with connector(config, port):
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    texts = {m.text for c in conversations for m in chat.sent_to(c)}
                    if all(f"answer {i}" in texts for i in acked):
                        break
                    await anyio.sleep(0.05)
    sent = [m.text for c in conversations for m in chat.sent_to(c)]
    assert all(f"answer {i}" in sent for i in acked), "every acknowledged manager message reaches the client"
    duplicates = len(sent) - len(set(sent))
    assert duplicates <= 8, "at most the sends in flight at the kill (relay.concurrency) go out twice"
    for c in conversations:
        texts = [m.text for m in chat.sent_to(c)]
        numbers = [int(t.split()[1]) for t in texts]
        assert numbers == sorted(numbers), f"order kept in {c}"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_after_a_kill_9_every_duplicate_gets_amocrm_s_id_back(tmp_path: Path, transport: str) -> None:
    """amojo takes each send at once but answers 80 ms later; the connector dies with sends in
    flight. Restarted, it sends those again: amojo refuses them as duplicates, and the history
    lookup (signed over the request-target the transport really sends, by amoCRM's chat id)
    recovers amoCRM's id of every one. Chat names need quoting in every path."""
    from messengers.loopback import SIGNATURE_HEADER, sign

    chats = [f"c{i} :/%ü?#" for i in range(10)]
    total = 120
    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    slow = Slow(fake.app, 0.08, hold_answer=True)
    port = free_port()
    async with serve_app(slow) as amojo_url:
        data = base_config(
            tmp_path,
            channel={"amojo_url": amojo_url},
            relay={"concurrency": 8, "backoff": 0.05, "max_attempts": 20},
            http={"transport": transport},
        )
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        url = f"http://127.0.0.1:{port}/hooks/loopback/lb"
        events = [message(chats[i % len(chats)], str(i), f"m{i}") for i in range(total)]
        async with connector(config, port) as proc, httpx.AsyncClient(timeout=5) as client:
            for event in events:
                body = msgspec.json.encode([event])
                response = await client.post(url, content=body, headers={SIGNATURE_HEADER: sign(body)})
                assert response.status_code == 200
            deadline = time.monotonic() + 10
            while not (len(fake.messages) >= total // 4 and slow.in_flight) and time.monotonic() < deadline:
                await anyio.sleep(0.005)
            assert slow.in_flight, "the kill should land while sends are in flight"
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        store = await restart_until_drained(config, port, data, fake, total)
    msgids = [m.msgid for m in fake.messages]
    assert len(msgids) == total == len(set(msgids)), "each message reaches amoCRM exactly once"
    for chat in chats:
        texts = [m.text for m in fake.messages if m.conversation_id == f"lb:{chat}"]
        assert texts == [e.text for e in events if e.chat == chat], f"order in {chat!r}"
    duplicates = [q for q in fake.requests if q.status == 400]
    assert duplicates, "some send went through unanswered before the kill"
    assert all(q.path == f"/v2/origin/custom/{SCOPE}" for q in duplicates), "only duplicate msgids are refused"
    history = [q for q in fake.requests if q.path.endswith("/history")]
    assert len(history) >= len(duplicates)
    assert {q.status for q in history} == {200}, "no history lookup refused or empty"
    assert not [q for q in fake.requests if q.status == 403], "every signature matched what was sent"
    recorded = dict(table_rows(store, "messages WHERE direction = 'in'", "msgid, amocrm_id"))
    assert recorded == {m.msgid: m.id for m in fake.messages}, "amoCRM's id of every message is recorded"


async def test_kill_9_while_a_finish_is_not_yet_on_disk_sends_the_chat_once_in_order(tmp_path: Path) -> None:
    """One chat's backlog drains with finishes that do not wait for the disk (inbound jobs are
    repeatable); the process dies at ``relay.ahead``: amojo answered a job started while the
    previous finish may not have been on disk. Restarted, the chat's messages reach amoCRM once
    each, in order, every one with amoCRM's id recorded (a repeated send is refused as a duplicate
    and its id found in the history)."""
    from messengers.loopback import SIGNATURE_HEADER, sign

    from amoconnect.crashpoints import ENV as CRASH_AT

    total = 60
    fake = FakeAmojo(CHANNEL, SECRET)
    fake.connect(ACCOUNT)
    amojo = HeldAfter(fake.app, 0)  # holds every send until the backlog is queued
    port = free_port()
    async with serve_app(amojo) as amojo_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url}, relay={"backoff": 0.05})
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        url = f"http://127.0.0.1:{port}/hooks/loopback/lb"
        events = [message("chat", str(i), f"m{i}") for i in range(total)]
        async with connector(config, port, {CRASH_AT: "relay.ahead.inbound:20"}) as proc:
            async with httpx.AsyncClient(timeout=5) as client:
                for event in events:
                    body = msgspec.json.encode([event])
                    response = await client.post(url, content=body, headers={SIGNATURE_HEADER: sign(body)})
                    assert response.status_code == 200
            amojo.release()
            with anyio.fail_after(20):
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL, "the crash point was reached"
        assert 20 < len(fake.messages) < total, "the kill lands while the backlog drains"
        store = await restart_until_drained(config, port, data, fake, total)
    assert [m.text for m in fake.messages] == [e.text for e in events], "each message once, in order"
    assert [q for q in fake.requests if q.status == 400], "the job amojo answered before the kill was sent again"
    recorded = dict(table_rows(store, "messages WHERE direction = 'in'", "msgid, amocrm_id"))
    assert recorded == {m.msgid: m.id for m in fake.messages}, "amoCRM's id of every message is recorded"
