"""End to end over real HTTP on loopback: uvicorn serving the connector, the fake amojo and fakechat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
import tomli_w
from click.testing import CliRunner
from processes import Slow, free_port, listening
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
async def world(amojo_delay: float = 0.0) -> AsyncIterator[World]:
    async with httpx.AsyncClient(timeout=10) as http:
        amojo = FakeAmojo(CHANNEL, SECRET, webhook_client=http)
        chat = FakeChat("42:token", http=http, delivery_backoff=0.01)
        port = free_port()
        amojo.connect(ACCOUNT, webhook_url=f"http://127.0.0.1:{port}/amocrm/:scope_id")
        app = Slow(amojo.app, amojo_delay) if amojo_delay else amojo.app
        async with serve_app(app) as amojo_url, serve_app(chat.app) as chat_url:
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


async def test_sigterm_drains_and_restart_delivers_the_rest(tmp_path: Path) -> None:
    async with world(amojo_delay=0.05) as w:
        config = tmp_path / "amoconnect.toml"
        data = w.config(tmp_path)
        data["relay"]["concurrency"] = 4
        config.write_text(tomli_w.dumps(data))
        cmd = [sys.executable, "-m", "amoconnect", "run", "--config", str(config), "--port", str(w.port)]
        log = tmp_path / "run.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                await eventually(lambda: listening(w.public), within=15)  # the webhook is set before the port is open
                for i in range(40):
                    assert await w.chat.client_writes(f"c{i % 8}", f"m{i}") == 200
            except BaseException:
                proc.kill()  # a failed step must not leave the server running
                proc.wait()
                raise
            os.kill(proc.pid, signal.SIGTERM)
            started = time.monotonic()
            while proc.poll() is None and time.monotonic() - started < 15:
                await anyio.sleep(0.05)
            assert proc.returncode == 0, log.read_text()
            assert "draining" in log.read_text() or len(w.amojo.messages) == 40
            delivered_before_restart = len(w.amojo.messages)
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                await eventually(lambda: len(w.amojo.messages) == 40, within=20)
            finally:
                proc.terminate()
                proc.wait(15)
        assert delivered_before_restart <= 40
        assert len({m.msgid for m in w.amojo.messages}) == 40


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
        assert "amojo refused the signature" in checked.output
