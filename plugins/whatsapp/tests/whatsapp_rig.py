"""Helpers of the WhatsApp plugin's tests: state, a media host, routing, a webhook receiver, the core rig."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from amoconnect.adapter import WebhookRequest
from amoconnect.config import parse_config
from amoconnect.errors import SignatureError
from amoconnect.model import InboundEvent
from amoconnect.plugins import get_plugin_manager
from amoconnect.runtime import Runtime
from amoconnect.testing.fake_amocrm import FakeAmoCRM
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.fakes import MemoryState
from amoconnect.testing.kit import LOOPBACK_NETWORKS, eventually, loopback_resolver, routed_host
from amoconnect.testing.stores import store_settings
from starlette.requests import Request
from starlette.responses import Response

from amoconnect_whatsapp.adapter import WhatsAppAdapter
from amoconnect_whatsapp.fake import FakeWhatsApp

API = "http://graph.test"
FILES = "http://files.test"
PUBLIC = "http://connector.test/hooks/whatsapp/main"
CHANNEL = "11111111-2222-3333-4444-555555555555"
SECRET = "0123456789abcdef0123456789abcdef01234567"
BOT = "b0770000-0000-4000-8000-000000000b07"
ACCOUNT = "66666666-7777-8888-9999-000000000000"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
APP_SECRET = "test-app-secret"
VERIFY = "test-verify-token"


class Files:
    """Media amoCRM would serve: path → (bytes, content type); every request is recorded."""

    def __init__(self) -> None:
        self.content: dict[str, tuple[bytes, str]] = {
            "/cat.jpg": (b"\xff\xd8\xff jpeg bytes", "image/jpeg"),
            "/report.pdf": (b"%PDF-1.4 pdf bytes", "application/pdf"),
            "/clip.mp4": (b"mp4 bytes", "video/mp4"),
            "/note.ogg": (b"OggS voice", "audio/ogg"),
            "/sticker.webp": (b"RIFF webp", "image/webp"),
        }
        self.requests: list[str] = []
        self.hidden: set[str] = set()
        """Paths only the connector may fetch (the fake's fetches fail): forces the upload."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        found = self.content.get(request.url.path)
        if found is None:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=found[0], headers={"content-type": found[1]})

    def public_handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in self.hidden:
            return httpx.Response(403, text="forbidden")
        return self.handler(request)


class HostRouter(httpx.AsyncBaseTransport):
    """Routes requests by host to in-process transports; ``late`` hosts resolve their app when used."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport | Callable[[], Any]]) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = routed_host(request)
        route = self.routes.get(host)
        if route is None:
            raise httpx.ConnectError(f"no route to {host}", request=request)
        transport = route if isinstance(route, httpx.AsyncBaseTransport) else httpx.ASGITransport(app=route())
        return await transport.handle_async_request(request)


class Receiver:
    """The connector's webhook endpoint in miniature: verify, parse, collect."""

    def __init__(self) -> None:
        self.adapter: WhatsAppAdapter | None = None
        self.events: list[InboundEvent] = []
        self.refused = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        assert self.adapter is not None
        path = request.url.path.removeprefix("/hooks/whatsapp/main").strip("/")
        hook = WebhookRequest(
            method=request.method,
            path=path,
            headers=httpx.Headers(request.headers.raw),
            query=httpx.QueryParams(request.url.query),
            body=await request.body(),
        )
        try:
            early = await self.adapter.verify(hook)
            if early is None:
                self.events.extend(await self.adapter.parse(hook))
        except SignatureError:
            self.refused += 1
            await Response(status_code=401)(scope, receive, send)
            return
        if early is not None:
            await Response(early.body, status_code=early.status)(scope, receive, send)
            return
        await Response(status_code=200)(scope, receive, send)


@dataclass
class Rig:
    """An adapter wired to the fake, with what it submitted through ``context.submit``."""

    adapter: WhatsAppAdapter
    state: MemoryState
    submitted: list[InboundEvent]
    receiver: Receiver

    @property
    def events(self) -> list[InboundEvent]:
        """Events of webhooks."""
        return self.receiver.events


@contextlib.asynccontextmanager
async def running(adapter: WhatsAppAdapter) -> AsyncIterator[None]:
    """The adapter's ``run()`` in the background for the duration of the block."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(adapter.run)
        yield
        tasks.cancel_scope.cancel()


# -- the whole connector ----------------------------------------------------------------------------


def settings(fake: FakeWhatsApp, phone_number_id: str, **extra: Any) -> dict[str, Any]:
    number = fake.numbers[phone_number_id]
    return {
        "phone_number_id": number.phone_number_id,
        "waba_id": number.waba_id,
        "token": number.token,
        "app_secret": APP_SECRET,
        "verify_token": VERIFY,
        "api_url": API,
        "register_webhook": "number",
        **extra,
    }


@dataclass
class World:
    """The runtime between a fake amojo, a fake WhatsApp (two numbers) and a fake amoCRM."""

    runtime: Runtime
    amojo: FakeAmojo
    fake: FakeWhatsApp
    amocrm: FakeAmoCRM
    files: Files
    scope_id: str = SCOPE
    extra: dict[str, Any] = field(default_factory=dict)

    def adapter(self, instance: str = "wa1") -> WhatsAppAdapter:
        found = self.runtime.routing.get(instance)
        assert found is not None
        assert isinstance(found.adapter, WhatsAppAdapter)
        return found.adapter

    def conversation(self, chat: str, instance: str = "wa1") -> str:
        return f"{instance}:{chat}"


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path,
    *,
    fake_options: dict[str, Any] | None = None,
    review_poll: float = 0.2,
    again: World | None = None,
    max_attempts: int = 6,
    **instance_settings: Any,
) -> AsyncIterator[World]:
    """The connector between the fakes; ``again`` restarts it over an earlier world's fakes and store."""
    files = again.files if again is not None else Files()
    amocrm = again.amocrm if again is not None else FakeAmoCRM(rate_limit=None)
    amocrm_token = next(iter(amocrm.access_tokens), None) or amocrm.add_long_lived_token()
    if again is not None:
        fake = again.fake
    else:
        fake = FakeWhatsApp(
            app_secret=APP_SECRET,
            fetch_http=httpx.AsyncClient(transport=httpx.MockTransport(files.public_handler)),
            delivery_backoff=0.01,
            **(fake_options or {}),
        )
        fake.add_number("1000000001", waba_id="2000000001", token="token-one")
        fake.add_number("1000000002", waba_id="2000000001", token="token-two")
    amojo = again.amojo if again is not None else FakeAmojo(CHANNEL, SECRET, bot_id=BOT)
    runtime_holder: list[Runtime] = []
    connector = HostRouter({"amoconnect": lambda: runtime_holder[0].app})
    fake.http = connector_client = httpx.AsyncClient(transport=connector)
    messenger_http = httpx.AsyncClient(
        transport=HostRouter(
            {
                "graph.test": httpx.ASGITransport(app=fake.app),
                "files.test": httpx.MockTransport(files.handler),
                "example.amocrm.ru": httpx.ASGITransport(app=amocrm.app),
            }
        )
    )
    amojo_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo.app), base_url="http://amojo.test")
    review = {"amocrm_url": amocrm.base_url, "amocrm_token": amocrm_token, "poll_interval": review_poll}
    review_on = instance_settings.pop("template_review", False)
    first = settings(fake, "1000000001", **instance_settings)
    if review_on:
        first["template_review"] = review
    config = parse_config(
        {
            "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": "http://amojo.test", "bot_id": BOT},
            "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
            "sources": [
                {"name": "wa1", "plugin": "whatsapp", "account": "main", "default": True, "settings": first},
                {
                    "name": "wa2",
                    "plugin": "whatsapp",
                    "account": "main",
                    "external_id": "second-number",
                    "settings": settings(fake, "1000000002", **instance_settings),
                },
            ],
            "store": store_settings(tmp_path),
            "server": {"public_url": "http://amoconnect"},
            "relay": {"backoff": 0.01, "max_backoff": 0.05, "max_attempts": max_attempts},
            "http": {"attempts": 1, "media_allow_networks": list(LOOPBACK_NETWORKS)},
        }
    )
    pm = get_plugin_manager(only="whatsapp")
    runtime = Runtime(
        config, plugin_manager=pm, amojo_http=amojo_http, messenger_http=messenger_http, resolver=loopback_resolver
    )
    runtime_holder.append(runtime)
    try:
        async with fake.running(), runtime:
            amojo.webhook_client = runtime.client
            amojo.connect(ACCOUNT, webhook_url="http://amoconnect/amocrm/:scope_id")
            await eventually(lambda: all(n.webhook_url for n in fake.numbers.values()))
            yield World(runtime, amojo, fake, amocrm, files)
    finally:
        await messenger_http.aclose()
        await amojo_http.aclose()
        await connector_client.aclose()
