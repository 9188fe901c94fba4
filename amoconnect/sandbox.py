"""``amoconnect run --sandbox``: the whole connector with no credentials.

It starts the fake amojo and the plugin's own fake messenger on loopback ports, a temporary
SQLite store, and the real runtime between them, and serves a page, ``/console/sandbox``
(:mod:`amoconnect.console.sandbox_page`), showing both sides of the conversation live: a person
writes as the client and answers as the manager there (its URL is logged, and opened in a
browser when one can be). With ``rounds``, a scripted client writes that many times instead, a
manager answers each, and every hop is logged. A fake amoCRM account (``shop.amocrm.ru``, its
authorisation page served too) lets the page's visitor install the integration as an account's
admin would, add a bot to it in the console and write to it, with no credentials. A plugin takes
part by giving its adapter a ``sandbox_factory`` that builds a :class:`SandboxMessenger`.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import time
import uuid
import webbrowser
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
import pluggy
import structlog

from .adapter import MessengerAdapter
from .amojo import wire
from .capabilities import Capability
from .config import parse_config
from .console.sandbox_page import sandbox_routes
from .console.web import Pages
from .errors import PluginError
from .hookspecs import AddRoute, hookimpl
from .logging import name_account
from .plugins import collect_messengers, get_plugin_manager
from .runtime import Runtime, listen, serve
from .sandbox_chat import SandboxChat
from .testing.fake_amocrm import FakeAmoCRM
from .testing.fake_amojo import FakeAmojo
from .testing.servers import serve_app

__all__ = ["SandboxMessenger", "can_open_browser", "run_sandbox"]

log = structlog.get_logger("amoconnect.sandbox")


@runtime_checkable
class SandboxMessenger(Protocol):
    """A plugin's fake messenger as the sandbox drives it."""

    app: Any
    """The fake messenger's API, an ASGI app."""

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of one adapter instance that talks to this fake served at ``api_url``."""
        ...

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """A client writes ``text`` in ``chat``; the fake delivers the webhook to the connector."""
        ...

    def sandbox_received(self, chat: str) -> list[str]:
        """The texts the connector sent to ``chat``, oldest first."""
        ...


# The fake of a messenger that reports receipts may also have ``async def sandbox_client_reads(chat)``:
# the client's device reports what the connector sent to ``chat`` delivered (and read, when the
# messenger reports reading), as the messenger would. The sandbox calls it after each answer, so
# that the answer's status shows; without it, only a status the adapter's send returns shows. On the
# page, ``async def sandbox_client_gets(chat)`` reports what reached ``chat`` delivered only (the client
# reads it a moment later): :meth:`amoconnect.sandbox_chat.SandboxChat.client_device`.


async def _wait_for(condition: Any, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.02)
    return True


async def run_sandbox(
    plugin: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    rounds: int = 0,
    interval: float = 3.0,
    plugin_dirs: Iterable[str] = (),
    blocked: Iterable[str] = (),
    open_browser: bool = True,
) -> None:
    """Run the sandbox for ``plugin``: ``rounds`` scripted conversations, or (0) the page alone until interrupted.

    The connector listens on ``port``, or on a free port when it is ``None`` (logged with the rest);
    a port in use is a :class:`~amoconnect.errors.ConfigError`. ``open_browser``: open the page in
    a browser when there is one to open (:func:`can_open_browser`)."""
    plugin_dirs = tuple(plugin_dirs)
    # Load just the plugin under test (a local one from --plugin-dir, else its entry point).
    pm = get_plugin_manager(
        plugin_dirs=plugin_dirs,
        load_entrypoints=not plugin_dirs,
        only=None if plugin_dirs else plugin,
        blocked=blocked,
    )
    messengers = collect_messengers(pm)
    cls = messengers.get(plugin)
    if cls is None:
        raise PluginError(f"no messenger plugin named {plugin!r} is installed; installed: {sorted(messengers)}")
    if cls.sandbox_factory is None:
        raise PluginError(f"plugin {plugin!r} ships no fake messenger (sandbox_factory), so it has no sandbox")
    sock = listen(host, port or 0)
    try:
        with tempfile.TemporaryDirectory(prefix="amoconnect-sandbox-") as tmp:
            await _sandbox(cls, pm, plugin, host, sock, rounds, interval, Path(tmp), open_browser)
    finally:
        sock.close()


async def _sandbox(
    cls: type[MessengerAdapter],
    pm: pluggy.PluginManager,
    plugin: str,
    host: str,
    sock: socket.socket,
    rounds: int,
    interval: float,
    workdir: Path,
    open_browser: bool,
) -> None:
    assert cls.sandbox_factory is not None
    port = int(sock.getsockname()[1])
    channel_id, account_id = str(uuid.uuid4()), str(uuid.uuid4())
    secret = secrets.token_hex(20)
    public = f"http://{host}:{port}"
    async with httpx.AsyncClient(timeout=10) as http:
        messenger = cls.sandbox_factory(http=http)
        if not isinstance(messenger, SandboxMessenger):
            raise PluginError(f"plugin {plugin!r}: sandbox_factory() does not build a SandboxMessenger")
        amojo = FakeAmojo(channel_id, secret, webhook_client=http, webhook_url=f"{public}/amocrm/:scope_id")
        scope_id = amojo.connect(account_id, title="sandbox").scope_id
        oauth = {"client_id": str(uuid.uuid4()), "client_secret": secrets.token_hex(20)}
        oauth["redirect_uri"] = f"{public}/oauth/callback"
        amocrm = FakeAmoCRM(
            subdomain="shop",
            integration_name="amoconnect (sandbox)",
            client_id=oauth["client_id"],
            client_secret=oauth["client_secret"],
            redirect_uri=oauth["redirect_uri"],
        )
        amocrm.amojo_id = str(uuid.uuid4())  # the account that installs the integration from the page
        async with (
            serve_app(amojo.app, host=host) as amojo_url,
            serve_app(messenger.app, host=host) as api_url,
            serve_app(amocrm.app, host=host) as amocrm_url,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=amocrm.app)) as amocrm_http,
        ):
            config = parse_config(
                {
                    "channel": {"id": channel_id, "secret": secret, "amojo_url": amojo_url, "bot_id": amojo.bot_id},
                    "accounts": [{"name": "sandbox", "amojo_id": account_id, "scope_id": scope_id}],
                    "sources": [
                        {
                            "name": "sandbox",
                            "plugin": plugin,
                            "account": "sandbox",
                            "default": True,
                            "settings": messenger.sandbox_settings(api_url),
                        }
                    ],
                    "server": {"host": host, "port": port, "public_url": public},
                    "store": {"path": str(workdir / "amoconnect.sqlite3"), "media_dir": str(workdir / "media")},
                    "http": {"media_allow_networks": ["127.0.0.0/8", "::1/128"]},  # the fakes serve on loopback
                    "oauth": oauth,
                    "console": {"authorize_url": f"{amocrm_url}/oauth"},
                },
                "<sandbox>",
            )
            name_account(scope_id, "sandbox")
            log.info("sandbox: the connector listens", connector=public)
            log.info("sandbox: the fakes listen", amojo=amojo_url, messenger=api_url, amocrm=amocrm_url)
            # The connector reaches "shop.amocrm.ru" (the account that installs from the page) in the fake.
            runtime = Runtime(config, plugin=plugin, plugin_manager=pm, amocrm_http=amocrm_http)
            chat = SandboxChat(messenger, amojo)
            bot = {"plugin": plugin, **messenger.sandbox_settings(api_url)}
            pages = Pages(runtime.console_codec, form_origins=(amocrm_url,))
            routes = sandbox_routes(pages, chat, plugin, bot_settings=bot)
            pm.register(_SandboxPage(routes), "amoconnect-sandbox")
            page = f"{public}/console/sandbox"
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve_then_stop, runtime, host, sock, stop, tg)
                if not await _wait_for(lambda: runtime.app is not None, 15):
                    raise PluginError("the connector did not start")
                log.info("sandbox: the page shows both sides of the conversation", page=page)
                await anyio.sleep(0.5)
                if rounds:
                    await _conversation(messenger, amojo, scope_id, rounds, interval, cls.capabilities)
                    stop.set()
                    return
                if open_browser and can_open_browser():
                    tg.start_soon(_open, page)
                log.info("sandbox: write as the client and answer as the manager there; Ctrl+C stops")
                await chat.client_device()


class _SandboxPage:
    """Adds the sandbox's page to the connector's app."""

    def __init__(self, routes: list[tuple[str, Any, tuple[str, ...]]]) -> None:
        self.routes = routes

    @hookimpl
    def startup_routes(self, add_route: AddRoute) -> None:
        for path, endpoint, methods in self.routes:
            add_route(path, endpoint, methods=methods)


def can_open_browser() -> bool:
    """Whether a person is there to see a browser: a terminal, and a display on Linux and the BSDs."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        return False
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _open(url: str) -> None:
    """Open ``url`` in the person's browser, in a thread: a browser that takes its time blocks nothing."""
    try:
        opened = await anyio.to_thread.run_sync(webbrowser.open, url, abandon_on_cancel=True)
    except Exception as exc:  # a broken browser setting must not stop the sandbox
        opened = False
        log.info("sandbox: could not open a browser", error=str(exc))
    if not opened:
        log.info("sandbox: open the page in a browser yourself", page=url)


async def _serve_then_stop(
    runtime: Runtime, host: str, sock: socket.socket, stop: anyio.Event, tg: anyio.abc.TaskGroup
) -> None:
    await serve(runtime, host=host, port=int(sock.getsockname()[1]), stop=stop, sock=sock)
    tg.cancel_scope.cancel()  # interrupted by a signal: end the conversation too


async def _conversation(
    messenger: SandboxMessenger,
    amojo: FakeAmojo,
    scope_id: str,
    rounds: int,
    interval: float,
    capabilities: frozenset[Capability],
) -> None:
    n = 0
    while rounds == 0 or n < rounds:
        n += 1
        await _round(messenger, amojo, scope_id, n, capabilities)
        if n != rounds:
            await anyio.sleep(interval)


async def _round(
    messenger: SandboxMessenger, amojo: FakeAmojo, scope_id: str, n: int, capabilities: frozenset[Capability]
) -> None:
    """One conversation: the client writes, a manager answers, and the answer's status comes back as
    the messenger reports it (receipts, or a send that counts as delivered)."""
    chat = "client"
    text = f"Hello from the client, message {n}"
    seen = len(amojo.messages)
    log.info("1. client writes in the messenger", chat=chat, text=text)
    await messenger.sandbox_client_writes(chat, text)
    if not await _wait_for(lambda: any(m.text == text for m in amojo.messages[seen:]), 10):
        log.error("the client's message did not reach amoCRM")
        return
    arrived = next(m for m in amojo.messages[seen:] if m.text == text)
    log.info("2. amoCRM received it", conversation_id=arrived.conversation_id, amocrm_id=arrived.id)
    reply = f"Manager's answer to message {n}"
    received = len(messenger.sandbox_received(chat))
    post = getattr(arrived.content, "post", None)
    if post is not None:  # a comment: the manager answers in the post's comments
        emitted = await amojo.emit_comment_reply(scope_id, arrived.conversation_id or "", post.id, reply)
        log.info("3. a manager answers the comment in amoCRM", post=post.id, text=reply, webhook_status=emitted.status)
    else:
        emitted = await amojo.emit_text(scope_id, arrived.conversation_id or "", reply)
        log.info("3. a manager answers in amoCRM", text=reply, webhook_status=emitted.status)
    if await _wait_for(lambda: reply in messenger.sandbox_received(chat)[received:], 10):
        log.info("4. the client got the answer in the messenger", chat=chat)
    else:
        log.error("the manager's answer did not reach the messenger")
        return
    message_id = emitted.message_id or ""
    client_reads = getattr(messenger, "sandbox_client_reads", None)
    if client_reads is not None:  # the messenger reports receipts: the client's device sends them
        await client_reads(chat)
        log.info("the client's messenger reports the answer received", chat=chat)
    reads = client_reads is not None and Capability.read_receipts in capabilities
    last = wire.DeliveryStatusCode.READ if reads else wire.DeliveryStatusCode.DELIVERED
    final = {last, wire.DeliveryStatusCode.ERROR}
    receipts = bool({Capability.delivery_receipts, Capability.read_receipts} & capabilities)
    # without receipts, a status comes only from a send that counts as delivered (Telegram's), at once
    if await _wait_for(lambda: _shown(amojo, message_id) in final, 5 if receipts else 1):
        log.info("5. amoCRM shows the delivery status", delivery_status=_shown(amojo, message_id))
    elif receipts:
        log.warning("amoCRM shows no delivery status for the answer", delivery_status=_shown(amojo, message_id))
    else:
        log.info("5. amoCRM shows no delivery status: the messenger reports none")


def _shown(amojo: FakeAmojo, message_id: str) -> int:
    """The delivery status amoCRM shows for ``message_id`` (0: none yet)."""
    statuses = amojo.message(message_id).statuses
    return int(statuses[-1].delivery_status) if statuses else 0
