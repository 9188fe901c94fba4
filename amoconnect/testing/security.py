"""Test helpers for the connector's guards: who decides a secret check, what a request stored, what leaked.

- :func:`digest_verdict` patches :func:`hmac.compare_digest`: it records every comparison and,
  given a verdict, answers it, so a test proves a check is decided there (a wrong secret passes
  when it says yes, the right one fails when it says no);
- :func:`secret_comparisons` scans source files for ``==``, ``!=``, ``in`` on secrets;
- :class:`StoreWrites` records queue jobs and dedup keys written while a request runs;
  :func:`check_body_cap` proves a webhook route refuses bodies over its cap, streaming, and
  :func:`check_refused_unread` that it refuses a request without credentials before reading its body;
- :func:`leaks` finds configured secrets in captured text; :func:`captured_logs` renders every
  log line through the connector's own processors (redaction included); :class:`ResponseRecorder`
  keeps every answer the app gives; :func:`secret_rig` configures distinctive core secrets,
  :func:`core_failures` drives the core's failure paths and :func:`everything_said` gathers what
  the connector said to anyone (logs, answers, amoCRM, the dead letters).
"""

from __future__ import annotations

import ast
import hmac
import io
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logging import RedactingFormatter, configure
from ..runtime import Runtime
from ..store.base import NewJob, Store

if TYPE_CHECKING:
    from .kit import ConnectorRig

__all__ = [
    "ACCOUNT_TOKEN",
    "CHANNEL_SECRET",
    "CORE_SECRETS",
    "MEDIA_SECRET",
    "SECRET_NAMES",
    "CapturedLogs",
    "ResponseRecorder",
    "StoreWrites",
    "captured_logs",
    "check_body_cap",
    "check_refused_unread",
    "core_failures",
    "digest_verdict",
    "everything_said",
    "leaks",
    "secret_comparisons",
    "secret_rig",
]

SECRET_NAMES = re.compile(
    r"secret|signature|token|confirmation|password|passwd|digest|hmac|api_key|(^|_)mac($|_)|(^|_)sig($|_)", re.I
)
"""Names of values that are secrets, or carry one (``self.token``, ``headers.get("X-Signature")``)."""


@contextmanager
def digest_verdict(verdict: bool | None = None) -> Iterator[list[tuple[Any, Any]]]:
    """Record every :func:`hmac.compare_digest` call; with ``verdict``, answer it instead of comparing."""
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b) if verdict is None else verdict

    hmac.compare_digest = spy
    try:
        yield calls
    finally:
        hmac.compare_digest = real


def _names(node: ast.AST) -> list[str]:
    found: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("len", "type", "bool"):
            return []  # a length or a type is no secret
        if isinstance(sub, ast.Name):
            found.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "get" and sub.args:
            found.append(_text(sub.args[0]))  # headers.get("X-Signature")
        elif isinstance(sub, ast.Subscript):
            found.append(_text(sub.slice))  # body["secret"]
    return found


def _text(node: ast.AST) -> str:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def secret_comparisons(files: Iterable[Path], root: Path | None = None) -> list[str]:
    """``path:line: code`` of each ``==``, ``!=``, ``in``, ``not in`` between two values of which one is a secret.

    A comparison with a literal (``mode == "webhook"``, ``token == ""``) is not one: the other side
    is no secret the caller holds. Use :func:`hmac.compare_digest` (or
    :func:`amoconnect.signing.same_secret`) for the others.
    """
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
                if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                    continue
                if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                    continue
                if any(SECRET_NAMES.search(name) for name in _names(left) + _names(right)):
                    shown = path.relative_to(root) if root is not None else path
                    found.append(f"{shown}:{node.lineno}: {ast.unparse(node)}")
    return found


class StoreWrites:
    """Records the jobs and dedup keys a store is asked to keep (``enqueue``) while installed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs: list[NewJob] = []
        self.dedup: list[str] = []

    @contextmanager
    def watching(self) -> Iterator[StoreWrites]:
        """Install on the store for the ``with`` block."""
        real = self.store.enqueue

        async def enqueue(jobs: Sequence[NewJob], *, dedup: Sequence[str] = ()) -> bool:
            self.jobs.extend(jobs)
            self.dedup.extend(dedup)
            return await real(jobs, dedup=dedup)

        self.store.enqueue = enqueue  # type: ignore[method-assign]
        try:
            yield self
        finally:
            self.store.enqueue = real  # type: ignore[method-assign]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.jobs.clear()
        self.dedup.clear()

    def __bool__(self) -> bool:
        return bool(self.jobs or self.dedup)


CHUNK = 16 * 1024


async def check_body_cap(
    client: httpx.AsyncClient, url: str, cap: int, store: Store, *, headers: Mapping[str, str] | None = None
) -> None:
    """POST bodies over ``cap`` to ``url``: one that says so (``Content-Length``), one chunked with no
    length, one whose ``Content-Length`` lies (says 10). Each must get 413, store nothing, and be read
    no further than the cap (the app stops pulling the body: it is not buffered whole first)."""
    headers = dict(headers or {})
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < 64 * cap:  # far past the cap, but a broken guard still ends
            pulled += CHUNK
            yield b"{" * CHUNK

    writes = StoreWrites(store)
    before = await store.counts()
    with writes.watching():
        declared = await client.post(url, content=b"{" * (cap + 1), headers=headers)
        assert declared.status_code == 413, f"{url}: {cap + 1} bytes declared got {declared.status_code}"
        for name, extra in (("chunked", {}), ("lying Content-Length", {"Content-Length": "10"})):
            pulled = 0
            response = await client.post(url, content=endless(), headers={**headers, **extra})
            assert response.status_code == 413, f"{url}: a {name} body over the cap got {response.status_code}"
            assert pulled <= cap + 2 * CHUNK, f"{url}: {pulled} bytes of a {name} body read past the {cap} cap"
    assert not writes, f"{url}: a refused body stored {writes.jobs} {writes.dedup}"
    assert await store.counts() == before


async def check_refused_unread(
    client: httpx.AsyncClient, url: str, store: Store, *, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """POST an endless body to ``url`` with ``headers`` that lack the messenger's credentials: the answer must be
    401 or 403 before a byte of the body is read (the headers alone condemn it), and nothing stored."""
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < 64 * 1024 * 1024:  # a broken guard still ends
            pulled += CHUNK
            yield b"{" * CHUNK

    before = await store.counts()
    with StoreWrites(store).watching() as writes:
        response = await client.post(url, content=endless(), headers=dict(headers or {}))
    assert response.status_code in (401, 403), f"{url}: a request without credentials got {response.status_code}"
    assert pulled == 0, f"{url}: {pulled} bytes of the body of a request without credentials were read"
    assert response.headers.get("connection") == "close", f"{url}: the unread body's connection stays open"
    assert not writes, f"{url}: a request without credentials stored {writes.jobs} {writes.dedup}"
    assert await store.counts() == before
    return response


class ResponseRecorder:
    """ASGI middleware that keeps every response body the app sends (``record(runtime)`` installs it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    @classmethod
    def record(cls, runtime: Runtime) -> ResponseRecorder:
        """Wrap a started runtime's app; requests through ``runtime.client`` and the kit's fakes pass it."""
        assert runtime.app is not None, "start the runtime first"
        recorder = cls(runtime.app)
        runtime.app = recorder
        return recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def keep(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.bodies.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, keep)

    @property
    def texts(self) -> list[str]:
        """The bodies as text."""
        return [body.decode("utf-8", "replace") for body in self.bodies]


def leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """``(secret, text)`` for each secret found in a text (the text cut around it)."""
    found = []
    for text in texts:
        for secret in secrets:
            at = text.find(secret)
            if secret and at >= 0:
                found.append((secret, text[max(at - 80, 0) : at + len(secret) + 80]))
    return found


class CapturedLogs:
    """The log lines written since :func:`captured_logs` began."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def lines(self) -> list[str]:
        """Every line so far."""
        return self._stream.getvalue().splitlines()


@contextmanager
def captured_logs(secrets: Iterable[str] = (), *, level: str = "debug") -> Iterator[CapturedLogs]:
    """Every log line, structlog's and the standard library's, rendered as the running connector
    renders them (:func:`amoconnect.logging.configure`: JSON, the ``secrets`` redacted, the standard
    library at ``WARNING`` and above); the previous set-up is restored after."""
    previous = structlog.get_config()
    stream = io.StringIO()
    secrets = list(secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(name)s %(message)s", secrets))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    configure(level=level, json=True, secrets=secrets)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))
    root.addHandler(handler)
    try:
        yield CapturedLogs(stream)
    finally:
        root.removeHandler(handler)
        structlog.configure(**previous)


CHANNEL_SECRET: Final = "chan-4f1c9a0be6d2-secret-7d3e8a91c5b0f2e4"
"""The distinctive channel secret of :func:`secret_rig`."""
ACCOUNT_TOKEN: Final = "acct-rest-token-9b8e7d6c5a4f3e2d1c0b"
"""The distinctive REST token of :func:`secret_rig`'s account."""
MEDIA_SECRET: Final = "media-key-0a1b2c3d4e5f6a7b8c9d"
"""The distinctive media signing secret of :func:`secret_rig`."""
CORE_SECRETS: Final = (CHANNEL_SECRET, ACCOUNT_TOKEN, MEDIA_SECRET)


def secret_rig(messenger: str, settings: Mapping[str, Any], workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """:func:`~amoconnect.testing.kit.connector` options with the distinctive core secrets, and the
    secrets the connector's configuration redacts (:meth:`~amoconnect.config.Config.secrets`)."""
    from ..config import parse_config
    from .fake_amojo import FakeAmojo
    from .kit import ACCOUNT, BOT, CHANNEL, PUBLIC_URL, rig_config

    config: dict[str, Any] = {
        "channel": {"secret": CHANNEL_SECRET},
        "accounts": [{"name": "main", "amojo_id": ACCOUNT, "token": ACCOUNT_TOKEN, "rest_url": "http://rest.test"}],
        "server": {"public_url": PUBLIC_URL, "media_secret": MEDIA_SECRET},
    }
    redacted = parse_config(rig_config(workdir, messenger, settings, **config), "<rig>").secrets()
    amojo = FakeAmojo(CHANNEL, CHANNEL_SECRET, bot_id=BOT)
    options = {"settings": settings, "workdir": workdir, "amojo": amojo, "config": config}
    return options, redacted


async def core_failures(rig: ConnectorRig, chat: str, client_writes: Callable[[str], Awaitable[Any]]) -> None:
    """Drive the core's failure paths once a client of ``chat`` has written: an amoCRM webhook with a bad
    signature and one for an unknown scope, a bad media link, amojo refusing the client's next messages,
    the messenger's network failing a manager's message (exceptions carrying the URL)."""
    client = rig.client
    assert (
        await client.post(f"/amocrm/{rig.scope_id}", content=b"{}", headers={"X-Signature": "0" * 40})
    ).status_code == 401
    assert (await client.get("/media/not-a-token")).status_code == 404
    dead = len(await rig.runtime.store.dead_letters())
    rig.amojo.fail_next(500, times=1000)
    await client_writes("amojo is down for this one")
    await rig.eventually(lambda: _more_dead(rig, dead))
    rig.amojo.clear_faults()
    assert rig.router is not None
    rig.router.fail_next(1000)
    sent = await rig.manager_writes(chat, "the messenger's network is down for this one")
    await rig.eventually(
        lambda: any(s.delivery_status == -1 for s in rig.amojo.message(sent.message_id or "").statuses)
    )
    rig.router.fail_next(0)


async def _more_dead(rig: ConnectorRig, than: int) -> bool:
    return len(await rig.runtime.store.dead_letters()) > than


async def everything_said(rig: ConnectorRig, recorder: ResponseRecorder, logs: CapturedLogs) -> list[str]:
    """The log lines, the app's answers, what amoCRM got (texts, delivery errors) and the dead letters' errors."""
    said = [*logs.lines, *recorder.texts]
    for message in rig.amojo.messages:
        said.append(repr(message))
        said.extend(status.error or "" for status in message.statuses)
    said.extend(letter.error for letter in await rig.runtime.store.dead_letters())
    return said
