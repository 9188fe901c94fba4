"""The ASGI app: webhook ingest from amoCRM and messengers, health, metrics and media.

Ingest does only this inside a request: check what the headers can tell of the sender, read
the body (capped, within a deadline, in memory all bodies share: :mod:`.guard`), verify the
signature, decode, one durable write, answer. The two webhook routes are bare ASGI handlers in front of
the Starlette app (:class:`_FastPaths`); the rest are Starlette routes. amoCRM never retries
a webhook, so ``200`` means "on disk".

Routes (README "HTTP routes"):

- ``POST /amocrm/{scope_id}``: amoCRM's Chats API webhooks (register ``{public_url}/amocrm/:scope_id``).
- ``GET|POST /hooks/{messenger}/{instance}[/{path}]``: a messenger instance's webhooks.
- ``GET /media/{token}``: re-hosted media at signed, expiring URLs.
- ``GET /healthz``: whether the store takes writes (a probe, cached a second) and queue depth.
- ``GET /metrics``: Prometheus text format.
- ``/admin/api/...``: the operator's API (:mod:`.admin`), handed in as ``AppParts.routes``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import msgspec
import pluggy
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..adapter import WebhookRequest, WebhookResponse
from ..amojo import wire
from ..amojo.hooks import foreign_account, not_json
from ..config import Config
from ..core import AMOCRM, INBOUND, InboundJob
from ..errors import NOT_JSON, SignatureError, StoreError, WebhookError
from ..ids import job_key
from ..media import MediaStore
from ..metrics import Metrics
from ..model import InboundEvent
from ..precedence import Arrivals
from ..registry import Registry
from ..routing import Instance, Routing
from ..signing import verify_signature
from ..store.base import NewJob, Store
from .guard import BodyMemory

__all__ = ["AppParts", "build_app", "enqueue_inbound"]

log = structlog.get_logger("amoconnect.server")

_encode = msgspec.json.Encoder().encode
RETRY_AFTER_SECONDS = 5
PROBE_TTL = 1.0
"""Seconds ``/healthz`` reuses the outcome of the store's write probe."""


_SIGNATURE = re.compile(r"[0-9a-fA-F]{40}")
"""amoCRM's ``X-Signature``: a hex HMAC-SHA1."""


class _Unread(Exception):
    """The body was not read: answer ``status`` for ``reason`` (and close the connection)."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


class _Disconnected(Exception):
    pass


class _BodyReader:
    """Reads webhook bodies within ``timeout`` seconds; what they take past :attr:`allowance` bytes each
    comes out of ``memory``, shared by all. A small webhook thus never waits for big ones, and all bodies
    together hold at most ``max_connections`` × the allowance + ``max_body_memory`` bytes."""

    allowance = 64 * 1024
    """Bytes of each body outside the shared memory (uvicorn buffers as much per connection anyway)."""

    def __init__(self, memory: BodyMemory, timeout: float) -> None:
        self.memory, self.timeout = memory, timeout

    @asynccontextmanager
    async def read(self, scope: Scope, receive: Receive, cap: int) -> AsyncIterator[bytes]:
        """The request body, counted against the memory until the block ends.

        Raises :class:`_Unread` for a body over ``cap`` bytes (413), one that does not arrive within
        the timeout (408) or that the memory cannot hold now (503); :class:`_Disconnected` if the sender left.
        """
        taken = 0
        try:
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit():
                    if int(value) > cap:
                        raise _Unread(413, "too_large", f"body over {cap} bytes")
                    taken = self._take(max(0, int(value) - self.allowance))
            chunks: list[bytes] = []
            size = 0
            with anyio.move_on_after(self.timeout) as deadline:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > cap:
                        raise _Unread(413, "too_large", f"body over {cap} bytes")
                    if size - self.allowance > taken:
                        taken += self._take(size - self.allowance - taken)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            if deadline.cancelled_caught:
                raise _Unread(408, "body_timeout", f"body not received within {self.timeout:g} s")
            body = b"".join(chunks)
            del chunks
            yield body
        finally:
            self.memory.give_back(taken)

    def _take(self, size: int) -> int:
        if not self.memory.take(size):
            raise _Unread(503, "body_memory", "the connector is reading too many webhook bodies at once")
        return size


def _headers(raw: list[tuple[bytes, bytes]]) -> httpx.Headers:
    """``httpx.Headers`` of a request; saying they are ASCII when they are spares httpx's decoding trial per lookup."""
    ascii_only = all(name.isascii() and value.isascii() for name, value in raw)
    return httpx.Headers(raw, encoding="ascii" if ascii_only else None)


def _hook_job(scope_id: str, hook: wire.Webhook, body: bytes) -> tuple[NewJob, str]:
    """The job of an amoCRM webhook and its dedup key."""
    if isinstance(hook, wire.MessageHook):
        key = job_key(scope_id, hook.message.conversation.id)
        dedup = f"amocrm:{scope_id}:message:{hook.amocrm_message_id}"
    elif isinstance(hook, wire.ReactionHook):
        r = hook.reaction
        key = job_key(scope_id, r.conversation.id)
        dedup = f"amocrm:{scope_id}:reaction:{r.message_id}:{r.user.id}:{r.type}:{r.emoji or ''}:{hook.time}"
    else:
        t = hook.typing
        key = job_key(scope_id, t.conversation.id, "typing")
        dedup = f"amocrm:{scope_id}:typing:{t.conversation.id}:{t.user.id}:{t.expired_at}"
    return NewJob(AMOCRM, key, body, scope_id), dedup


def _undecoded_job(scope_id: str, body: bytes) -> NewJob:
    """The job of a webhook that could not be understood: the worker makes it a dead letter, saying why."""
    return NewJob(AMOCRM, job_key(scope_id, "undecoded"), body, scope_id)


def _undecoded_key(scope_id: str, body: bytes) -> str:
    """The dedup key of a webhook that could not be understood: its bytes."""
    return f"amocrm:{scope_id}:undecoded:{hashlib.sha256(body).hexdigest()}"


@dataclasses.dataclass(frozen=True)
class AppParts:
    """What the app serves from, handed over by whoever runs it."""

    config: Config
    store: Store
    routing: Routing
    media: MediaStore
    metrics: Metrics
    pm: pluggy.PluginManager
    registry: Registry
    messengers: frozenset[str] = frozenset()
    """The installed messengers: the only names that become metric labels."""
    routes: Sequence[BaseRoute] = ()
    """More of the core's routes (the admin API, the integration's hooks)."""
    arrivals: Arrivals = dataclasses.field(default_factory=Arrivals)
    """Counts the webhooks being received, for the relay to let them go first."""


async def enqueue_inbound(
    store: Store, metrics: Metrics, instance: Instance, events: list[InboundEvent] | tuple[InboundEvent, ...]
) -> int:
    """Store a messenger instance's events durably, each once; returns how many were new."""
    new = 0

    async def one(event: InboundEvent) -> None:
        nonlocal new
        job = NewJob(
            INBOUND,
            job_key(instance.name, event.chat),
            msgspec.json.encode(InboundJob(instance.name, event)),
            instance.scope_id,
            chat=(instance.name, event.chat),
        )
        if await store.enqueue([job], dedup=[f"{instance.name}:{event.dedup_key}"]):
            new += 1

    if len(events) == 1:
        await one(events[0])
    else:
        async with anyio.create_task_group() as tg:  # concurrent writes share one commit
            for event in events:
                tg.start_soon(one, event)
    metrics.jobs_queued.labels(INBOUND).inc(new)
    if len(events) > new:
        metrics.webhooks_duplicate.labels(instance.messenger).inc(len(events) - new)
    return new


def build_app(parts: AppParts) -> ASGIApp:
    """The connector's ASGI app, serving from ``parts``."""
    config = parts.config
    metrics = parts.metrics
    secret = config.channel.secret

    def refusal(source: str, status: int, reason: str, detail: str, **context: Any) -> tuple[int, dict[str, Any]]:
        metrics.webhooks_refused.labels(source, reason).inc()
        log.warning("webhook refused", source=source, reason=reason, detail=detail, status=status, **context)
        return status, {"error": reason, "detail": detail}

    def overload(source: str, exc: StoreError) -> tuple[int, dict[str, Any]]:
        """Nothing was stored: say so, and when to come back (messengers retry; amoCRM does not)."""
        metrics.webhooks_refused.labels(source, "store_unavailable").inc()
        if source == "amocrm":
            log.critical("amoCRM webhook not stored; amoCRM never retries: the manager must send again", error=str(exc))
        else:
            log.error("webhook not stored; the messenger will retry it", source=source, error=str(exc))
        return 503, {"error": "store_unavailable", "detail": "the connector could not store the webhook"}

    account_by_scope = parts.registry.account_by_scope
    messengers = parts.messengers
    received, queued = metrics.webhooks_received.labels("amocrm"), metrics.jobs_queued.labels(AMOCRM)
    duplicate, ack_latency = metrics.webhooks_duplicate.labels("amocrm"), metrics.ack_latency.labels("amocrm")

    def counters(messenger: str) -> tuple[Any, Any]:
        """A messenger's count of webhooks stored and their ack latency."""
        return metrics.webhooks_received.labels(messenger), metrics.ack_latency.labels(messenger)

    accepted = {name: counters(name) for name in messengers}  # labelled once, not per webhook

    async def ingest_amocrm(scope_id: str, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
        """Verify, decode and store one amoCRM webhook; the status and JSON body to answer."""
        started = time.perf_counter()
        if not verify_signature(secret, body, signature):
            return refusal("amocrm", 401, "bad_signature", "X-Signature does not match the body", scope_id=scope_id)
        account = account_by_scope(scope_id)
        if account is None:
            return refusal("amocrm", 404, "unknown_scope", f"no account is connected as scope {scope_id!r}")
        if not account.active:
            detail = f"account {account.name!r} disconnected the integration"
            return refusal("amocrm", 410, "disconnected", detail, scope_id=scope_id)
        # amoCRM sends a webhook once: a signed JSON body is kept whatever it holds. One the
        # worker cannot deliver (not understood, another account's) becomes a dead letter with the
        # reason, for a person to see and re-queue after an upgrade (amoconnect jobs list / retry).
        problem: str | None
        try:
            hook = wire.parse_webhook(body)
        except WebhookError as exc:
            if (broken := not_json(body)) is not None:
                return refusal("amocrm", 400, "bad_body", broken, scope_id=scope_id)
            job, dedup, problem = _undecoded_job(scope_id, body), _undecoded_key(scope_id, body), str(exc)
        else:
            job, dedup = _hook_job(scope_id, hook, body)
            problem = foreign_account(hook.account_id, scope_id, account.amojo_id)
        try:
            fresh = await parts.store.enqueue([job], dedup=[dedup])
        except StoreError as exc:
            return overload("amocrm", exc)
        if fresh:
            received.inc()
            queued.inc()
        else:
            duplicate.inc()
        ack_latency.observe(time.perf_counter() - started)
        if problem is not None:
            log.warning("amoCRM webhook kept, to become a dead letter", scope_id=scope_id, problem=problem)
            return 200, {"ok": True, "dead_letter": problem, **({} if fresh else {"duplicate": True})}
        return 200, {"ok": True} if fresh else {"ok": True, "duplicate": True}

    reader = _BodyReader(BodyMemory(config.server.max_body_memory, metrics), config.server.body_timeout)

    def refuse(
        source: str, status: int, reason: str, detail: str, *, close: bool = False, **context: Any
    ) -> WebhookResponse:
        return _json_answer(*refusal(source, status, reason, detail, **context), close=close)

    async def amocrm_webhook(scope: Scope, receive: Receive, scope_id: str) -> WebhookResponse | None:
        """Check the signature's form, read the body, then :func:`ingest_amocrm`; None: the sender left."""
        signature = None
        for name, value in scope["headers"]:
            if name == b"x-signature":
                signature = value.decode("latin-1")
        if signature is None or not _SIGNATURE.fullmatch(signature):
            # Refused before the body is read: an unsigned request costs no memory.
            detail = "X-Signature missing or not a hex HMAC-SHA1"
            return refuse("amocrm", 401, "bad_signature", detail, close=True, scope_id=scope_id)
        try:
            async with reader.read(scope, receive, config.server.max_body_bytes) as body:
                return _json_answer(*await ingest_amocrm(scope_id, body, signature))
        except _Unread as exc:
            return refuse("amocrm", exc.status, exc.reason, exc.detail, close=True, scope_id=scope_id)
        except _Disconnected:
            return None  # the sender is gone: nothing stored, nobody to answer

    async def ingest_messenger(
        scope: Scope, receive: Receive, messenger: str, name: str, path: str
    ) -> WebhookResponse | None:
        """Route, check the headers, read, verify, parse and store one messenger webhook; what to answer
        (None: the sender left)."""
        started = time.perf_counter()
        method: str = scope["method"]
        instance = parts.routing.get(name)
        if instance is None or instance.messenger != messenger:
            # The path is anyone's to choose: only installed messengers become metric labels.
            source = messenger if messenger in messengers else "unknown"
            return refuse(source, 404, "unknown_instance", f"no {messenger} instance {name!r}")
        route = next((r for r in instance.adapter.routes if r.path == path), None)
        if route is None:
            return refuse(messenger, 404, "unknown_path", f"{messenger} serves no webhook at {path!r}")
        if method not in route.methods:
            return refuse(messenger, 405, "bad_method", f"{method} is not accepted here")
        head = WebhookRequest(
            method=method,
            path=path,
            headers=_headers(scope["headers"]),
            query=httpx.QueryParams(scope["query_string"].decode("latin-1")),
        )
        try:
            await instance.adapter.verify_headers(head)
        except SignatureError as exc:  # refused before the body is read: it costs no memory
            return refuse(messenger, 401, "bad_signature", str(exc), close=True, instance=instance.name)
        try:
            async with reader.read(scope, receive, config.server.max_messenger_body_bytes) as body:
                return await handle_messenger(instance, dataclasses.replace(head, body=body), started)
        except _Unread as exc:
            return refuse(messenger, exc.status, exc.reason, exc.detail, close=True, instance=instance.name)
        except _Disconnected:
            return None

    async def handle_messenger(instance: Instance, hook_request: WebhookRequest, started: float) -> WebhookResponse:
        """Verify, parse and store one messenger webhook read in full."""
        messenger, adapter = instance.messenger, instance.adapter
        try:
            early = await adapter.verify(hook_request)
            if early is not None:
                return early
            events = list(await adapter.parse(hook_request))
        except SignatureError as exc:
            return refuse(messenger, 401, "bad_signature", str(exc), instance=instance.name)
        except WebhookError as exc:
            return refuse(messenger, 400, "bad_body", str(exc), instance=instance.name)
        except NOT_JSON as exc:  # an adapter's JSON decoder let them through: still the sender's fault
            return refuse(messenger, 400, "bad_body", f"not JSON: {exc}", instance=instance.name)
        try:
            await enqueue_inbound(parts.store, metrics, instance, events)
        except StoreError as exc:
            return _json_answer(*overload(messenger, exc))
        counted, latency = accepted.get(messenger) or counters(messenger)
        counted.inc()
        latency.observe(time.perf_counter() - started)
        return adapter.webhook_ack

    async def media(request: Request) -> Response:
        file_id = parts.media.resolve(request.path_params["token"])
        stored = await parts.media.get(file_id) if file_id else None
        if stored is None:
            return _json(404, {"error": "not_found", "detail": "no such media, or the link expired"})
        headers = _media_headers(stored.content_type, stored.file_name)
        if stored.path is None:
            return Response(stored.content, media_type=stored.content_type, headers=headers)
        return FileResponse(stored.path, media_type=stored.content_type, headers=headers)

    probe = _Probe(parts.store.probe)

    async def healthz(request: Request) -> Response:
        try:
            await probe()
            counts = await parts.store.counts()
        except StoreError as exc:
            # A node that cannot reach its store must leave the load balancer's rotation.
            log.error("health check: store unavailable", error=str(exc))
            return _json(503, {"status": "store_unavailable", "detail": str(exc)})
        return _json(200, {"status": "ok", "queue": counts, "accounts": _account_states(parts.registry)})

    async def metrics_endpoint(request: Request) -> Response:
        for state, count in (await parts.store.counts()).items():
            metrics.queue_depth.labels(state).set(count)
        for state, count in _account_states(parts.registry).items():
            metrics.accounts.labels(state).set(count)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/media/{token}", media, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=[*routes, *parts.routes])

    def add_route(path: str, endpoint: Any, *, methods: Any = ("GET",)) -> None:
        if path.startswith(("/hooks/", "/amocrm/", "/media/", "/admin/", "/oauth/")) or path in (
            "/healthz",
            "/metrics",
        ):
            raise ValueError(f"route {path!r} belongs to the core")
        app.router.routes.append(Route(path, endpoint, methods=list(methods)))

    parts.pm.hook.startup_routes(add_route=add_route)
    return _FastPaths(app, amocrm_webhook, ingest_messenger, parts.arrivals)


class _Probe:
    """The store's write probe (:meth:`~amoconnect.store.base.Store.probe`), its outcome kept for
    :data:`PROBE_TTL` seconds: health checks, however many, cost at most one write a second."""

    def __init__(self, probe: Callable[[], Awaitable[None]]) -> None:
        self._probe = probe
        self._lock = anyio.Lock()
        self._until = 0.0
        self._failure: StoreError | None = None

    async def __call__(self) -> None:
        async with self._lock:
            if time.monotonic() >= self._until:
                try:
                    await self._probe()
                except StoreError as exc:
                    self._failure = exc
                else:
                    self._failure = None
                self._until = time.monotonic() + PROBE_TTL
        if self._failure is not None:
            raise self._failure


def _account_states(registry: Registry) -> dict[str, int]:
    """How many accounts are in each state (``needs_reauth``: their OAuth refresh token was refused)."""
    states = dict.fromkeys(("active", "needs_reauth", "disconnected"), 0)
    for account in registry.accounts():
        states[account.state] += 1
    return states


def _media_headers(content_type: str, file_name: str) -> dict[str, str]:
    """Headers that keep a client's file from running as a page of the connector's origin.

    Only plain images, audio and video are shown inline; anything else (HTML, SVG, PDF, ...)
    is a download. ``nosniff`` stops browsers from guessing a type, and the sandboxing CSP
    gives a file opened anyway no scripts, no origin and nothing to load.
    """
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    inline = kind in ("image", "audio", "video") and "xml" not in subtype
    return {
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename*=UTF-8''{quote(file_name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }


class _FastPaths:
    """The webhook routes as bare ASGI handlers in front of the Starlette app.

    ``/amocrm/{scope_id}`` (amoCRM waits at most 5 s and never retries) and
    ``/hooks/{messenger}/{instance}[/{path}]`` carry every message, so they skip the framework's
    per-request objects; every other path goes to the app.
    """

    def __init__(
        self,
        app: Starlette,
        amocrm: Callable[[Scope, Receive, str], Awaitable[WebhookResponse | None]],
        messenger: Callable[[Scope, Receive, str, str, str], Awaitable[WebhookResponse | None]],
        arrivals: Arrivals,
    ) -> None:
        self.app, self._amocrm, self._messenger = app, amocrm, messenger
        self.arrivals = arrivals
        self.router = app.router
        """The app's router, where ``startup_routes`` adds routes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http":
            if path.startswith("/amocrm/"):
                scope_id = path[len("/amocrm/") :]
                if scope_id and "/" not in scope_id:
                    if scope["method"] != "POST":
                        only_post = {"error": "bad_method", "detail": "only POST"}
                        await _respond(send, _json_answer(405, only_post, allow="POST"))
                    else:
                        with self.arrivals.arriving():
                            if (answer := await self._amocrm(scope, receive, scope_id)) is not None:
                                await _respond(send, answer)
                    return
            elif path.startswith("/hooks/"):
                messenger, _, rest = path[len("/hooks/") :].partition("/")
                name, _, hook_path = rest.partition("/")
                if messenger and name:
                    with self.arrivals.arriving():
                        answer = await self._messenger(scope, receive, messenger, name, hook_path)
                        if answer is not None:
                            await _respond(send, answer)
                    return
        await self.app(scope, receive, send)


def _json_answer(
    status: int, body: dict[str, Any], *, allow: str | None = None, close: bool = False
) -> WebhookResponse:
    """A JSON answer; ``close`` when the body was left unread (the server closes the connection after it)."""
    headers = {"Allow": allow} if allow is not None else {}
    if close:
        headers["Connection"] = "close"
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return WebhookResponse(status=status, body=_encode(body), content_type="application/json", headers=headers)


async def _respond(send: Send, answer: WebhookResponse) -> None:
    headers = [(b"content-type", answer.content_type.encode("latin-1"))]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
