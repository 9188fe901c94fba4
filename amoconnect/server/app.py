"""The ASGI app: webhook ingest from amoCRM and messengers, health, metrics and media.

Ingest does only this inside a request: read the body (capped), verify the signature,
decode, one durable write, answer. amoCRM never retries a webhook, so ``200`` means "on disk".

Routes (README "HTTP routes"):

- ``POST /amocrm/{scope_id}``: amoCRM's Chats API webhooks (register ``{public_url}/amocrm/:scope_id``).
- ``GET|POST /hooks/{messenger}/{instance}[/{path}]``: a messenger instance's webhooks.
- ``GET /media/{token}``: re-hosted media at signed, expiring URLs.
- ``GET /healthz``: liveness and queue depth. ``GET /metrics``: Prometheus text format.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..adapter import WebhookRequest
from ..amojo import wire
from ..core import AMOCRM, INBOUND, InboundJob
from ..errors import SignatureError, StoreError, WebhookError
from ..ids import job_key
from ..model import InboundEvent
from ..signing import verify_signature
from ..store.base import NewJob

if TYPE_CHECKING:
    from ..routing import Instance
    from ..runtime import Runtime

__all__ = ["build_app", "enqueue_inbound"]

log = structlog.get_logger("amoconnect.server")

_encode = msgspec.json.Encoder().encode
RETRY_AFTER_SECONDS = 5


class _TooLarge(Exception):
    pass


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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


async def enqueue_inbound(
    runtime: Runtime, instance: Instance, events: list[InboundEvent] | tuple[InboundEvent, ...]
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
        )
        if await runtime.store.enqueue([job], dedup=[f"{instance.name}:{event.dedup_key}"]):
            new += 1

    if len(events) == 1:
        await one(events[0])
    else:
        async with anyio.create_task_group() as tg:  # concurrent writes share one commit
            for event in events:
                tg.start_soon(one, event)
    metrics = runtime.metrics
    metrics.jobs_queued.labels(INBOUND).inc(new)
    if len(events) > new:
        metrics.webhooks_duplicate.labels(instance.messenger).inc(len(events) - new)
    return new


def build_app(runtime: Runtime) -> Starlette:
    """The connector's ASGI app, bound to ``runtime``."""
    config = runtime.config
    metrics = runtime.metrics
    secret = config.channel.secret

    def refuse(source: str, status: int, reason: str, detail: str, **context: Any) -> Response:
        metrics.webhooks_refused.labels(source, reason).inc()
        log.warning("webhook refused", source=source, reason=reason, detail=detail, status=status, **context)
        return _json(status, {"error": reason, "detail": detail})

    def overloaded(source: str, exc: StoreError) -> Response:
        """Nothing was stored: say so, and when to come back (messengers retry; amoCRM does not)."""
        metrics.webhooks_refused.labels(source, "store_unavailable").inc()
        log.error("webhook not stored", source=source, error=str(exc))
        response = _json(503, {"error": "store_unavailable", "detail": "the connector could not store the webhook"})
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    async def amocrm_webhook(request: Request) -> Response:
        started = time.perf_counter()
        scope_id = request.path_params["scope_id"]
        try:
            body = await _read_capped(request, config.server.max_body_bytes)
        except _TooLarge:
            return refuse(
                "amocrm", 413, "too_large", f"body over {config.server.max_body_bytes} bytes", scope_id=scope_id
            )
        except ClientDisconnect:
            return Response(status_code=400)
        if not verify_signature(secret, body, request.headers.get("x-signature")):
            return refuse("amocrm", 401, "bad_signature", "X-Signature does not match the body", scope_id=scope_id)
        account = config.account_by_scope(scope_id)
        if account is None:
            return refuse("amocrm", 404, "unknown_scope", f"no account is connected as scope {scope_id!r}")
        try:
            hook = wire.parse_webhook(body)
        except WebhookError as exc:
            return refuse("amocrm", 400, "bad_body", str(exc), scope_id=scope_id)
        if hook.account_id != account.amojo_id:
            return refuse(
                "amocrm",
                400,
                "wrong_account",
                f"hook for account {hook.account_id!r} sent to scope {scope_id!r}",
                scope_id=scope_id,
            )
        job, dedup = _hook_job(scope_id, hook, body)
        try:
            fresh = await runtime.store.enqueue([job], dedup=[dedup])
        except StoreError as exc:
            return overloaded("amocrm", exc)
        if fresh:
            metrics.webhooks_received.labels("amocrm").inc()
            metrics.jobs_queued.labels(AMOCRM).inc()
        else:
            metrics.webhooks_duplicate.labels("amocrm").inc()
        metrics.ack_latency.labels("amocrm").observe(time.perf_counter() - started)
        return _json(200, {"ok": True} if fresh else {"ok": True, "duplicate": True})

    async def messenger_webhook(request: Request) -> Response:
        started = time.perf_counter()
        messenger = request.path_params["messenger"]
        instance = runtime.routing.get(request.path_params["instance"])
        path = request.path_params.get("path", "")
        if instance is None or instance.messenger != messenger:
            return refuse(
                messenger, 404, "unknown_instance", f"no {messenger} instance {request.path_params['instance']!r}"
            )
        route = next((r for r in instance.adapter.routes if r.path == path), None)
        if route is None:
            return refuse(messenger, 404, "unknown_path", f"{messenger} serves no webhook at {path!r}")
        if request.method not in route.methods:
            return refuse(messenger, 405, "bad_method", f"{request.method} is not accepted here")
        cap = config.server.max_messenger_body_bytes
        try:
            body = await _read_capped(request, cap)
        except _TooLarge:
            return refuse(messenger, 413, "too_large", f"body over {cap} bytes", instance=instance.name)
        except ClientDisconnect:
            return Response(status_code=400)
        hook_request = WebhookRequest(
            method=request.method,
            path=path,
            headers=httpx.Headers(request.headers.raw),
            query=httpx.QueryParams(request.url.query),
            body=body,
        )
        adapter = instance.adapter
        try:
            early = await adapter.verify(hook_request)
            if early is not None:
                return Response(
                    early.body, status_code=early.status, media_type=early.content_type, headers=dict(early.headers)
                )
            events = list(await adapter.parse(hook_request))
        except SignatureError as exc:
            return refuse(messenger, 401, "bad_signature", str(exc), instance=instance.name)
        except WebhookError as exc:
            return refuse(messenger, 400, "bad_body", str(exc), instance=instance.name)
        try:
            await enqueue_inbound(runtime, instance, events)
        except StoreError as exc:
            return overloaded(messenger, exc)
        metrics.webhooks_received.labels(messenger).inc()
        metrics.ack_latency.labels(messenger).observe(time.perf_counter() - started)
        ack = adapter.webhook_ack
        return Response(ack.body, status_code=ack.status, media_type=ack.content_type, headers=dict(ack.headers))

    async def media(request: Request) -> Response:
        file_id = runtime.media.resolve(request.path_params["token"])
        stored = await runtime.media.get(file_id) if file_id else None
        if stored is None:
            return _json(404, {"error": "not_found", "detail": "no such media, or the link expired"})
        disposition = f"inline; filename*=UTF-8''{_quote(stored.file_name)}"
        return FileResponse(stored.path, media_type=stored.content_type, headers={"Content-Disposition": disposition})

    async def healthz(request: Request) -> Response:
        counts = await runtime.store.counts()
        return _json(200, {"status": "ok", "queue": counts})

    async def metrics_endpoint(request: Request) -> Response:
        for state, count in (await runtime.store.counts()).items():
            metrics.queue_depth.labels(state).set(count)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/amocrm/{scope_id}", amocrm_webhook, methods=["POST"]),
        Route("/hooks/{messenger}/{instance}", messenger_webhook, methods=["GET", "POST"]),
        Route("/hooks/{messenger}/{instance}/{path:path}", messenger_webhook, methods=["GET", "POST"]),
        Route("/media/{token}", media, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes)

    def add_route(path: str, endpoint: Any, *, methods: Any = ("GET",)) -> None:
        if path.startswith(("/hooks/", "/amocrm/", "/media/")) or path in ("/healthz", "/metrics"):
            raise ValueError(f"route {path!r} belongs to the core")
        app.router.routes.append(Route(path, endpoint, methods=list(methods)))

    runtime.pm.hook.startup_routes(add_route=add_route)
    return app


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
