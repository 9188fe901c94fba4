"""WhatsApp template review for amoCRM (spec amojo §10): amoCRM asks, Meta decides, amoCRM is told.

1. At startup :class:`ReviewDesk` subscribes amoCRM's ``add_chat_template_review`` account webhook to
   ``{public_url}/hooks/whatsapp/{instance}/template-review?token=<token>``; the token is random,
   made once and kept in the instance state, because amoCRM signs these hooks with nothing.
2. When a user sends a ``waba`` template to review, amoCRM posts the template there as a
   form with bracketed keys (``add[0][id]=…``). :meth:`ReviewDesk.receive` checks the token,
   keeps the template and review ids in the state and answers at once (amoCRM waits 2 s).
3. In the background the template is read again through the REST API (the hook itself is not
   trusted) and created on Meta: ``POST /{waba-id}/message_templates`` with its category,
   language, header, body, footer, buttons and examples. amoCRM's ``{{markers}}`` become
   ``{{1}}``, ``{{2}}``… in the order they first appear; the amoCRM template's ``external_id`` is
   set to ``name:language`` so that sends find the WhatsApp template (see :mod:`.compose`).
4. Meta's verdict goes to amoCRM's review (``POST /api/v4/chats/templates/{id}/review/{review_id}``):
   when the ``message_template_status_update`` webhook comes, and by polling Meta every
   ``poll_interval`` seconds while a template is still pending. APPROVED and REINSTATED →
   ``approved``; REJECTED → ``rejected`` with the reason; PAUSED → ``paused``; DISABLED →
   ``rejected``; PENDING and IN_APPEAL → ``review``.

A number reviews the templates of its own amoCRM source (``source_external_id``, else the
instance name); numbers of one WABA share its templates, so a second number finds the template
already on Meta and reports the same verdict.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import anyio
import msgspec
from amoconnect.adapter import AdapterContext, WebhookRequest, WebhookResponse
from amoconnect.amocrm import AmoCRMClient, ChatTemplate, ReviewStatus
from amoconnect.errors import AmoCRMError, MessengerError
from amoconnect.logging import redact
from amoconnect.signing import same_secret

from .cloudapi import GraphApi
from .compose import MARKER, TemplateRef, markers
from .webhooks import TemplateUpdate

__all__ = [
    "REVIEW_STATUS",
    "KnownTemplate",
    "ReviewDesk",
    "ReviewRequest",
    "ReviewSettings",
    "encode_review_hook",
    "meta_name",
    "meta_template",
    "parse_form",
    "review_requests",
]

REVIEW_STATUS: Final[dict[str, ReviewStatus]] = {
    "APPROVED": "approved",
    "REINSTATED": "approved",
    "REJECTED": "rejected",
    "DISABLED": "rejected",
    "PAUSED": "paused",
    "PENDING": "review",
    "IN_APPEAL": "review",
}
"""Meta's template status → amoCRM's review status."""
_FINAL: Final = frozenset({"APPROVED", "REJECTED", "DISABLED"})
_TOKEN_KEY = "review:token"
_INBOX_KEY = "review:inbox"
_KNOWN_KEY = "review:known"
_REF_KEY = "review:ref:"


class ReviewRequest(msgspec.Struct, frozen=True):
    """A review amoCRM asked for: the template and the review (one per WhatsApp source)."""

    template_id: int
    review_id: int
    source_id: int | None = None


class KnownTemplate(msgspec.Struct, kw_only=True):
    """A template this number created on Meta for an amoCRM review, and the last verdict reported."""

    template_id: int
    review_id: int
    name: str
    language: str
    status: str = "PENDING"


# -- the hook's form body -------------------------------------------------------------------------


def parse_form(body: bytes) -> Any:
    """A form with bracketed keys (``add[0][reviews][0][id]=5``) as nested dicts and lists.

    Unbracketed keys stay keys of the top dict; numbered keys make lists.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(errors="replace"), keep_blank_values=True):
        parts = [p for p in re.split(r"[\[\]]+", key) if p != ""]
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if parts:
            node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _templates_in(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        if "id" in node and ("reviews" in node or "content" in node):
            yield node
            return
        for child in node.values():
            yield from _templates_in(child)
    elif isinstance(node, list):
        for child in node:
            yield from _templates_in(child)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def review_requests(form: Any) -> list[ReviewRequest]:
    """The (template, review) pairs of an ``add_chat_template_review`` hook."""
    found = []
    for template in _templates_in(form):
        template_id = _int(template.get("id"))
        reviews = template.get("reviews")
        if template_id is None or not isinstance(reviews, list):
            continue
        for review in reviews:
            review_id = _int(review.get("id")) if isinstance(review, dict) else None
            if review_id is not None:
                found.append(ReviewRequest(template_id, review_id, _int(review.get("source_id"))))
    return found


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]", item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif value is not None:
        out.append((prefix, str(value).lower() if isinstance(value, bool) else str(value)))


def encode_review_hook(*templates: dict[str, Any]) -> bytes:
    """The form body amoCRM posts for ``add_chat_template_review`` (for tests and fakes)."""
    out: list[tuple[str, str]] = []
    for index, template in enumerate(templates):
        for key, value in template.items():
            _flatten(f"add[{index}][{key}]", value, out)
    return urlencode(out).encode()


# -- amoCRM template → Meta template ------------------------------------------------------------------


def meta_name(template: ChatTemplate) -> str:
    """The WhatsApp name of an amoCRM template: its ``external_id``'s name, else made from its name and id."""
    external = (template.external_id or "").partition(":")[0].strip()
    if re.fullmatch(r"[a-z0-9_]{1,512}", external):
        return external
    slug = re.sub(r"[^a-z0-9]+", "_", template.name.lower()).strip("_")[:400] or "template"
    return f"{slug}_{template.id}"


def _numbered(text: str, names: tuple[str, ...]) -> str:
    return MARKER.sub(lambda m: "{{" + str(names.index(m.group(1).strip()) + 1) + "}}", text)


def meta_template(template: ChatTemplate) -> tuple[dict[str, Any], TemplateRef]:
    """The ``message_templates`` request for an amoCRM ``waba`` template, and where sends will find it."""
    language = (template.waba_language or "").strip()
    if not language:
        raise MessengerError(f"template {template.id} has no waba_language")
    examples = template.waba_examples or {}

    def example(name: str) -> str:
        for key in (name, "{{" + name + "}}", "{{ " + name + " }}"):
            if examples.get(key):
                return examples[key]
        return name

    body_names = markers(template.content)
    body: dict[str, Any] = {"type": "BODY", "text": _numbered(template.content, body_names)}
    if body_names:
        body["example"] = {"body_text": [[example(n) for n in body_names]]}
    components: list[dict[str, Any]] = []
    header_names: tuple[str, ...] = ()
    if template.waba_header:
        header_names = markers(template.waba_header)
        header: dict[str, Any] = {
            "type": "HEADER",
            "format": "TEXT",
            "text": _numbered(template.waba_header, header_names),
        }
        if header_names:
            header["example"] = {"header_text": [example(n) for n in header_names]}
        components.append(header)
    components.append(body)
    if template.waba_footer:
        components.append({"type": "FOOTER", "text": template.waba_footer})
    buttons = [
        {"type": "URL", "text": b.text, "url": b.url}
        if b.type == "url" and b.url
        else {"type": "QUICK_REPLY", "text": b.text}
        for b in template.buttons or []
    ]
    if buttons:
        components.append({"type": "BUTTONS", "buttons": buttons})
    name = meta_name(template)
    request = {
        "name": name,
        "language": language,
        "category": (template.waba_category or "UTILITY").upper(),
        "components": components,
    }
    return request, TemplateRef(name, language, body_names, header_names)


class ReviewSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``settings.template_review``: answer amoCRM's template reviews with Meta's verdicts."""

    amocrm_url: str
    """The account's REST API, ``https://{subdomain}.amocrm.ru`` (or ``.kommo.com``)."""
    amocrm_token: str
    """A long-lived token of the account (admin rights: it subscribes an account webhook)."""
    poll_interval: float = 300.0
    """Seconds between polls of Meta for templates still in review (the webhook's fallback)."""


# -- the desk ---------------------------------------------------------------------------------------


class ReviewDesk:
    """One number's side of the template review: receives amoCRM's hooks, talks to Meta, answers amoCRM."""

    def __init__(
        self,
        settings: ReviewSettings,
        *,
        api: GraphApi,
        context: AdapterContext,
        source: str,
        waba_id: str,
        pauses: tuple[float, float],
    ) -> None:
        """``source``: the amoCRM source's external_id; ``pauses``: the first and the longest pause
        after a failed round."""
        self.settings = settings
        self.api = api
        self.context = context
        self.state = context.state
        self.log = context.log
        self.source = source
        self.waba_id = waba_id
        self.pauses = pauses
        self.amocrm = AmoCRMClient(
            settings.amocrm_url,
            tokens=settings.amocrm_token,
            client=context.http,
            limiter=context.amocrm_limiter,  # the account's limit, shared with the core's calls
        )
        self.token: str | None = None
        self._locked: anyio.Lock | None = None
        self._woken: anyio.Event | None = None
        self._sources: dict[int, str] = {}

    @property
    def _lock(self) -> anyio.Lock:
        """Guards the review state's read-modify-write (made in the event loop, on first use)."""
        if self._locked is None:
            self._locked = anyio.Lock()
        return self._locked

    @property
    def _wake(self) -> anyio.Event:
        if self._woken is None:
            self._woken = anyio.Event()
        return self._woken

    # -- state ------------------------------------------------------------------------------------

    async def _inbox(self) -> list[ReviewRequest]:
        raw = await self.state.get(_INBOX_KEY)
        return msgspec.json.decode(raw, type=list[ReviewRequest]) if raw else []

    async def _known(self) -> dict[str, KnownTemplate]:
        raw = await self.state.get(_KNOWN_KEY)
        return msgspec.json.decode(raw, type=dict[str, KnownTemplate]) if raw else {}

    async def known_ref(self, template_id: str) -> TemplateRef | None:
        """Where amoCRM template ``template_id`` was created on Meta, if this number created it."""
        raw = await self.state.get(_REF_KEY + str(template_id))
        if not raw:
            return None
        name, language, body, header = msgspec.json.decode(raw, type=tuple[str, str, list[str], list[str]])
        return TemplateRef(name, language, tuple(body), tuple(header))

    # -- entry points -----------------------------------------------------------------------------

    @property
    def destination(self) -> str | None:
        """The URL amoCRM's account webhook posts to, with the token."""
        public = self.context.public_url
        if public is None or self.token is None:
            return None
        return f"{public}/template-review?token={self.token}"

    async def startup(self) -> None:
        """Make (once) the hook's token and subscribe the account webhook."""
        stored = await self.state.get(_TOKEN_KEY)
        if stored:
            self.token = stored.decode()
        else:
            self.token = secrets.token_urlsafe(24)
            await self.state.set(_TOKEN_KEY, self.token.encode())
        redact(self.token)  # generated, not configured: keep it out of the logs too
        destination = self.destination
        if destination is None:
            self.log.warning("template review needs server.public_url: amoCRM cannot reach the review webhook")
            return
        try:
            await self.amocrm.subscribe_webhook(destination, ["add_chat_template_review"])
        except AmoCRMError as exc:
            self.log.warning("subscribing amoCRM's add_chat_template_review webhook failed", error=str(exc))
        else:
            self.log.info("template review webhook subscribed in amoCRM")

    async def receive(self, request: WebhookRequest) -> WebhookResponse:
        """Take an ``add_chat_template_review`` hook: check the token, keep its reviews, answer at once."""
        given = request.query.get("token") or ""
        if self.token is None or not same_secret(given, self.token):
            return WebhookResponse(status=403, body=b"wrong token")
        requests = review_requests(parse_form(request.body))
        if requests:
            async with self._lock:
                inbox = await self._inbox()
                inbox.extend(r for r in requests if r not in inbox)
                await self.state.set(_INBOX_KEY, msgspec.json.encode(inbox))
            self._wake.set()
            self.log.info("template review asked", reviews=[(r.template_id, r.review_id) for r in requests])
        return WebhookResponse(status=200, body=b"ok")

    async def template_update(self, update: TemplateUpdate) -> None:
        """Meta's ``message_template_status_update``: report it to amoCRM when it is one of ours."""
        async with self._lock:
            known = await self._known()
            entry = known.get(update.template_id)
            if entry is None:
                return
            await self._report(entry, update.event, update.reason)
            await self.state.set(_KNOWN_KEY, msgspec.json.encode(known))

    async def run(self) -> None:
        """Work the inbox, and poll Meta for pending templates every ``poll_interval`` seconds."""
        first, longest = self.pauses
        pause = first
        while True:
            try:
                await self.work_inbox()
                await self.poll()
            except (MessengerError, AmoCRMError) as exc:
                self.log.warning("template review: will try again", error=str(exc), retry_in_s=pause)
                await anyio.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            pause = first
            with anyio.move_on_after(self.settings.poll_interval):
                await self._wake.wait()
            self._woken = None

    # -- work -------------------------------------------------------------------------------------

    async def _ours(self, request: ReviewRequest) -> bool:
        if request.source_id is None:
            return True
        if request.source_id not in self._sources:
            self._sources = {s.id: s.external_id for s in await self.amocrm.list_sources() if s.id is not None}
        return self._sources.get(request.source_id) == self.source

    async def work_inbox(self) -> None:
        """Create on Meta every template waiting in the inbox (kept there until done, for retries)."""
        for request in await self._inbox():
            try:
                if await self._ours(request):
                    await self._create(request)
            except (AmoCRMError, MessengerError) as exc:
                if exc.retryable:
                    raise
                self.log.warning("template review given up", request=request, error=str(exc))
            async with self._lock:
                inbox = [r for r in await self._inbox() if r != request]
                await self.state.set(_INBOX_KEY, msgspec.json.encode(inbox))

    async def _create(self, request: ReviewRequest) -> None:
        template = next((t for t in await self.amocrm.list_templates() if t.id == request.template_id), None)
        review = next((r for r in (template.reviews or []) if r.id == request.review_id), None) if template else None
        if template is None or review is None or template.type != "waba":
            self.log.warning("template review for a template amoCRM does not show; ignored", request=request)
            return
        if review.status != "review":
            self.log.info("template review already decided in amoCRM", request=request, status=review.status)
            return
        try:
            body, ref = meta_template(template)
            answer = await self._post_or_find(body)
        except MessengerError as exc:
            if exc.retryable:
                raise
            await self.amocrm.set_review_status(
                request.template_id, request.review_id, "rejected", reject_reason=f"WhatsApp refused it: {exc}"[:500]
            )
            self.log.warning("Meta refused the template", template=request.template_id, error=str(exc))
            return
        meta_id = str(answer["id"])
        raw_ref = msgspec.json.encode([ref.name, ref.language, list(ref.body), list(ref.header)])
        await self.state.set(_REF_KEY + str(template.id), raw_ref)
        entry = KnownTemplate(
            template_id=request.template_id, review_id=request.review_id, name=ref.name, language=ref.language
        )
        async with self._lock:
            known = await self._known()
            known[meta_id] = entry
            await self._report(entry, str(answer.get("status") or "PENDING"), "")
            await self.state.set(_KNOWN_KEY, msgspec.json.encode(known))
        self.log.info("template created on Meta", template=template.id, name=ref.name, meta_id=meta_id)
        external_id = f"{ref.name}:{ref.language}"
        if template.external_id != external_id:
            try:
                await self.amocrm.update_templates([msgspec.structs.replace(template, external_id=external_id)])
            except AmoCRMError as exc:
                self.log.warning("could not set the template's external_id in amoCRM", error=str(exc))

    async def _post_or_find(self, body: dict[str, Any]) -> dict[str, Any]:
        waba = self.waba_id
        try:
            answer: dict[str, Any] = await self.api.request("POST", f"{waba}/message_templates", json=body)
            return answer
        except MessengerError as exc:
            if "already exists" not in exc.description.lower():
                raise
        found = await self.api.request(
            "GET", f"{waba}/message_templates", params={"name": body["name"], "fields": "id,name,language,status"}
        )
        for item in found.get("data") or []:
            if item.get("name") == body["name"] and item.get("language") == body["language"]:
                return dict(item)
        raise MessengerError(f"Meta says template {body['name']!r} exists but does not list it")

    async def poll(self) -> None:
        """Ask Meta for the status of every template still pending, and report changes."""
        async with self._lock:
            known = await self._known()
        pending = [meta_id for meta_id, entry in known.items() if entry.status not in _FINAL]
        for meta_id in pending:
            try:
                info = await self.api.request("GET", meta_id, params={"fields": "name,language,status,rejected_reason"})
            except MessengerError as exc:
                if exc.retryable:
                    raise
                self.log.info("Meta does not show a pending template", meta_id=meta_id, error=str(exc))
                continue
            status = str(info.get("status") or "")
            reason = str(info.get("rejected_reason") or "")
            async with self._lock:
                known = await self._known()
                entry = known.get(meta_id)
                if entry is not None and status and status != entry.status:
                    await self._report(entry, status, "" if reason == "NONE" else reason)
                    await self.state.set(_KNOWN_KEY, msgspec.json.encode(known))

    async def _report(self, entry: KnownTemplate, status: str, reason: str) -> None:
        """Tell amoCRM Meta's verdict, once per change; ``entry.status`` remembers it."""
        verdict = REVIEW_STATUS.get(status)
        if verdict is None or status == entry.status:
            entry.status = status if verdict is not None else entry.status
            return
        if verdict != "review" or entry.status not in ("PENDING", "IN_APPEAL"):
            reject_reason = (reason or status.lower()) if verdict == "rejected" else None
            await self.amocrm.set_review_status(
                entry.template_id, entry.review_id, verdict, reject_reason=reject_reason
            )
            self.log.info("template review reported to amoCRM", template=entry.template_id, status=verdict)
        entry.status = status
