"""A connector wired to the fake amojo and the loopback test messenger, all in-process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from amoconnect.config import parse_config
from amoconnect.model import InboundEvent, InboundMessage, Person
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.store.base import Job
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.kit import eventually as eventually
from amoconnect.testing.stores import store_settings

MESSENGERS = Path(__file__).parent / "messengers"
CHANNEL = "11111111-2222-3333-4444-555555555555"
SECRET = "0123456789abcdef0123456789abcdef01234567"
ACCOUNT = "66666666-7777-8888-9999-000000000000"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
_encode = msgspec.json.Encoder().encode


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": "http://amojo.test"},
        "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
        "sources": [
            {
                "name": "lb",
                "plugin": "loopback",
                "account": "main",
                "default": True,
                "settings": {"files": {"f1": "PNGDATA"}},
            },
            {"name": "wa", "plugin": "windowed", "account": "main", "external_id": "wa-number"},
            {"name": "pl", "plugin": "plain", "account": "main"},
        ],
        "store": store_settings(tmp_path),
        "server": {"public_url": "http://amoconnect"},
        "relay": {"backoff": 0.01, "max_backoff": 0.05, "max_attempts": 3},
        "http": {"attempts": 2},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def message(chat: str, message_id: str, text: str = "hi", **fields: Any) -> InboundMessage:
    return InboundMessage(
        chat=chat,
        timestamp=fields.pop("timestamp", time.time()),
        dedup_key=fields.pop("dedup_key", f"m-{chat}-{message_id}"),
        sender=fields.pop("sender", Person(id=chat, name=f"Client {chat}")),
        message_id=message_id,
        text=text,
        **fields,
    )


@dataclass
class Rig:
    runtime: Runtime
    amojo: FakeAmojo
    scope_id: str = SCOPE

    @property
    def client(self) -> httpx.AsyncClient:
        return self.runtime.client

    def adapter(self, instance: str = "lb") -> Any:
        found = self.runtime.routing.get(instance)
        assert found is not None
        return found.adapter

    async def inbound(
        self, *events: InboundEvent, instance: str = "lb", secret: str = "loopback-secret"
    ) -> httpx.Response:
        from messengers.loopback import SIGNATURE_HEADER, sign

        plugin = self.adapter(instance).name
        body = _encode(list(events))
        return await self.client.post(
            f"/hooks/{plugin}/{instance}", content=body, headers={SIGNATURE_HEADER: sign(body, secret)}
        )


@asynccontextmanager
async def rig(tmp_path: Path, **overrides: Any) -> AsyncIterator[Rig]:
    fake = FakeAmojo(CHANNEL, SECRET)
    amojo_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://amojo.test")
    config = parse_config(base_config(tmp_path, **overrides))
    pm = get_plugin_manager(load_entrypoints=False, plugin_dirs=[MESSENGERS])
    runtime = Runtime(config, plugin_manager=pm, amojo_http=amojo_http)
    async with runtime:
        fake.webhook_client = runtime.client
        fake.connect(ACCOUNT, webhook_url="http://amoconnect/amocrm/:scope_id")
        yield Rig(runtime, fake)
    await amojo_http.aclose()


def lose_the_first_outcome(r: Rig, msgid: str) -> list[int]:
    """The first finish of the job that records ``msgid`` is lost, as in a crash just before it: the job
    runs again. Returns the jobs whose outcome was lost."""
    store = r.runtime.store
    finish = store.finish
    lost: list[int] = []

    async def finish_unless_first(job_id: int, **records: Any) -> Job | None:
        if not lost and any(m.msgid == msgid for m in records.get("messages", ())):
            lost.append(job_id)
            await store.retry(job_id, delay=0, error="crashed before its outcome was recorded")
            return None
        return await finish(job_id, **records)

    store.finish = finish_unless_first  # type: ignore[method-assign]
    return lost
