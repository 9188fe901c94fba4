"""A faithful fake of the WhatsApp Cloud API (Graph API), in-process, for tests, the sandbox and plugin authors.

:class:`FakeWhatsApp` serves ``/{version}/...`` as an ASGI app (:attr:`~FakeWhatsApp.app`), keeps an
in-memory world of numbers, users, messages, media and templates, and plays the users::

    fake = FakeWhatsApp(http=connector_client)          # http delivers the webhooks
    number = fake.add_number("1000000001", waba_id="2000000001", token="T")
    fake.set_webhook("http://connector/hooks/whatsapp/main", phone_number_id=number.phone_number_id)
    anna = fake.add_user("4915100000001", name="Anna")
    await fake.client_writes(anna, "Hello")             # a signed webhook reaches the connector
    fake.sent_to(anna)                                  # what the business sent her

What it does as Meta does:

- bearer tokens (401, code 190), unknown ids (400, code 100 subcode 33), the Graph error envelope
  ``{"error": {"message", "type", "code", "error_subcode"?, "error_data": {"details"}, "fbtrace_id"}}``;
- ``POST /{phone-number-id}/messages``: text, media by link or id, reactions, interactive lists and
  reply buttons, templates, and the mark-read / typing-indicator call; each body is checked
  (:func:`~amoconnect_whatsapp._fakeparts.check_message`: lengths, 10 rows in all, 1-3 buttons →
  131009/131008/100); the 24-hour window (131047 when free text goes to a user who has not written
  to that number for 24 h — as a late ``failed`` status, or at once with ``window_errors="sync"``);
  templates must exist, be approved in that language (132001), not paused (132015) or disabled
  (132016), and get as many parameters as they have variables (132000); a named template's
  parameters each carry their ``parameter_name`` (else 100 "Parameter name is missing or empty",
  as Meta answers); an unknown recipient is
  accepted and fails later with 131026; throughput (``throughput`` per second → 130429) and pair
  rate (``pair_limit`` per 6 s to one user → 131056);
- media: ``POST /{phone-number-id}/media`` (multipart), ``GET /{media-id}`` for a short-lived URL,
  downloads that need the bearer token, ``DELETE /{media-id}``; links the business sends are
  fetched through ``fetch_http`` (a failure: 131053, late or at once with ``media_link_errors``);
- templates: ``POST /{waba-id}/message_templates`` (checked), ``GET`` with a ``name`` filter,
  ``GET /{template-id}``; :meth:`~FakeWhatsApp.review_template` moves one through its review
  and sends ``message_template_status_update``;
- webhooks: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the exact bytes>``, one change per
  POST, contacts with the 2026 ``user_id`` (and the older phone-only shape for ``legacy`` users),
  retried on a non-2xx answer; ``hold()`` and ``release(shuffle=..., duplicate=...)`` deliver out
  of order and twice on demand; the ``hub.challenge`` handshake when a callback URL is set
  through the API (``POST /{phone-number-id}`` ``webhook_configuration``, or ``/{waba-id}/subscribed_apps``);
- coexistence: a number with ``business_app`` set is on the WhatsApp Business app too; what the
  business writes there (:meth:`~FakeWhatsApp.business_app_writes`, ``business_app_edits``) comes
  as an ``smb_message_echoes`` change (``message_echoes``: from, to, id, timestamp, the message);
  the API's own sends make none, as Meta documents;
- :meth:`~FakeWhatsApp.fail_next` injects errors (429 storms, 131056, 5xx...).

Statuses of accepted messages (``auto_statuses``, and late failures) are delivered after the
answer: by :meth:`~FakeWhatsApp.running`'s task in-process, by the server's lifespan under uvicorn,
else right after the response.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import anyio
import anyio.abc
import httpx
from amoconnect.signing import matching_secret, same_secret
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._fakeparts import (
    ERRORS,
    MEDIA_KINDS,
    ApiCall,
    Delivery,
    GraphFail,
    MediaFile,
    Number,
    Sent,
    StoredTemplate,
    User,
    check_message,
    check_template_request,
    error_response,
    fail,
    multipart,
)
from ._fakeworld import FakeWorld

__all__ = ["SANDBOX_TOKEN", "FakeWhatsApp", "Number", "Sent", "StoredTemplate", "User"]

SANDBOX_TOKEN: Final = "sandbox-token"
_APP_SECRET: Final = "fake-app-secret"
_VERIFY_TOKEN: Final = "fake-verify-token"
_UNSUPPORTED_POST = (
    "Unsupported post request. Object with ID '{id}' does not exist, cannot be loaded due to missing "
    "permissions, or does not support this operation. Please read the Graph API documentation at "
    "https://developers.facebook.com/docs/graph-api"
)
Later = Callable[[], Awaitable[None]]


class FakeWhatsApp(FakeWorld):
    """The Graph API of a few WhatsApp Business numbers and the users around them.

    ``http`` POSTs webhooks (a fresh client per delivery when ``None``); ``fetch_http`` downloads
    the media links the business sends (without one every link fails, as a private address
    would); ``app_secret`` signs webhooks; ``window`` is the customer service window in seconds;
    ``auto_statuses`` are sent for every accepted message, ``status_delay`` seconds after the answer;
    ``clock`` gives unix seconds.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        fetch_http: httpx.AsyncClient | None = None,
        app_secret: str = _APP_SECRET,
        window: float = 24 * 3600.0,
        window_errors: Literal["async", "sync"] = "async",
        media_link_errors: Literal["async", "sync"] = "async",
        auto_statuses: tuple[str, ...] = ("sent", "delivered"),
        throughput: int | None = None,
        pair_limit: int | None = None,
        delivery_attempts: int = 3,
        delivery_backoff: float = 0.05,
        status_delay: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.fetch_http = fetch_http
        self.app_secret = app_secret
        self.window = window
        self.window_errors = window_errors
        self.media_link_errors = media_link_errors
        self.auto_statuses = auto_statuses
        self.throughput = throughput
        self.pair_limit = pair_limit
        self.delivery_attempts = delivery_attempts
        self.delivery_backoff = delivery_backoff
        self.status_delay = status_delay
        self.clock = clock
        self.numbers: dict[str, Number] = {}
        self.waba_webhooks: dict[str, str] = {}
        """WABA id → its callback URL (template updates, and numbers without their own)."""
        self.users: dict[str, User] = {}
        self.sent: dict[str, Sent] = {}
        """wamid → a message the business sent."""
        self.inbound: dict[str, tuple[str, User, dict[str, Any]]] = {}
        """wamid → (phone_number_id, user, message) of what users wrote."""
        self.app_sent: dict[str, tuple[str, User, dict[str, Any]]] = {}
        """wamid → (phone_number_id, user, echo) of what the business wrote from the WhatsApp Business app."""
        self.media: dict[str, MediaFile] = {}
        self.templates: dict[str, StoredTemplate] = {}
        self.calls: list[ApiCall] = []
        self.deliveries: list[Delivery] = []
        self.webhooks: list[dict[str, Any]] = []
        """Every webhook body made, in order (for peer checks)."""
        self.undelivered: list[tuple[Number | str, bytes]] = []
        """Webhooks waiting for their number or WABA to get a URL."""
        self.read_marks: list[str] = []
        """Inbound message ids the business marked read."""
        self.typing: list[str] = []
        """Inbound message ids the business showed typing at."""
        self._faults: list[GraphFail | None] = []
        self._held: list[tuple[str, bytes]] | None = None
        self._duplicate_next = False
        self._queue: MemoryObjectSendStream[Later] | None = None
        self._sends: dict[str, list[float]] = {}
        self._ids = itertools.count(1)
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)

    # -- setup ----------------------------------------------------------------------------------

    def add_number(
        self,
        phone_number_id: str = "1000000001",
        *,
        waba_id: str = "2000000001",
        token: str | None = None,
        display_phone_number: str | None = None,
    ) -> Number:
        """A business number (its token defaults to a fresh random one)."""
        number = Number(
            phone_number_id,
            waba_id,
            token or secrets.token_urlsafe(16),
            display_phone_number or f"1555{phone_number_id[-7:]}",
        )
        self.numbers[phone_number_id] = number
        return number

    def add_user(
        self,
        wa_id: str | None = None,
        *,
        name: str = "",
        username: str | None = None,
        key: str | None = None,
        legacy: bool = False,
    ) -> User:
        """A WhatsApp user: ``wa_id`` None makes a username user whose phone number is hidden."""
        user_id = f"US.{next(self._ids) + 13491208655302741000}"
        user = User(key or wa_id or user_id, wa_id, user_id, name, username, legacy)
        self.users[user.key] = user
        return user

    def user(self, address: str) -> User | None:
        """The user a key, phone number or user id names."""
        digits = address.lstrip("+")
        return self.users.get(address) or next((u for u in self.users.values() if digits in (u.wa_id, u.user_id)), None)

    def set_webhook(self, url: str | None, *, phone_number_id: str | None = None, waba_id: str | None = None) -> None:
        """Send a number's (or a WABA's) webhooks to ``url``, without the handshake."""
        if phone_number_id is not None:
            self.numbers[phone_number_id].webhook_url = url
        if waba_id is not None:
            if url is None:
                self.waba_webhooks.pop(waba_id, None)
            else:
                self.waba_webhooks[waba_id] = url

    def fail_next(
        self,
        code: int,
        *,
        count: int = 1,
        status: int = 400,
        message: str | None = None,
        details: str = "",
        retry_after: float | None = None,
        after: int = 0,
    ) -> None:
        """Refuse ``count`` API calls with Meta's error ``code`` (HTTP ``status``), ``after`` calls from now."""
        title = message or ERRORS.get(code, ("Injected failure", ""))[0]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        text = f"({'#' + str(code)}) {title}"
        details = details or ERRORS.get(code, ("", ""))[1]
        self._faults.extend(None for _ in range(after - len(self._faults)))
        self._faults.extend(
            GraphFail(code, text, details=details, status=status, headers=headers) for _ in range(count)
        )

    def duplicate_next(self) -> None:
        """Deliver the next webhook twice (Meta delivers at least once)."""
        self._duplicate_next = True

    def hold(self) -> None:
        """Keep webhooks back until :meth:`release`."""
        if self._held is None:
            self._held = []

    async def release(self, *, shuffle: bool = False, duplicate: bool = False, seed: int = 7) -> None:
        """Deliver the held webhooks: in order, shuffled, and each twice if asked."""
        held, self._held = self._held or [], None
        if duplicate:
            held = held + held
        if shuffle:
            random.Random(seed).shuffle(held)
        for url, body in held:
            await self._post(url, body)

    # -- running ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeWhatsApp]:
        """Deliver late webhooks (statuses) from a task of the caller's, for the duration of the block."""
        send, receive = anyio.create_memory_object_stream[Later](1000)
        async with anyio.create_task_group() as tasks, send, receive:
            self._queue = send
            tasks.start_soon(self._work, receive)
            try:
                yield self
            finally:
                self._queue = None
                tasks.cancel_scope.cancel()

    async def _work(self, receive: anyio.abc.ObjectReceiveStream[Later]) -> None:
        async for later in receive:
            try:
                await later()
            except Exception:  # a test's connector may be gone; the fake goes on
                continue

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        async with self.running():
            yield

    def _later(self, work: list[Later], response: Response) -> Response:
        if not work:
            return response
        if self._queue is not None:
            for item in work:
                self._queue.send_nowait(item)
            return response

        async def run_all() -> None:
            for item in work:
                await item()

        response.background = BackgroundTask(run_all)
        return response

    # -- the API ---------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        return [
            Route("/download/{media_id}", self._download, methods=["GET"]),
            Route("/{version}/{node}/messages", self._endpoint(self._messages), methods=["POST"]),
            Route("/{version}/{node}/media", self._endpoint(self._upload), methods=["POST"]),
            Route(
                "/{version}/{node}/message_templates",
                self._endpoint(self._message_templates),
                methods=["GET", "POST"],
            ),
            Route("/{version}/{node}/subscribed_apps", self._endpoint(self._subscribed_apps), methods=["POST"]),
            Route("/{version}/{node}", self._endpoint(self._node), methods=["GET", "POST", "DELETE"]),
        ]

    def _endpoint(self, handler: Callable[[Request, list[Later]], Awaitable[Response]]) -> Any:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                payload = json.loads(raw) if raw and "json" in request.headers.get("content-type", "") else None
            except ValueError:
                payload = None
            call = ApiCall(request.method, request.url.path, payload)
            self.calls.append(call)
            work: list[Later] = []
            try:
                if not request.path_params["version"].startswith("v"):
                    fail(2500, "Unknown path components", kind="OAuthException")
                fault = self._faults.pop(0) if self._faults else None
                if fault is not None:
                    raise fault
                response = await handler(request, work)
            except GraphFail as error:
                call.status = error.status
                return error_response(error)
            call.status = response.status_code
            return self._later(work, response)

        return endpoint

    def _token(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not token or matching_secret(token, [n.token for n in self.numbers.values()]) is None:
            fail(190, "Invalid OAuth access token - Cannot parse access token", status=401)
        return token

    def _number(self, request: Request) -> Number:
        token = self._token(request)
        node = request.path_params["node"]
        number = self.numbers.get(node)
        if number is None or not same_secret(token, number.token):
            fail(100, _UNSUPPORTED_POST.format(id=node), subcode=33, kind="GraphMethodException")
        return number

    def _waba(self, request: Request) -> str:
        token = self._token(request)
        waba = str(request.path_params["node"])
        if not any(n.waba_id == waba and same_secret(token, n.token) for n in self.numbers.values()):
            fail(100, _UNSUPPORTED_POST.format(id=waba), subcode=33, kind="GraphMethodException")
        return waba

    async def _json(self, request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            fail(100, "(#100) The request body is not valid JSON")

    async def _node(self, request: Request, work: list[Later]) -> Response:
        node = request.path_params["node"]
        token = self._token(request)
        number = self.numbers.get(node)
        if number is not None and same_secret(token, number.token):
            if request.method == "GET":
                return JSONResponse(
                    {"id": node, "display_phone_number": number.display_phone_number, "verified_name": "Fake"}
                )
            body = await self._json(request)
            config = (body or {}).get("webhook_configuration") if isinstance(body, dict) else None
            if not isinstance(config, dict) or "override_callback_uri" not in config:
                fail(100, "(#100) Invalid parameter", "expected webhook_configuration.override_callback_uri")
            url = config["override_callback_uri"] or None
            if url is not None:
                await self._handshake(url, str(config.get("verify_token", "")))
            number.webhook_url = url
            work.append(self.deliver_pending)
            return JSONResponse({"success": True})
        media = self.media.get(node)
        if media is not None and same_secret(token, self.numbers[media.phone_number_id].token):
            if request.method == "DELETE":
                del self.media[node]
                return JSONResponse({"success": True})
            return JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{str(request.base_url).rstrip('/')}/download/{node}?mid={secrets.token_hex(6)}",
                    "mime_type": media.mime_type,
                    "sha256": media.sha256,
                    "file_size": str(len(media.content)),
                    "id": node,
                }
            )
        template = self.templates.get(node)
        if template is not None and request.method == "GET":
            self._waba_token(template.waba_id, token, node)
            return JSONResponse(self._template_json(template))
        fail(100, _UNSUPPORTED_POST.format(id=node), subcode=33, kind="GraphMethodException")

    def _waba_token(self, waba: str, token: str, node: str) -> None:
        if not any(n.waba_id == waba and same_secret(token, n.token) for n in self.numbers.values()):
            fail(100, _UNSUPPORTED_POST.format(id=node), subcode=33, kind="GraphMethodException")

    async def _handshake(self, url: str, verify_token: str) -> None:
        challenge = secrets.token_hex(8)
        params = {"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": verify_token}
        try:
            response = await self._client_get(url, params)
        except httpx.HTTPError as exc:
            fail(2200, "Callback verification failed with the following errors", f"could not reach {url}: {exc!r}")
        if response.status_code != 200 or response.text != challenge:
            fail(
                2200,
                "Callback verification failed with the following errors",
                f"HTTP Status Code = {response.status_code}; the response did not match the challenge",
            )

    async def _client_get(self, url: str, params: dict[str, str]) -> httpx.Response:
        if self.http is not None:
            return await self.http.get(url, params=params, timeout=10.0)
        async with httpx.AsyncClient() as client:
            return await client.get(url, params=params, timeout=10.0)

    async def verify_webhook(self, url: str, verify_token: str) -> bool:
        """Meta's handshake against ``url``: True when it answered the challenge."""
        try:
            await self._handshake(url, verify_token)
        except GraphFail:
            return False
        return True

    async def _subscribed_apps(self, request: Request, work: list[Later]) -> Response:
        waba = self._waba(request)
        body = await self._json(request) if await request.body() else {}
        url = body.get("override_callback_uri") if isinstance(body, dict) else None
        if url:
            await self._handshake(url, str(body.get("verify_token", "")))
            self.waba_webhooks[waba] = url
            work.append(self.deliver_pending)
        return JSONResponse({"success": True})

    async def _download(self, request: Request) -> Response:
        media = self.media.get(request.path_params["media_id"])
        auth = request.headers.get("authorization", "")
        if media is None:
            return JSONResponse({"error": {"message": "media not found", "code": 100}}, status_code=404)
        if not same_secret(auth, f"Bearer {self.numbers[media.phone_number_id].token}"):
            return JSONResponse(
                {"error": {"message": "Invalid OAuth access token", "type": "OAuthException", "code": 190}},
                status_code=401,
            )
        return Response(media.content, media_type=media.mime_type)

    async def _upload(self, request: Request, work: list[Later]) -> Response:
        number = self._number(request)
        fields, upload = multipart(await request.body(), request.headers.get("content-type", ""))
        if fields.get("messaging_product") != "whatsapp":
            fail(100, "(#100) The parameter messaging_product is required.")
        if upload is None:
            fail(100, "(#100) The parameter file is required.")
        content, upload_type = upload
        mime = fields.get("type") or upload_type
        if not mime:
            fail(100, "(#100) The parameter type is required.")
        media = self._store_media(number.phone_number_id, content, mime)
        return JSONResponse({"id": media.id})

    # -- messages --------------------------------------------------------------------------------

    async def _messages(self, request: Request, work: list[Later]) -> Response:
        number = self._number(request)
        body = await self._json(request)
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            fail(100, "(#100) The parameter messaging_product is required.")
        if not number.registered:
            fail(133010, "(#133010) Account not registered", "the phone number is not registered with the Cloud API")
        if "status" in body:
            return self._mark_read(number, body)
        kind = check_message(body)
        now = self.clock()
        self._throttle(number, body, now)
        address = str(body.get("to") or body.get("recipient"))
        user = self.user(address)
        wamid = f"wamid.{secrets.token_urlsafe(18)}"
        sent = Sent(wamid, number.phone_number_id, user, address, body)
        late: tuple[int, str] | None = None
        if user is None or (body.get("to") and user.wa_id is None):
            late = (131026, "")
        else:
            late = await self._check_content(number, user, kind, body, now)
        if "context" in body and body["context"]["message_id"] not in self.sent | self.inbound | self.app_sent:
            fail(131009, "(#131009) Parameter value is not valid", "context.message_id is not a message of this chat")
        if kind == "reaction" and user is not None:
            target = body["reaction"]["message_id"]
            if target not in self.sent and target not in self.inbound and target not in self.app_sent:
                fail(131009, "(#131009) Parameter value is not valid", "reaction.message_id is not a message here")
        self.sent[wamid] = sent
        self._sends.setdefault(number.phone_number_id, []).append(now)
        if user is not None:
            self._sends.setdefault(f"{number.phone_number_id}:{user.key}", []).append(now)
        for status in self.auto_statuses if late is None else ("failed",):
            work.append(self._status_later(sent, status, late[0] if late else None, late[1] if late else ""))
        contact: dict[str, Any] = {"input": address}
        if user is not None and user.wa_id:
            contact["wa_id"] = user.wa_id
        if user is not None and "recipient" in body:
            contact["user_id"] = user.user_id
        message: dict[str, Any] = {"id": wamid}
        if kind == "template":
            message["message_status"] = "accepted"
        return JSONResponse({"messaging_product": "whatsapp", "contacts": [contact], "messages": [message]})

    def _status_later(self, sent: Sent, status: str, code: int | None, details: str) -> Later:
        async def later() -> None:
            await anyio.sleep(self.status_delay)
            await self.deliver_status(sent.wamid, status, error_code=code, details=details)

        return later

    def _throttle(self, number: Number, body: dict[str, Any], now: float) -> None:
        if self.throughput is not None:
            recent = [t for t in self._sends.get(number.phone_number_id, []) if t > now - 1.0]
            if len(recent) >= self.throughput:
                fail(130429, "(#130429) Rate limit hit", ERRORS[130429][1])
        user = self.user(str(body.get("to") or body.get("recipient")))
        if self.pair_limit is not None and user is not None:
            recent = [t for t in self._sends.get(f"{number.phone_number_id}:{user.key}", []) if t > now - 6.0]
            if len(recent) >= self.pair_limit:
                fail(131056, f"(#131056) {ERRORS[131056][0]}", ERRORS[131056][1])

    async def _check_content(
        self, number: Number, user: User, kind: str, body: dict[str, Any], now: float
    ) -> tuple[int, str] | None:
        """Template, window and media checks; a late failure (code, details) or ``None``."""
        if kind == "template":
            self._check_template_send(number, body["template"])
            return None
        last = user.last_message_at.get(number.phone_number_id)
        if last is None or now - last > self.window:
            if self.window_errors == "sync":
                fail(131047, f"(#131047) {ERRORS[131047][0]}", ERRORS[131047][1])
            return 131047, ""
        if kind in MEDIA_KINDS:
            media = body[kind]
            if "id" in media:
                stored = self.media.get(str(media["id"]))
                if stored is None or stored.phone_number_id != number.phone_number_id:
                    fail(
                        131053,
                        "(#131053) Media upload error",
                        f"media id {media['id']!r} is not an upload of this number",
                    )
            elif not await self._fetch(str(media["link"])):
                if self.media_link_errors == "sync":
                    fail(131053, "(#131053) Media upload error", ERRORS[131053][1])
                return 131053, ""
        return None

    async def _fetch(self, url: str) -> bool:
        if self.fetch_http is None:
            return False
        try:
            response = await self.fetch_http.get(url, timeout=10.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and bool(response.content)

    def _check_template_send(self, number: Number, template: dict[str, Any]) -> None:
        name, language = template["name"], template["language"]["code"]
        stored = next(
            (
                t
                for t in self.templates.values()
                if t.waba_id == number.waba_id and t.name == name and t.language == language
            ),
            None,
        )
        if stored is None or stored.status not in ("APPROVED", "PAUSED", "DISABLED"):
            fail(
                132001,
                "(#132001) Template name does not exist in the translation",
                f"template name ({name}) does not exist in {language}",
            )
        if stored.status == "PAUSED":
            fail(132015, "(#132015) Template is Paused", f"template {name} is paused")
        if stored.status == "DISABLED":
            fail(132016, "(#132016) Template is disabled", f"template {name} is disabled")
        given = {str(c.get("type")).lower(): c.get("parameters") or [] for c in template.get("components") or []}
        for kind in ("body", "header"):
            expected = stored.variables(kind.upper())
            parameters = given.get(kind, [])
            if len(parameters) != len(expected):
                fail(
                    132000,
                    "(#132000) Number of parameters does not match the expected number of params",
                    f"{kind}: number of localizable_params ({len(parameters)}) does not match "
                    f"the expected number of params ({len(expected)})",
                )
            if stored.parameter_format == "NAMED":
                self._check_named(kind, parameters, expected)
            for parameter in parameters:
                if parameter.get("type") != "text" or not str(parameter.get("text", "")).strip():
                    fail(
                        132012,
                        "(#132012) Parameter format does not match format in the created template",
                        f"{kind} parameter {parameter!r}",
                    )

    @staticmethod
    def _check_named(kind: str, parameters: list[Any], expected: list[str]) -> None:
        """A named template's parameters each carry their ``parameter_name``, as Meta demands (module docstring)."""
        names = [p.get("parameter_name") if isinstance(p, dict) else None for p in parameters]
        if not all(isinstance(n, str) and n.strip() for n in names):
            fail(100, "(#100) Invalid parameter", "Parameter name is missing or empty")
        if sorted(str(n) for n in names) != sorted(expected):
            unknown = sorted(set(map(str, names)) - set(expected)) or sorted(expected)
            fail(100, "(#100) Invalid parameter", f"{kind}: parameter name {unknown[0]} does not match the template")

    def _mark_read(self, number: Number, body: dict[str, Any]) -> Response:
        for key in body:
            if key not in ("messaging_product", "status", "message_id", "typing_indicator"):
                fail(100, f"(#100) Param {key} is not a valid parameter")
        message_id = body.get("message_id")
        found = self.inbound.get(str(message_id))
        if body.get("status") != "read" or found is None or found[0] != number.phone_number_id:
            fail(100, "(#100) Invalid parameter", f"message_id {message_id!r} is not a message this number received")
        self.read_marks.append(str(message_id))
        indicator = body.get("typing_indicator")
        if indicator is not None:
            if indicator != {"type": "text"}:
                fail(100, "(#100) Invalid parameter", "typing_indicator must be {'type': 'text'}")
            self.typing.append(str(message_id))
        return JSONResponse({"success": True})

    # -- templates -------------------------------------------------------------------------------

    def _template_json(self, template: StoredTemplate) -> dict[str, Any]:
        data = {
            "id": template.id,
            "name": template.name,
            "language": template.language,
            "status": template.status,
            "category": template.category,
            "components": template.components,
            "parameter_format": template.parameter_format,
        }
        if template.status == "REJECTED":
            data["rejected_reason"] = template.reason or "INVALID_FORMAT"
        return data

    async def _message_templates(self, request: Request, work: list[Later]) -> Response:
        waba = self._waba(request)
        if request.method == "GET":
            name = request.query_params.get("name")
            found = [
                self._template_json(t)
                for t in self.templates.values()
                if t.waba_id == waba and (name is None or t.name == name)
            ]
            return JSONResponse({"data": found, "paging": {"cursors": {"before": "", "after": ""}}})
        body = check_template_request(await self._json(request))
        if any(
            t.waba_id == waba and t.name == body["name"] and t.language == body["language"]
            for t in self.templates.values()
        ):
            fail(
                100,
                "(#100) Invalid parameter",
                f"Content in this language already exists: {body['name']} ({body['language']}) already exists",
                subcode=2388024,
            )
        template = self.add_template(
            body["name"],
            body["language"],
            category=body["category"],
            components=body["components"],
            waba_id=waba,
            status="PENDING",
            parameter_format=str(body.get("parameter_format") or "POSITIONAL").upper(),
        )
        return JSONResponse({"id": template.id, "status": template.status, "category": template.category})

    def add_template(
        self,
        name: str,
        language: str = "en_US",
        *,
        body: str = "Hello {{1}}",
        waba_id: str = "2000000001",
        category: str = "UTILITY",
        components: list[dict[str, Any]] | None = None,
        status: str = "APPROVED",
        parameter_format: str | None = None,
    ) -> StoredTemplate:
        """A template of a WABA, approved unless said otherwise.

        ``parameter_format`` (``POSITIONAL`` or ``NAMED``) follows the body's parameters unless given:
        ``{{1}}`` positional, ``{{first_name}}`` named.
        """
        components = components if components is not None else [{"type": "BODY", "text": body}]
        template = StoredTemplate(
            str(800000000000 + next(self._ids)), waba_id, name, language, category, components, status
        )
        if parameter_format is None:
            names = template.variables("BODY") + template.variables("HEADER")
            parameter_format = "NAMED" if names and not all(n.isdigit() for n in names) else "POSITIONAL"
        template.parameter_format = parameter_format
        self.templates[template.id] = template
        return template

    async def review_template(self, template_id: str, status: str, reason: str = "") -> int | None:
        """Meta decides on a template (``APPROVED``, ``REJECTED``, ``PAUSED``...) and tells the WABA's webhook."""
        template = self.templates[template_id]
        template.status = status
        template.reason = reason
        value: dict[str, Any] = {
            "event": status,
            "message_template_id": int(template.id),
            "message_template_name": template.name,
            "message_template_language": template.language,
            "message_template_category": template.category,
            "reason": reason or "NONE",
        }
        entry = {
            "id": template.waba_id,
            "time": int(self.clock()),
            "changes": [{"field": "message_template_status_update", "value": value}],
        }
        return await self._emit(template.waba_id, {"object": "whatsapp_business_account", "entry": [entry]})

    # -- sandbox ---------------------------------------------------------------------------------

    @classmethod
    def sandbox(cls, *, http: httpx.AsyncClient | None = None) -> FakeWhatsApp:
        """The fake ``amoconnect run --plugin whatsapp --sandbox`` drives: one number, statuses up to read."""
        fake = cls(http=http, auto_statuses=("sent", "delivered", "read"))
        fake.add_number(token=SANDBOX_TOKEN)
        return fake

    def sandbox_settings(self, api_url: str) -> dict[str, Any]:
        """Settings of an instance talking to this fake at ``api_url``, registering its webhook itself."""
        number = next(iter(self.numbers.values()))
        return {
            "phone_number_id": number.phone_number_id,
            "waba_id": number.waba_id,
            "token": number.token,
            "app_secret": self.app_secret,
            "verify_token": _VERIFY_TOKEN,
            "api_url": api_url,
            "register_webhook": "number",
        }

    def _sandbox_user(self, chat: str) -> User:
        user = self.user(chat)
        if user is None:
            wa_id = chat if chat.isdigit() else f"4915{next(self._ids):08d}"
            user = self.add_user(wa_id, name="Sandbox Client", key=chat)
        return user

    async def sandbox_client_writes(self, chat: str, text: str) -> None:
        """The sandbox's client ``chat`` writes ``text``."""
        await self.client_writes(self._sandbox_user(chat), text)

    def sandbox_received(self, chat: str) -> list[str]:
        """Texts the business sent the sandbox's client ``chat``."""
        user = self.user(chat)
        return [] if user is None else [s.text for s in self.sent_to(user)]
