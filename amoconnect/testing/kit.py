"""A whole connector for a plugin's tests: the runtime between the fake amojo and the messenger's fake.

::

    async with connector(FakeChatAdapter, workdir=tmp_path) as rig:
        await rig.fake.client_writes("c1", "Hello")              # a client writes in the messenger
        (arrived,) = await rig.arrived("c1")                       # ... and amoCRM has it
        await rig.manager_writes("c1", "Hi!", reply_to=arrived.id)  # a manager answers
        (answer,) = await rig.received("c1")                       # ... and the client has it

Everything runs in-process over ``httpx.ASGITransport``: the runtime (:attr:`ConnectorRig.runtime`)
reaches the fake amojo at :data:`AMOJO_URL` and the messenger's fake at its own host; the fakes
reach the runtime at :data:`PUBLIC_URL`. Manager actions go out as signed amoCRM webhooks
(``manager_*``); :meth:`ConnectorRig.arrived` and :meth:`ConnectorRig.received` wait for what
reaches either side. The pytest plugin (:mod:`amoconnect.testing.pytest_plugin`) wraps this in
fixtures.
"""

from __future__ import annotations

import inspect
import ipaddress
import tempfile
import time
import types
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import msgspec
import pluggy
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import ids
from ..adapter import MessengerAdapter
from ..amojo import wire
from ..config import parse_config
from ..errors import PluginError
from ..hookspecs import RegisterMessenger, hookimpl
from ..model import Button, ListMessage, MediaKind, Template
from ..plugins import collect_messengers, get_plugin_manager
from ..runtime import Runtime
from ..store.base import ConversationRecord
from ..urlguard import UrlGuard, parse_networks
from .fake_amojo import EmitResult, FakeAmojo, StoredMessage
from .stores import counts_are, store_settings

__all__ = [
    "ACCOUNT",
    "AMOJO_URL",
    "BOT",
    "CHANNEL",
    "FILES_URL",
    "LOOPBACK_NETWORKS",
    "PUBLIC_URL",
    "SAMPLE_FILES",
    "SCOPE",
    "SECRET",
    "ConnectorRig",
    "HostRouter",
    "connector",
    "eventually",
    "load_plugin",
    "loopback_resolver",
    "rig_config",
    "rig_guard",
    "routed_host",
    "serve_sample",
]

CHANNEL: Final = "11111111-2222-3333-4444-555555555555"
"""The channel id of the rig's fake amojo."""
SECRET: Final = "0123456789abcdef0123456789abcdef01234567"
"""The channel secret the rig's webhooks are signed with."""
ACCOUNT: Final = "66666666-7777-8888-9999-000000000000"
"""The amojo id of the rig's one amoCRM account."""
BOT: Final = "b0770000-0000-4000-8000-000000000b07"
"""The channel bot's id (``channel.bot_id``): sender of what the business writes outside amoCRM."""
SCOPE: Final = f"{CHANNEL}_{ACCOUNT}"
"""The account's scope id."""
PUBLIC_URL: Final = "http://amoconnect"
"""Where the fakes reach the connector (its ``server.public_url``)."""
AMOJO_URL: Final = "http://amojo.test"
"""Where the connector reaches the fake amojo."""
FILES_URL: Final = "http://files.amocrm.test"
"""Where the files managers send are kept (amoCRM's drive); the messenger's HTTP client reaches it."""
SAMPLE_FILES: Final[Mapping[str, tuple[bytes, str]]] = types.MappingProxyType(
    {
        "picture.png": (b"\x89PNG\r\n\x1a\n sample picture", "image/png"),
        "video.mp4": (b"\x00\x00\x00\x18ftypmp42 sample video", "video/mp4"),
        "file.pdf": (b"%PDF-1.4 sample document", "application/pdf"),
        "voice.ogg": (b"OggS sample voice", "audio/ogg"),
        "audio.mp3": (b"ID3 sample audio", "audio/mpeg"),
        "sticker.webp": (b"RIFF sample sticker", "image/webp"),
    }
)
"""The files at :data:`FILES_URL`: name → (bytes, content type)."""
_SAMPLE_OF_KIND: Final = {
    "picture": "picture.png",
    "video": "video.mp4",
    "file": "file.pdf",
    "voice": "voice.ogg",
    "audio": "audio.mp3",
    "sticker": "sticker.webp",
}


async def eventually(condition: Callable[[], Any], within: float = 5.0, *, interval: float = 0.01) -> Any:
    """Wait until ``condition()`` (sync, or async) is truthy and return it; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            name = getattr(condition, "__qualname__", repr(condition))
            raise AssertionError(f"condition {name} not met within {within} s (last value: {value!r})")
        await anyio.sleep(interval)


class HostRouter(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to the ASGI app or transport of its host.

    A host not in ``routes`` goes to ``default``; without one, the request fails to connect, as
    it would on a machine with no network.
    """

    def __init__(
        self, routes: Mapping[str, ASGIApp | httpx.AsyncBaseTransport], default: ASGIApp | None = None
    ) -> None:
        self.routes = {host: _transport(target) for host, target in routes.items()}
        self.default = _transport(default) if default is not None else None
        self._failing: list[type[httpx.TransportError]] = []

    def fail_next(self, count: int = 1, error: type[httpx.TransportError] = httpx.ConnectTimeout) -> None:
        """Fail the next ``count`` requests with ``error``, its message carrying the URL (as some transports do);
        ``0`` ends a failure still under way."""
        self._failing = [error] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._failing:
            raise self._failing.pop(0)(f"no answer from {request.url}", request=request)
        host = routed_host(request)
        transport = self.routes.get(host, self.default)
        if transport is None:
            raise httpx.ConnectError(f"no route to {host} in the test rig", request=request)
        return await transport.handle_async_request(request)


LOOPBACK_NETWORKS: Final = ("127.0.0.0/8", "::1/128")
"""What the rig lists in ``[http] media_allow_networks``: its fake hosts all live on loopback."""


async def loopback_resolver(host: str, port: int) -> list[str]:
    """The rig's DNS: every name is on loopback (a :class:`HostRouter` then routes by it); an address is itself."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return ["127.0.0.1"]


def rig_guard() -> UrlGuard:
    """The SSRF guard of the rig, for an ``AdapterContext`` built by hand (``url_guard=rig_guard()``)."""
    return UrlGuard(parse_networks(LOOPBACK_NETWORKS), resolver=loopback_resolver)


def routed_host(request: httpx.Request) -> str:
    """The host a request is for, by its Host header: the SSRF guard sends requests to the checked address."""
    return httpx.URL(f"//{request.headers.get('host', request.url.netloc.decode())}").host


def _transport(target: ASGIApp | httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    return target if isinstance(target, httpx.AsyncBaseTransport) else httpx.ASGITransport(app=target)


def serve_sample(request: httpx.Request) -> httpx.Response:
    """The :data:`SAMPLE_FILES` by path, for an ``httpx.MockTransport`` (a fake that downloads what managers send)."""
    found = SAMPLE_FILES.get(request.url.path.lstrip("/"))
    if found is None:
        return httpx.Response(404, text="not found")
    return httpx.Response(200, content=found[0], headers={"content-type": found[1]})


def _at_least(items: list[Any], count: int) -> list[Any] | None:
    return list(items) if len(items) >= count else None


class _Connector:
    """The runtime's app once it is built: the fakes' webhooks need a client before the runtime starts."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.runtime is None or self.runtime.app is None:
            raise RuntimeError("the connector is not running")
        await self.runtime.app(scope, receive, send)


@dataclass
class ConnectorRig:
    """A running connector with one messenger instance, the fake amojo and the messenger's fake."""

    runtime: Runtime
    """The connector."""
    amojo: FakeAmojo
    """amoCRM's side: records what arrived, emits what managers do."""
    fake: Any
    """The messenger's fake (``sandbox_factory``'s or the one given), or ``None``."""
    messenger: str
    """The messenger's name (the adapter's ``name``)."""
    instance: str = "main"
    """The instance's name (its source's ``external_id`` too)."""
    scope_id: str = SCOPE
    """The amoCRM account's scope."""
    within: float = 5.0
    """Seconds the waiting helpers wait before they fail."""
    http: httpx.AsyncClient | None = field(default=None, repr=False)
    """The messenger's HTTP client (the adapter's ``context.http``): the fake, :data:`FILES_URL`, the connector."""
    router: HostRouter | None = field(default=None, repr=False)
    """:attr:`http`'s transport (``rig.router.fail_next()`` takes the messenger's network down for a request)."""

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client of the connector's app (``http://amoconnect``)."""
        return self.runtime.client

    @property
    def adapter(self) -> MessengerAdapter:
        """The running adapter instance."""
        found = self.runtime.routing.get(self.instance)
        if found is None:
            raise LookupError(f"instance {self.instance!r} is not running")
        return found.adapter

    def conversation(self, chat: str) -> str:
        """The conversation id amoCRM knows the messenger's ``chat`` by, or ``chat`` if it is amoCRM's chat id."""
        return chat if chat in self.amojo.chats else ids.conversation_id(self.instance, chat)

    async def eventually(self, condition: Callable[[], Any], within: float | None = None) -> Any:
        """:func:`eventually`, waiting :attr:`within` seconds unless told otherwise."""
        return await eventually(condition, self.within if within is None else within)

    # -- what arrives ---------------------------------------------------------------------------

    def client_messages(self, chat: str) -> list[StoredMessage]:
        """The client's messages of ``chat`` amoCRM has, oldest first."""
        return [m for m in self.amojo.messages_in(self.conversation(chat), scope_id=self.scope_id) if m.from_client]

    async def arrived(self, chat: str, count: int = 1) -> list[StoredMessage]:
        """Wait until amoCRM has ``count`` (or more) client messages of ``chat``; all of them, oldest first."""
        found: list[StoredMessage] = await self.eventually(lambda: _at_least(self.client_messages(chat), count))
        return found

    async def received(self, chat: str, count: int = 1) -> list[Any]:
        """Wait until the fake says the client of ``chat`` got ``count`` (or more) messages; all of them."""
        found: list[Any] = await self.eventually(lambda: _at_least(list(self.fake.received(chat)), count))
        return found

    async def statuses(self, amocrm_id: str, count: int = 1) -> list[wire.DeliveryStatusRequest]:
        """Wait until amoCRM has ``count`` (or more) delivery statuses of its message ``amocrm_id``; all of them."""
        message = self.amojo.message(amocrm_id)
        found: list[wire.DeliveryStatusRequest] = await self.eventually(lambda: _at_least(message.statuses, count))
        return found

    async def messenger_id(self, amocrm_id: str) -> str:
        """The messenger's id of amoCRM's message ``amocrm_id``, once the connector has recorded it."""

        async def recorded() -> str | None:
            record = await self.runtime.store.message_by_amocrm(self.scope_id, amocrm_id)
            return record.messenger_id if record is not None else None

        found: str = await self.eventually(recorded)
        return found

    async def backdate_client(self, chat: str, seconds: float) -> None:
        """Pretend the client of ``chat`` last wrote ``seconds`` earlier than it did (to close a reply window).

        It waits until the relay has no job queued or running first: a job that finishes later
        writes the conversation it read, and a finish never moves ``last_client_at`` back.
        """

        await self.eventually(lambda: counts_are(self.runtime.store, queued=0, running=0))

        async def written() -> ConversationRecord | None:
            # The relay commits the conversation just after amoCRM has the message: wait for it.
            record = await self.runtime.store.conversation_by_chat(self.instance, chat)
            return record if record is not None and record.last_client_at is not None else None

        try:
            record: ConversationRecord = await self.eventually(written, 2.0)
        except AssertionError:
            raise LookupError(f"the client of chat {chat!r} has not written yet") from None
        assert record.last_client_at is not None
        await self.runtime.store.put_conversation(
            msgspec.structs.replace(record, last_client_at=record.last_client_at - seconds)
        )

    # -- what managers do -----------------------------------------------------------------------

    async def manager_writes(self, chat: str, text: str, *, reply_to: str | None = None) -> EmitResult:
        """A manager writes ``text`` in ``chat``, quoting amoCRM's message ``reply_to`` if given."""
        return await self.amojo.emit_message(self.scope_id, self.conversation(chat), text=text, reply_to=reply_to)

    async def manager_sends_media(
        self,
        chat: str,
        kind: MediaKind,
        url: str | None = None,
        *,
        text: str = "",
        file_name: str | None = None,
        file_size: int | None = None,
    ) -> EmitResult:
        """A manager sends a file; by default the sample of ``kind`` at :data:`FILES_URL`, with ``text`` as caption."""
        sample = _SAMPLE_OF_KIND[kind]
        if url is None:
            url = f"{FILES_URL}/{sample}"
            file_size = len(SAMPLE_FILES[sample][0]) if file_size is None else file_size
        return await self.amojo.emit_media(
            self.scope_id,
            self.conversation(chat),
            kind,
            url,
            text=text,
            file_name=file_name or url.rsplit("/", 1)[-1],
            file_size=file_size or 0,
        )

    async def manager_sends_buttons(self, chat: str, text: str, rows: Sequence[Sequence[Button]]) -> EmitResult:
        """A manager sends ``text`` with inline buttons; amoCRM's buttons carry text and, for links, a URL
        (a press comes back with the button's text as ``callback_data``)."""
        buttons = [[wire.Button(text=b.text, url=b.url) for b in row] for row in rows]
        return await self.amojo.emit_buttons(self.scope_id, self.conversation(chat), text, buttons)

    async def manager_sends_list(self, chat: str, list_message: ListMessage) -> EmitResult:
        """A manager (Salesbot) sends a list message."""
        sections = [
            wire.ListSection(
                title=section.title or None,
                rows=[
                    wire.ListRow(callback_data=r.callback_data, title=r.title, description=r.description or None)
                    for r in section.rows
                ],
            )
            for section in list_message.sections
        ]
        lm = wire.ListMessage(
            body=list_message.body,
            button=list_message.button,
            sections=sections,
            header=list_message.header or None,
            footer=list_message.footer or None,
        )
        return await self.amojo.emit_list_message(self.scope_id, self.conversation(chat), lm)

    async def manager_sends_template(self, chat: str, template: Template) -> EmitResult:
        """A manager sends an amoCRM template (``params`` keys are the ``{{markers}}`` of ``content``)."""
        return await self.amojo.emit_template(
            self.scope_id,
            self.conversation(chat),
            template.content,
            {param.key: param.value for param in template.params},
            template_id=template.id,
            external_id=template.external_id,
        )

    async def manager_reacts(self, chat: str, amocrm_id: str, emoji: str) -> EmitResult:
        """A manager reacts with ``emoji`` to amoCRM's message ``amocrm_id``."""
        return await self.amojo.emit_reaction(self.scope_id, self.conversation(chat), amocrm_id, emoji)

    async def manager_unreacts(self, chat: str, amocrm_id: str) -> EmitResult:
        """A manager takes back a reaction to amoCRM's message ``amocrm_id``."""
        return await self.amojo.emit_reaction(self.scope_id, self.conversation(chat), amocrm_id, unreact=True)

    async def manager_types(self, chat: str) -> EmitResult:
        """A manager is typing in ``chat``."""
        return await self.amojo.emit_typing(self.scope_id, self.conversation(chat))

    async def manager_writes_first(
        self, phone: str, text: str = "", *, template: Template | None = None, name: str | None = None
    ) -> EmitResult:
        """A manager starts a chat with ``phone`` through this instance's source, with ``text`` or ``template``.

        The result's ``chat_id`` is amoCRM's new chat, which the ``manager_*`` helpers accept as ``chat``.
        """
        chat = self.amojo.add_chat(
            self.scope_id, None, phone=phone, name=name, source_external_id=self._external_id()
        ).id
        if template is not None:
            return await self.manager_sends_template(chat, template)
        return await self.amojo.emit_message(self.scope_id, chat, text=text)

    async def manager_replies_to_comment(self, chat: str, post_id: str, text: str) -> EmitResult:
        """A manager answers the client of ``chat`` in the comments of post ``post_id``."""
        return await self.amojo.emit_comment_reply(self.scope_id, self.conversation(chat), post_id, text)

    # -- the messenger's edge -------------------------------------------------------------------

    async def post_webhook(
        self, body: bytes = b"", *, headers: Mapping[str, str] | None = None, path: str = "", method: str = "POST"
    ) -> httpx.Response:
        """Send a raw request to the instance's webhook (``/hooks/{messenger}/{instance}/{path}``)."""
        url = f"/hooks/{self.messenger}/{self.instance}" + (f"/{path}" if path else "")
        return await self.client.request(method, url, content=body, headers=dict(headers or {}))

    def _external_id(self) -> str:
        for source in self.runtime.config.sources:
            if source.name == self.instance:
                return source.external_id
        raise LookupError(f"no source named {self.instance!r}")


def rig_config(
    workdir: Path, messenger: str, settings: Mapping[str, Any], *, instance: str = "main", **overrides: Any
) -> dict[str, Any]:
    """The rig's configuration as a dict: one account, one source, fast retries; ``overrides`` merge per section."""
    data: dict[str, Any] = {
        "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": AMOJO_URL, "bot_id": BOT},
        "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
        "sources": [
            {"name": instance, "plugin": messenger, "account": "main", "default": True, "settings": dict(settings)}
        ],
        "store": store_settings(workdir),
        "server": {"public_url": PUBLIC_URL},
        "relay": {"backoff": 0.01, "max_backoff": 0.05, "max_attempts": 3},
        "http": {"attempts": 2, "media_allow_networks": list(LOOPBACK_NETWORKS)},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def _plugin_module(plugin: str | types.ModuleType | type[MessengerAdapter]) -> str | types.ModuleType:
    if not (isinstance(plugin, type) and issubclass(plugin, MessengerAdapter)):
        return plugin
    adapter = plugin
    module = types.ModuleType(f"{adapter.__module__}.rig_plugin_{getattr(adapter, 'name', 'x')}")
    module.__file__ = f"<rig plugin of {adapter.__module__}.{adapter.__qualname__}>"

    @hookimpl
    def register_messengers(register: RegisterMessenger) -> None:
        register(adapter)

    module.register_messengers = register_messengers  # type: ignore[attr-defined]
    return module


def load_plugin(
    plugin: str | types.ModuleType | type[MessengerAdapter], messenger: str | None = None
) -> tuple[pluggy.PluginManager, type[MessengerAdapter]]:
    """A plugin manager with just ``plugin`` (a module, its dotted path or an adapter class), and its adapter.

    ``messenger`` names the adapter when the plugin registers several. Raises :class:`PluginError`
    when the plugin is invalid or registers no such messenger.
    """
    pm = get_plugin_manager(load_entrypoints=False, extra_modules=[_plugin_module(plugin)])
    messengers = collect_messengers(pm)
    if messenger is None:
        if len(messengers) != 1:
            raise PluginError(f"plugin {plugin!r} registers {sorted(messengers) or 'no messengers'}: pass messenger=")
        messenger = next(iter(messengers))
    adapter = messengers.get(messenger)
    if adapter is None:
        raise PluginError(f"plugin {plugin!r} registers no messenger {messenger!r}; it has {sorted(messengers)}")
    return pm, adapter


@asynccontextmanager
async def connector(
    plugin: str | types.ModuleType | type[MessengerAdapter],
    *,
    messenger: str | None = None,
    make_fake: Callable[[httpx.AsyncClient], Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    workdir: Path | str | None = None,
    instance: str = "main",
    amojo: FakeAmojo | None = None,
    config: Mapping[str, Any] | None = None,
    within: float = 5.0,
) -> AsyncIterator[ConnectorRig]:
    """Run a connector with one instance of a plugin's messenger, wired to the fake amojo and the messenger's fake.

    ``plugin`` is the plugin module (or its dotted path, as the entry point names it) or an
    adapter class; ``messenger`` picks one when the plugin registers several. The fake is
    ``make_fake(http)``, else the adapter's ``sandbox_factory(http=http)``, where ``http`` is the
    client its webhooks reach the connector with; the instance's settings are ``settings``, else
    the fake's ``sandbox_settings(api_url)``. ``workdir`` holds the store (a temporary directory when
    ``None``); ``config`` overrides sections of :func:`rig_config`; the rig's helpers wait ``within`` seconds.
    """
    pm, adapter = load_plugin(plugin, messenger)
    messenger = adapter.name
    async with AsyncExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="amoconnect-rig-"))
        target = _Connector()
        hooks = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url=PUBLIC_URL)
        )
        fake: Any = None
        if make_fake is not None:
            fake = make_fake(hooks)
        elif adapter.sandbox_factory is not None:
            fake = adapter.sandbox_factory(http=hooks)
        api_host = f"{messenger.replace('_', '-')}.messenger.test"
        if settings is None:
            if fake is None:
                raise PluginError(f"messenger {messenger!r} has no fake (sandbox_factory): pass make_fake=")
            settings = fake.sandbox_settings(f"http://{api_host}")
        routes: dict[str, ASGIApp | httpx.AsyncBaseTransport] = {
            httpx.URL(FILES_URL).host: httpx.MockTransport(serve_sample),
            httpx.URL(PUBLIC_URL).host: target,
        }
        router = HostRouter(routes, default=fake.app if fake is not None else None)
        http = await stack.enter_async_context(httpx.AsyncClient(transport=router))
        amojo = amojo or FakeAmojo(CHANNEL, SECRET, bot_id=BOT)
        amojo.webhook_client = hooks
        amojo.connect(ACCOUNT, webhook_url=f"{PUBLIC_URL}/amocrm/:scope_id")
        amojo_http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=amojo.app), base_url=AMOJO_URL)
        )
        data = rig_config(Path(workdir), messenger, settings, instance=instance, **dict(config or {}))
        runtime = Runtime(
            parse_config(data, "<rig>"),
            plugin_manager=pm,
            amojo_http=amojo_http,
            messenger_http=http,
            resolver=loopback_resolver,
        )
        target.runtime = runtime
        async with runtime:
            yield ConnectorRig(runtime, amojo, fake, messenger, instance, within=within, http=http, router=router)
