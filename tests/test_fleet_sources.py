"""A source added at run time in a fleet of real processes: ``amoconnect sources add`` (a process of its
own) writes it to the PostgreSQL store of three ``amoconnect run`` processes; each serves it soon after
through its notification, a write that notified nobody reaches them through the periodic check, and a
client's message to the new bot is accepted by any of them and reaches amoCRM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import tomli_w
from amoconnect_telegram.fake import FakeTelegram
from anyio.abc import Process
from processes import free_port, start_connector, stop_connector
from rig import ACCOUNT, CHANNEL, SECRET, base_config, eventually

from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import fresh_postgres_schema, run_sql

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BOT_TOKEN = "4242:fleet-bot-token-" + "k" * 20
SECRET_TOKEN = "fleet-webhook-secret"


def update(update_id: int, text: str) -> dict[str, Any]:
    """A Telegram update: a client's text message to the bot."""
    client = {"id": 5001, "is_bot": False, "first_name": "Ann"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": {"id": 5001, "type": "private", "first_name": "Ann"},
            "from": client,
            "text": text,
        },
    }


async def deliver(port: int, source: str, body: dict[str, Any]) -> int:
    """POST ``body`` to the process on ``port`` as Telegram would; the status."""
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://127.0.0.1:{port}/hooks/telegram/{source}",
            json=body,
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET_TOKEN},
        )
    return answer.status_code


@pytest.mark.timeout(120)
async def test_a_source_added_by_the_cli_serves_in_every_process_of_a_postgres_fleet(
    tmp_path: Path, postgres: str
) -> None:
    amojo = FakeAmojo(CHANNEL, SECRET)
    amojo.connect(ACCOUNT)
    telegram = FakeTelegram(BOT_TOKEN)
    async with serve_app(amojo.app) as amojo_url, serve_app(telegram.app) as telegram_url:
        data = base_config(tmp_path, channel={"amojo_url": amojo_url}, log_level="warning")
        data["store"] = {
            "url": fresh_postgres_schema(postgres),
            "lease": 2.0,
            "path": str(tmp_path / "unused.sqlite3"),
            "media_dir": str(tmp_path / "media"),
        }
        store = data["store"]
        config = tmp_path / "amoconnect.toml"
        config.write_text(tomli_w.dumps(data))
        procs: dict[int, Process] = {}

        async def start(port: int) -> None:
            procs[port] = await start_connector(config, port)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(start, free_port())
            ports = list(procs)
            assert [await deliver(port, "newbot", update(1, "too early")) for port in ports] == [404] * 3

            settings = {**telegram.settings(telegram_url), "secret_token": SECRET_TOKEN}
            added = await anyio.run_process(
                [sys.executable, "-m", "amoconnect", "sources", "add", "--account", "main", "--name", "newbot",
                 "--plugin", "telegram", "--settings", json.dumps(settings), "--config", str(config), "--json"],
                check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert added.returncode == 0, added.stdout.decode() + added.stderr.decode()
            steps = [(s["step"], s["outcome"]) for s in json.loads(added.stdout)["steps"]]
            assert ("record", "done") in steps

            # Every process serves the new bot (its notification), each accepting a message of its own.
            for n, port in enumerate(ports, start=10):
                await eventually(lambda port=port, n=n: _accepted(port, "newbot", update(n, f"hello {n}")), within=10)
            await eventually(lambda: {f"hello {n}" for n in range(10, 13)} <= {m.text for m in amojo.messages}, 20)

            # A write that notifies nobody (here plain SQL): each process finds it at its periodic check.
            stored = run_sql(_store(store), "SELECT settings FROM sources WHERE name = 'newbot'")[0][0]
            run_sql(
                _store(store),
                "WITH r AS (UPDATE registry_revision SET revision = revision + 1 RETURNING revision) "
                "INSERT INTO sources SELECT 'quietbot', 'main', 'telegram', 'quietbot', '', FALSE, "
                f"'{stored}', '{{}}', NULL, 'active', NULL, r.revision FROM r RETURNING name",
            )
            for n, port in enumerate(ports, start=20):
                await eventually(lambda port=port, n=n: _accepted(port, "quietbot", update(n, f"quiet {n}")), 10)
            assert all(proc.returncode is None for proc in procs.values())
        finally:
            with anyio.CancelScope(shield=True):
                for proc in procs.values():
                    await stop_connector(proc)


async def _accepted(port: int, source: str, body: dict[str, Any]) -> bool:
    return await deliver(port, source, body) == 200


def _store(settings: dict[str, Any]) -> SimpleNamespace:
    """What ``run_sql`` needs of a store: its URL."""
    return SimpleNamespace(url=settings["url"], path=settings["path"])
