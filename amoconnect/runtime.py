"""The runtime: owns the configuration, plugins, store, clients, relay and ASGI app.

It is also the test harness: ``async with Runtime(config) as rt`` starts everything (the
relay workers and every adapter instance), ``rt.client`` talks to the app in-process, and
leaving the block drains in-flight jobs and stops. :func:`serve` runs it behind uvicorn.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import importlib.util
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import anyio
import httpx
import pluggy
import structlog
import uvicorn
from starlette.types import ASGIApp

from .adapter import AdapterContext, Intake, MessengerAdapter
from .amocrm import AmoCRMClient
from .amojo.client import AmojoClient
from .amojo.wire import HistoryMessage
from .buttondata import ButtonData
from .capabilities import Capability
from .config import Config, validate_settings
from .console import ConsoleParts, Samples, SessionCodec, console_routes
from .core import AMOCRM, INBOUND, STATUS, Core, amocrm_limiter
from .errors import ConfigError, PluginError, RegistryError, StoreError
from .http import RetryPolicy, new_client
from .inbound import InboundHandler
from .instances import Instances, Intakes
from .leases import run_exclusive
from .media import DatabaseMediaStore, MediaRows, MediaStore
from .metrics import Metrics
from .model import HistoryEntry, InboundEvent
from .outbound import AmocrmHandler, StatusHandler
from .plugins import collect_messengers, get_plugin_manager
from .precedence import Arrivals
from .ratelimit import Limiter, LimiterFactory
from .registry import Registry
from .relay import Handler, Relay
from .routing import Instance, Routing
from .server.admin import admin_routes
from .server.app import AppParts, build_app, enqueue_inbound
from .server.guard import Refusals, fit_descriptors, guarded_protocol
from .server.oauth import Installer, oauth_routes
from .store import build_store
from .store.base import Store
from .store.registry import AccountRecord, SourceRecord
from .tenants import CommandLineMessengers, Tenants
from .tokens import TokenKeeper
from .urlguard import Resolver, UrlGuard, parse_networks, system_resolver

__all__ = ["SWITCH_INTERVAL", "Runtime", "listen", "loop_options", "serve", "settle_heap"]

log = structlog.get_logger("amoconnect.runtime")

PRUNE_INTERVAL = 3600.0
ADAPTER_RESTART_MIN = 1.0
ADAPTER_RESTART_MAX = 60.0


@dataclass
class _InstanceState:
    """An adapter's :class:`~amoconnect.adapter.StateStore`, a namespace of the store."""

    store: Store
    namespace: str

    async def get(self, key: str) -> bytes | None:
        return await self.store.get_state(self.namespace, key)

    async def set(self, key: str, value: bytes) -> None:
        await self.store.set_state(self.namespace, key, value)

    async def delete(self, key: str) -> None:
        await self.store.delete_state(self.namespace, key)


class Runtime:
    """One running connector.

    ``plugin`` limits the messenger instances to one plugin (``amoconnect run --plugin``);
    ``plugin_manager`` replaces plugin discovery; ``amojo_http``, ``messenger_http`` and ``amocrm_http``
    (installing accounts' REST API) inject HTTP clients (tests point them at fakes in-process);
    ``resolver`` replaces DNS for the media SSRF guard (the test kit's fake hosts all live on loopback).
    """

    def __init__(
        self,
        config: Config,
        *,
        plugin: str | None = None,
        plugin_manager: pluggy.PluginManager | None = None,
        plugin_dirs: Iterable[Path | str] = (),
        extra_modules: Iterable[str | ModuleType] = (),
        store: Store | None = None,
        amojo_http: httpx.AsyncClient | None = None,
        messenger_http: httpx.AsyncClient | None = None,
        amocrm_http: httpx.AsyncClient | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.plugin = plugin
        self.pm = plugin_manager or get_plugin_manager(
            plugin_dirs=plugin_dirs, extra_modules=extra_modules, blocked=config.plugins.blocked
        )
        self.messengers = collect_messengers(self.pm)
        if plugin is not None and plugin not in self.messengers:
            raise PluginError(
                f"no messenger plugin named {plugin!r} is installed; installed: {sorted(self.messengers) or 'none'}"
            )
        self.metrics = Metrics()
        self.arrivals = Arrivals()
        """The webhooks being received: the relay lets them go first."""
        self.store: Store = store or build_store(config.store)
        self._amojo_http = amojo_http
        self._messenger_http = messenger_http
        self._amocrm_http = amocrm_http
        self.url_guard = UrlGuard(
            parse_networks(config.http.media_allow_networks), resolver=resolver or system_resolver
        )
        self.media = self._media_store()
        self.registry = Registry(config, self.store)
        """Accounts and sources: the file's fixed ones and the store's, followed at run time."""
        self.routing = Routing(())
        self.intakes = Intakes()
        """How each running source's updates arrive, as its adapter reported it (the console shows it)."""
        self.amojo: AmojoClient
        self.app: ASGIApp | None = None
        self.console_codec = SessionCodec(
            self._console_key(),
            config.console.session_hours * 3600,
            trust_proxy=config.console.trust_proxy,
            public_https=config.server.public_url.startswith("https://"),
        )
        """Signs the console's session cookies."""
        self.queue_samples = Samples(self.store.counts, self._finished_jobs)
        """The queue over the last hour, a sample a minute (the console's chart)."""
        self._stack: AsyncExitStack | None = None
        self._http: httpx.AsyncClient | None = None
        self._client: httpx.AsyncClient | None = None
        self._instance_http: httpx.AsyncClient | None = None
        self._button_data = ButtonData(self.store)

    def _media_store(self) -> MediaStore:
        if self.config.store.media == "files":
            return MediaStore(Path(self.config.store.media_dir), self._media_secret())
        if not isinstance(self.store, MediaRows):
            raise ConfigError(
                f"store.media = 'database' needs a store that keeps media; {type(self.store).__name__} does not"
            )
        return DatabaseMediaStore(self.store, self._media_secret())

    def _media_secret(self) -> str:
        if self.config.server.media_secret:
            return self.config.server.media_secret
        return hashlib.sha256(b"amoconnect-media-key\0" + self.config.channel.secret.encode()).hexdigest()

    def _finished_jobs(self) -> float:
        return self.metrics.jobs_succeeded.total()

    def _intake_of(self, name: str) -> tuple[Intake, float] | None:
        """What the running adapter of source ``name`` reported of its intake (None: not running here)."""
        return self.intakes.of(name) if self.routing.get(name) is not None else None

    def _console_key(self) -> str:
        if self.config.console.session_key:
            return self.config.console.session_key
        return hashlib.sha256(b"amoconnect-console-key\0" + self.config.channel.secret.encode()).hexdigest()

    # -- building ------------------------------------------------------------------------
    def _instance(self, source: SourceRecord, account: AccountRecord) -> Instance:
        """The instance of ``source``, its adapter built with its settings (not started).

        A fixed source's errors name the configuration file's key, a stored one's the source."""
        index = next((i for i, s in enumerate(self.config.sources) if s.name == source.name), -1)
        cls = self.messengers.get(source.plugin)
        if cls is None:
            where = f"{self.config.origin}: sources[{index}].plugin:" if source.fixed else f"source {source.name!r}:"
            raise ConfigError(
                f"{where} {source.plugin!r} is not installed; installed: {', '.join(sorted(self.messengers)) or 'none'}"
            )
        if Capability.echoes in cls.capabilities and not self.config.channel.bot_id:
            where = f"sources[{index}] ({source.name!r})" if source.fixed else f"source {source.name!r}"
            raise ConfigError(
                f"{self.config.origin}: channel.bot_id: not set, and {where} uses "
                f"{cls.name}, which brings what the business writes in the messenger's own app into amoCRM as "
                "the channel bot's messages (capability 'echoes'); set it to the bot id amoCRM gave with the "
                "channel"
            )
        if source.fixed:
            settings = self.config.plugin_settings(index, cls.settings)
        else:
            settings = validate_settings(source.settings, cls.settings, f"source {source.name!r}")
        assert self._instance_http is not None
        public = self.config.server.public_url.rstrip("/")
        context = AdapterContext(
            instance=source.name,
            http=self._instance_http,
            log=structlog.get_logger(f"amoconnect.{cls.name}").bind(instance=source.name),
            state=_InstanceState(self.store, f"{cls.name}:{source.name}"),
            submit=self._submitter(source.name),
            history=self._history_of(source.name),
            public_url=f"{public}/hooks/{cls.name}/{source.name}" if public else None,
            exclusive=self._exclusive_of(f"{cls.name}:{source.name}"),
            url_guard=self.url_guard,
            limiter=self._limiters_of(f"{cls.name}:{source.name}"),
            amocrm_limiter=amocrm_limiter(self.store),
            intake=self.intakes.reporter(source.name),
            button_data=self._button_data,  # keys are the values' hashes: one space for every instance
        )
        adapter: MessengerAdapter = cls(settings, context)
        # Read from the instance: an adapter may set its limits from its settings (e.g. a number's tier).
        limiters = [
            (limit, context.limiter(f"{limit.scope}:{limit.count}/{limit.per:g}s", limit.count, limit.per))
            for limit in adapter.rate_limits
        ]
        return Instance(source, account, adapter, limiters)

    @contextlib.asynccontextmanager
    async def beside(self, rest: Callable[[AccountRecord], AmoCRMClient | None]) -> AsyncIterator[Tenants]:
        """The operations for a command run beside the connector (``amoconnect sources remove``, ...):
        the store open and the registry loaded, nothing served or started; a removal builds the source's
        adapter with its settings, without starting it, to unregister its webhook."""
        async with AsyncExitStack() as stack:
            await self.store.open()
            stack.push_async_callback(self.store.close)
            http = self._messenger_http or new_client(
                transport=self.config.http.transport,
                timeout=self.config.http.timeout,
                max_in_flight_per_host=self.config.http.max_in_flight_per_host,
            )
            if self._messenger_http is None:
                stack.push_async_callback(http.aclose)
            self._instance_http = http
            await self.registry.load()

            async def unregister(name: str) -> None:
                source = self.registry.source(name)
                account = self.registry.account(source.account) if source is not None else None
                if source is None or account is None:
                    raise RegistryError(f"no source named {name!r}")
                await self._instance(source, account).adapter.unregister()

            yield Tenants(self.registry, self.messengers, CommandLineMessengers(unregister), rest)

    async def _connect_channel(self, amojo_id: str) -> str:
        """Connect the channel to an installing account in amojo; its scope id."""
        return (await self.amojo.connect(amojo_id, title=self.config.channel.title)).scope_id

    async def _disconnect_channel(self, account: AccountRecord) -> None:
        """Disconnect the channel from a disconnected account in amojo."""
        await self.amojo.disconnect(account.amojo_id)

    def _rest_of(self, account: AccountRecord) -> AmoCRMClient | None:
        """The REST client of ``account``, None when it has no token."""
        return self.core.rest(account) if account.token and account.rest_url else None

    def _limiters_of(self, namespace: str) -> LimiterFactory:
        """The store's limiters under ``namespace`` (``telegram:bot1``), for an instance's context."""

        def limiter(name: str, rate: float, per: float = 1.0, burst: int | None = None) -> Limiter:
            return self.store.limiter(f"{namespace}:{name}", rate, per, burst)

        return limiter

    def _submitter(self, instance_name: str) -> Callable[[Sequence[InboundEvent]], Awaitable[None]]:
        async def submit(events: Sequence[InboundEvent]) -> None:
            instance = self.routing.get(instance_name)
            if instance is None:
                raise PluginError(f"instance {instance_name!r} is not running")
            await enqueue_inbound(self.store, self.metrics, instance, tuple(events))

        return submit

    def _exclusive_of(self, prefix: str) -> Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]:
        async def exclusive(name: str, work: Callable[[], Awaitable[None]]) -> None:
            await run_exclusive(self.store, f"{prefix}:{name}", work)

        return exclusive

    def _history_of(self, instance_name: str) -> Callable[[str], AsyncIterator[HistoryEntry]]:
        async def history(chat: str) -> AsyncIterator[HistoryEntry]:
            record = await self.store.conversation_by_chat(instance_name, chat)
            if record is None:
                return
            async for message in self.history(record.scope_id, record.conversation_id):
                yield _history_entry(message)

        return history

    async def history(self, scope_id: str, conversation_id: str) -> AsyncIterator[HistoryMessage]:
        """A conversation's messages as amoCRM keeps them, newest first, every page (the core's history service).

        amojo finds a chat by amoCRM's id of it only, learnt from amojo's answer to the
        conversation's first message or from a manager's webhook: until one came, there is no
        history (a log line says so).
        """
        record = await self.store.conversation(scope_id, conversation_id)
        chat_id = record.amocrm_chat_id if record is not None else None
        if chat_id is None:
            log.info(
                "no history: amoCRM's chat id of the conversation is not known yet (none of its messages has "
                "reached amoCRM, and no manager has written in it)",
                scope_id=scope_id,
                conversation_id=conversation_id,
            )
            return
        async for message in self.amojo.iter_history(scope_id, chat_id):
            yield message

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the store, build clients, adapters and the app, start the relay and the adapters."""
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            http_config = self.config.http
            await self.store.open()
            stack.push_async_callback(self.store.close)
            self.amojo = AmojoClient(
                self.config.channel.id,
                self.config.channel.secret,
                base_url=self.config.channel.amojo_url,
                client=self._amojo_http,
                transport=http_config.transport,
                timeout=http_config.timeout,
                max_in_flight_per_host=http_config.max_in_flight_per_host,
                retry=RetryPolicy(attempts=http_config.attempts),
                on_retry=lambda *_: self.metrics.http_retries.labels("amojo").inc(),
            )
            stack.push_async_callback(self.amojo.aclose)  # closes only what it built
            messenger_http = self._messenger_http or new_client(
                transport=http_config.transport,
                timeout=http_config.timeout,
                max_in_flight_per_host=http_config.max_in_flight_per_host,
            )
            if self._messenger_http is None:
                stack.push_async_callback(messenger_http.aclose)
            await self.registry.load()
            self._instance_http = messenger_http
            self.routing = Routing(())
            instances = Instances(self.registry, self.routing, self._instance, self._run_adapter, plugin=self.plugin)
            self.tenants = Tenants(
                self.registry, self.messengers, instances, self._rest_of, on_disconnect=self._disconnect_channel
            )
            console, sign_in = console_routes(
                ConsoleParts(
                    self.tenants,
                    self.store,
                    self.console_codec,
                    admin_token=self.config.admin.token,
                    client_id=self.config.oauth.client_id if self.config.oauth.client_secret else "",
                    authorize_url=self.config.console.authorize_url,
                    samples=self.queue_samples,
                    intake=self._intake_of,
                )
            )
            self.app = build_app(
                AppParts(
                    self.config,
                    self.store,
                    self.routing,
                    self.media,
                    self.metrics,
                    self.pm,
                    self.registry,
                    frozenset(cls.name for cls in self.messengers.values()),
                    [
                        *admin_routes(self.tenants, self.config.admin.token),
                        *oauth_routes(
                            self.tenants,
                            self.config.oauth,
                            Installer(self.tenants, self.config.oauth, self._connect_channel, self._amocrm_http),
                            sign_in,
                        ),
                        *console,
                    ],
                    self.arrivals,
                )
            )
            core = self.core = Core(
                self.config,
                self.store,
                self.amojo,
                self.routing,
                self.pm,
                self.media,
                self.metrics,
                self.registry,
                amocrm_http=self._amocrm_http,
            )
            stack.push_async_callback(core.aclose)
            amocrm = AmocrmHandler(core)
            relay_config = self.config.relay
            self.relay = Relay(
                self.store,
                {
                    AMOCRM: Handler(amocrm, on_dead=amocrm.on_dead),
                    INBOUND: Handler(InboundHandler(core), repeatable=True),
                    STATUS: Handler(StatusHandler(core)),
                },
                metrics=self.metrics,
                concurrency=relay_config.concurrency,
                max_attempts=relay_config.max_attempts,
                backoff=relay_config.backoff,
                max_backoff=relay_config.max_backoff,
                shutdown_timeout=relay_config.shutdown_timeout,
                arrivals=self.arrivals,
            )
            await instances.start()
            stack.push_async_callback(instances.shutdown)
            tasks = anyio.create_task_group()
            await stack.enter_async_context(tasks)
            stack.callback(tasks.cancel_scope.cancel)
            await tasks.start(self.relay.run)
            instances.run(tasks)
            self.registry.subscribe(instances.apply)
            tasks.start_soon(self.registry.follow)
            if self.config.oauth.client_id and self.config.oauth.client_secret:
                keeper = TokenKeeper(
                    self.registry, self.store, self.config.oauth, http=self._amocrm_http, lease=self.config.store.lease
                )
                tasks.start_soon(keeper.run)
            tasks.start_soon(self._prune)
            tasks.start_soon(self.queue_samples.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        log.info(
            "runtime started",
            instances=[f"{i.messenger}/{i.name}" for i in self.routing],
            accounts=sum(1 for _ in self.registry.accounts()),
            store=self.store.where,
        )

    async def stop(self) -> None:
        """Drain the relay (``relay.shutdown_timeout``: no job claimed, the ones in flight finish),
        then stop the adapters and close everything."""
        stack, self._stack = self._stack, None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if stack is not None:
            try:
                with anyio.CancelScope(shield=True):  # bounded by relay.shutdown_timeout
                    await self.relay.stop()
            finally:
                await stack.aclose()
            log.info("runtime stopped")

    async def _run_adapter(self, instance: Instance) -> None:
        """Run the adapter's long-running work, restarting it with backoff when it fails."""
        delay = ADAPTER_RESTART_MIN
        while True:
            started = time.monotonic()
            try:
                await instance.adapter.run()
                return
            except Exception:
                log.exception("adapter run() failed; restarting", instance=instance.name, restart_in_s=delay)
            if time.monotonic() - started > ADAPTER_RESTART_MAX:
                delay = ADAPTER_RESTART_MIN  # it ran well for a while: start the backoff over
            await anyio.sleep(delay)
            delay = min(delay * 2, ADAPTER_RESTART_MAX)

    async def _prune(self) -> None:
        """Age out, every hour, what the store keeps for a while (dedup keys, ...) and media whose links all expired."""
        while True:
            try:
                pruned = await self.store.prune(dedup_older_than=self.config.relay.dedup_retention_days * 86400)
                pruned["media files"] = await self.media.prune()
            except StoreError as exc:
                log.warning("pruning failed; trying again later", error=str(exc))
            else:
                for what, count in pruned.items():
                    if count:
                        log.info(f"{what} pruned", count=count)
            await anyio.sleep(PRUNE_INTERVAL)

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client that talks to the app in-process (``http://amoconnect``)."""
        if self.app is None:
            raise RuntimeError("the runtime is not started")
        if self._client is None:
            self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://amoconnect")
        return self._client


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`serve` handles SIGTERM/SIGINT to drain first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


SWITCH_INTERVAL = 0.0001
"""Seconds a thread holding the GIL runs before another that waits for it takes it (CPython: 0.005).
The store's writer thread and the event loop share the GIL: at 0.5 ms instead of 5, commits no longer
waited behind request handling (ack p50 halved at 4,500 webhooks/s); at 0.1 ms instead of 0.5, the
loop no longer waits behind the writer's grouped finishes when amojo's answer comes (a one-chat
backlog drained at 75 % of the chat's limit instead of 68 %, medians of five runs each), for no more
CPU a message (measured at 100 and 400 msg/s and at saturation)."""

_YOUNG_COLLECTION_AT = 10_000
"""Container objects allocated and not yet freed that start a collection of the youngest generation
(CPython's default: 700). A relay's objects live for one request or one job and nearly all go by
reference counting: at the default, a burst of requests in flight set off collections that found
nothing, 8 % of the connector's CPU at saturation (measured; 0.2 % with this and :func:`settle_heap`)."""


def settle_heap() -> None:
    """Tune the cyclic garbage collector of a process that serves from now on: what is alive now
    (modules, plugins, the runtime) is frozen out of every later collection, and the youngest
    generation is collected after :data:`_YOUNG_COLLECTION_AT` allocations, not CPython's 700.
    A frozen object dropped later is freed as usual unless it is part of a reference cycle (an adapter
    instance of the start stopped when its source changes may be): that stays, once, bounded by the
    start's heap. Process-wide: for a process whose job is to serve (``amoconnect run``), not one
    that hosts it."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_AT, middle, oldest)


def loop_options() -> dict[str, bool]:
    """``anyio.run`` backend options for serving: uvloop when installed (``uvicorn[standard]`` brings it).

    uvloop's I/O and callbacks cost the connector about a fifth less CPU than asyncio's own loop.
    """
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


@contextlib.asynccontextmanager
async def _closing(sock: socket.socket) -> AsyncIterator[None]:
    try:
        yield
    finally:
        sock.close()


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free port the system picks).

    Raises :class:`ConfigError` naming the address when it cannot be had (in use, not an address here).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {host!r} is not an address of this machine") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {host}:{port}: the port is in use by another program; "
                "choose another with --port or [server] port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


async def serve(
    runtime: Runtime,
    *,
    host: str,
    port: int,
    stop: anyio.Event | None = None,
    sock: socket.socket | None = None,
    dedicated: bool = False,
) -> None:
    """Run ``runtime`` behind uvicorn until SIGTERM/SIGINT (or ``stop`` is set), then drain and stop.

    The port is taken (:func:`listen`, or the given listening ``sock``) before the runtime starts,
    so a port in use is a :class:`ConfigError` and nothing else. On a signal the server stops
    accepting and finishes the requests in progress, then the relay gets
    ``relay.shutdown_timeout`` seconds to finish its jobs; what is left stays queued.
    ``dedicated``: serving is the process's whole job (``amoconnect run``): once the runtime has
    started, :func:`settle_heap`.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    sock = sock if sock is not None else listen(host, port)
    async with _closing(sock), runtime:
        assert runtime.app is not None
        if dedicated:
            settle_heap()
        settings = runtime.config.server
        refusals = Refusals(runtime.metrics)
        protocol = guarded_protocol(settings, runtime.metrics, refusals, fit_descriptors(settings.max_connections))
        server = _Server(
            uvicorn.Config(
                runtime.app, host=host, port=port, http=protocol, lifespan="off", access_log=False, log_config=None
            )
        )
        started = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for received in signals:
                        log.info("signal received; stopping", signal=signal.Signals(received).name)
                        server.should_exit = True
                        return

            async def on_stop(event: anyio.Event) -> None:
                await event.wait()
                server.should_exit = True

            tg.start_soon(on_signal)
            if stop is not None:
                tg.start_soon(on_stop, stop)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()
        refusals.flush()
        log.info("server stopped; draining", uptime_s=round(time.monotonic() - started, 1))


def _history_entry(message: HistoryMessage) -> HistoryEntry:
    """An amojo history entry in the neutral model adapters see."""
    body, sender = message.message, message.sender
    at_ms = message.msec_timestamp or (message.timestamp * 1000 if message.timestamp else None)
    return HistoryEntry(
        amocrm_id=body.id,
        msgid=body.client_id,
        kind=body.type or "text",
        text=body.text or "",
        media_url=body.media or None,
        file_name=body.file_name or None,
        at_ms=at_ms,
        from_client=sender is not None and sender.client_id is not None,
        sender_name=sender.name if sender is not None else None,
    )
