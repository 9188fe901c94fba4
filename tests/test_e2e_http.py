"""End to end over real HTTP on loopback: uvicorn serving the connector, the fake amojo and fakechat."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import tomli_w
from click.testing import CliRunner
from processes import Slow, connector, free_port, listening, start_connector, stop_connector
from rig import ACCOUNT, CHANNEL, SCOPE, SECRET, eventually

from amoconnect.cli import main
from amoconnect.config import parse_config
from amoconnect.runtime import Runtime, serve
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.fakechat_api import ClientMedia, FakeChat
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import store_settings

pytestmark = pytest.mark.anyio


@dataclass
class World:
    amojo: FakeAmojo
    chat: FakeChat
    amojo_url: str
    chat_url: str
    port: int

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, tmp_path: Path) -> dict:  # type: ignore[type-arg]
        return {
            "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": self.amojo_url},
            "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
            "sources": [
                {
                    "name": "bot",
                    "plugin": "fake",
                    "account": "main",
                    "default": True,
                    "settings": self.chat.sandbox_settings(self.chat_url),
                }
            ],
            "server": {"public_url": self.public},
            "store": store_settings(tmp_path),
            "relay": {"backoff": 0.05, "shutdown_timeout": 5.0},
        }


@asynccontextmanager
async def world(amojo_delay: float = 0.0, chat_api: Callable[[Any], Any] | None = None) -> AsyncIterator[World]:
    """The fakes on loopback; ``chat_api`` wraps the messenger's API app (e.g. in :class:`Slow`)."""
    async with httpx.AsyncClient(timeout=10) as http:
        amojo = FakeAmojo(CHANNEL, SECRET, webhook_client=http)
        chat = FakeChat("42:token", http=http, delivery_backoff=0.01)
        port = free_port()
        amojo.connect(ACCOUNT, webhook_url=f"http://127.0.0.1:{port}/amocrm/:scope_id")
        app = Slow(amojo.app, amojo_delay) if amojo_delay else amojo.app
        api = chat_api(chat.app) if chat_api is not None else chat.app
        async with serve_app(app) as amojo_url, serve_app(api) as chat_url:
            yield World(amojo, chat, amojo_url, chat_url, port)


async def test_both_directions_with_media_over_real_http(tmp_path: Path) -> None:
    async with world() as w:
        runtime = Runtime(parse_config(w.config(tmp_path)), plugin="fake")
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: serve(runtime, host="127.0.0.1", port=w.port, stop=stop))
            await eventually(lambda: w.chat.webhook_url, within=10)  # the adapter registered its webhook
            assert w.chat.webhook_url == f"{w.public}/hooks/fake/bot"
            await eventually(lambda: listening(w.public))
            assert await w.chat.client_writes("c1", "hello over HTTP") == 200
            photo = ClientMedia(kind="picture", content=b"\x89PNG...", file_name="cat.png", mime_type="image/png")
            assert await w.chat.client_writes("c1", "a cat", media=photo) == 200
            stored = await eventually(lambda: len(w.amojo.messages_in("bot:c1")) == 2 and w.amojo.messages_in("bot:c1"))
            assert stored[0].text == "hello over HTTP"
            media_url = stored[1].content.media
            assert media_url is not None
            assert media_url.startswith(f"{w.public}/media/")
            async with httpx.AsyncClient() as client:
                downloaded = await client.get(media_url)
            assert downloaded.content == b"\x89PNG..."
            assert downloaded.headers["content-type"] == "image/png"
            emitted = await w.amojo.emit_reply(SCOPE, "bot:c1", stored[0].id, "hello back")
            assert emitted.status == 200
            sent = await eventually(lambda: [m for m in w.chat.sent_to("c1") if m.text == "hello back"])
            await w.chat.deliver_status("c1", sent[0].message_id, "read")
            statuses = await eventually(lambda: w.amojo.message(emitted.message_id or "").statuses)
            assert statuses[-1].delivery_status == 2
            stop.set()


async def test_sigterm_finishes_the_sends_in_flight_and_a_restart_sends_the_rest_once(tmp_path: Path) -> None:
    """A rolling upgrade sends nothing twice and loses nothing: on SIGTERM the sends in flight to a
    slow messenger finish and are recorded (``shutdown_timeout`` is long enough), and the restarted
    process sends each of the others once."""
    slow: list[Slow] = []

    def slow_api(app: Any) -> Slow:
        slow.append(Slow(app, 1.0, hold_answer=True))  # each send takes effect, its answer takes a second
        return slow[0]

    async with world(chat_api=slow_api) as w:
        config = tmp_path / "amoconnect.toml"
        data = w.config(tmp_path)
        data["relay"].update(concurrency=4, shutdown_timeout=10.0)
        config.write_text(tomli_w.dumps(data))
        chats = [f"c{i}" for i in range(12)]

        def received() -> dict[str, list[str]]:
            return {c: [m.text for m in w.chat.sent_to(c)] for c in chats}

        proc = await start_connector(config, w.port, log=tmp_path / "first.log")
        try:
            for c in chats:
                assert await w.chat.client_writes(c, "hello") == 200
            await eventually(lambda: all(w.amojo.find_chat(f"bot:{c}") for c in chats), within=15)
            for c in chats:
                assert (await w.amojo.emit_text(SCOPE, f"bot:{c}", f"answer {c}")).status == 200
            await eventually(lambda: slow[0].in_flight == 4, within=10)  # four sends under way, eight queued
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                await proc.wait()
        finally:
            await stop_connector(proc)
        assert proc.returncode == 0
        await eventually(lambda: slow[0].in_flight == 0)  # nothing left on its way to the messenger
        before_restart = received()
        sent = [c for c in chats if before_restart[c]]
        assert len(sent) >= 4, "the sends in flight at SIGTERM finished"
        assert all(before_restart[c] == [f"answer {c}"] for c in sent)
        log = await anyio.Path(tmp_path / "first.log").read_text()
        assert "left queued at shutdown" not in log

        async with connector(config, w.port):
            await eventually(lambda: all(received()[c] for c in chats), within=30)
            await eventually(lambda: slow[0].in_flight == 0)
        assert received() == {c: [f"answer {c}"] for c in chats}, "each sent once"


async def test_connect_and_disconnect_commands(tmp_path: Path) -> None:
    async with world() as w:
        w.amojo.connections.clear()
        config = tmp_path / "amoconnect.toml"
        data = w.config(tmp_path)
        data["accounts"][0]["time_window_disabled"] = True
        config.write_text(tomli_w.dumps(data))
        runner = CliRunner()
        result = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["connect", "--config", str(config)]))
        assert result.exit_code == 0, result.output
        assert f"main: scope_id = {SCOPE}" in result.output
        assert w.amojo.connections[SCOPE].connected
        assert w.amojo.connections[SCOPE].is_time_window_disabled is True
        result = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["disconnect", "--config", str(config)]))
        assert result.exit_code == 0, result.output
        assert not w.amojo.connections[SCOPE].connected
        w.amojo.connect(ACCOUNT)
        checked = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["check", "--config", str(config)]))
        assert checked.exit_code == 0, checked.output
        bad = w.config(tmp_path)
        bad["channel"]["secret"] = "f" * 40
        config.write_text(tomli_w.dumps(bad))
        checked = await anyio.to_thread.run_sync(lambda: runner.invoke(main, ["check", "--config", str(config)]))
        assert checked.exit_code == 1
        assert "amojo at http://127.0.0.1:" in checked.output
        assert "refused the signature of a signed request for a chat's history: check channel.secret" in checked.output
