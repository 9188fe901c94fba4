"""The world of the fake Graph API: its records, its webhooks and the users it plays.

:class:`FakeWorld` is the base of :class:`~amoconnect_whatsapp.fake.FakeWhatsApp`, which adds the
HTTP API; what users do (write, send media, react, pick list rows...) becomes signed webhooks here.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from ._fakeparts import ERRORS, Delivery, MediaFile, Number, Sent, StoredTemplate, User

__all__ = ["FakeWorld"]


class FakeWorld:
    """Numbers, users, messages and media, and the webhooks that tell the business about them."""

    http: httpx.AsyncClient | None
    app_secret: str
    clock: Callable[[], float]
    delivery_attempts: int
    delivery_backoff: float
    numbers: dict[str, Number]
    waba_webhooks: dict[str, str]
    users: dict[str, User]
    sent: dict[str, Sent]
    inbound: dict[str, tuple[str, User, dict[str, Any]]]
    app_sent: dict[str, tuple[str, User, dict[str, Any]]]
    media: dict[str, MediaFile]
    templates: dict[str, StoredTemplate]
    deliveries: list[Delivery]
    webhooks: list[dict[str, Any]]
    undelivered: list[tuple[Number | str, bytes]]
    _held: list[tuple[str, bytes]] | None
    _duplicate_next: bool
    _ids: itertools.count[int]

    def _store_media(self, phone_number_id: str, content: bytes, mime: str) -> MediaFile:
        media_id = str(900000000000 + next(self._ids))
        media = MediaFile(media_id, phone_number_id, content, mime, hashlib.sha256(content).hexdigest())
        self.media[media_id] = media
        return media

    # -- webhooks --------------------------------------------------------------------------------

    def _url(self, number: Number) -> str | None:
        return number.webhook_url or self.waba_webhooks.get(number.waba_id)

    async def deliver_pending(self) -> None:
        """Deliver the webhooks made while their number or WABA had no URL (Meta keeps them for 7 days)."""
        pending, self.undelivered = self.undelivered, []
        for owner, body in pending:
            url = self._url(owner) if isinstance(owner, Number) else self.waba_webhooks.get(owner)
            if url is None:
                self.undelivered.append((owner, body))
            else:
                await self._post(url, body)

    def _contact(self, user: User) -> dict[str, Any]:
        profile: dict[str, Any] = {"name": user.name}
        if user.username:
            profile["username"] = user.username
        contact: dict[str, Any] = {"profile": profile}
        if user.wa_id:
            contact["wa_id"] = user.wa_id
        if not user.legacy:
            contact["user_id"] = user.user_id
        return contact

    def _envelope(self, number: Number, value: dict[str, Any]) -> dict[str, Any]:
        metadata = {"display_phone_number": number.display_phone_number, "phone_number_id": number.phone_number_id}
        change = {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, **value}}
        return {"object": "whatsapp_business_account", "entry": [{"id": number.waba_id, "changes": [change]}]}

    async def _emit(self, owner: Number | str, payload: dict[str, Any]) -> int | None:
        """Deliver a webhook of a number (or of WABA ``owner``); kept until a URL is set when there is none."""
        self.webhooks.append(payload)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        url = self._url(owner) if isinstance(owner, Number) else self.waba_webhooks.get(owner)
        if url is None:
            self.undelivered.append((owner, body))
            return None
        if self._held is not None:
            self._held.append((url, body))
            return None
        status = await self._post(url, body)
        if self._duplicate_next:
            self._duplicate_next = False
            await self._post(url, body)
        return status

    def signature(self, body: bytes) -> str:
        """The ``X-Hub-Signature-256`` of ``body``."""
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    async def _post(self, url: str, body: bytes) -> int | None:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": self.signature(body)}
        status: int | None = None
        for attempt in range(1, self.delivery_attempts + 1):
            try:
                if self.http is not None:
                    response = await self.http.post(url, content=body, headers=headers, timeout=10.0)
                else:
                    async with httpx.AsyncClient() as client:
                        response = await client.post(url, content=body, headers=headers, timeout=10.0)
                status = response.status_code
            except httpx.HTTPError:
                status = None
            self.deliveries.append(Delivery(url, body, status, attempt))
            if status is not None and 200 <= status < 300:
                return status
            await anyio.sleep(self.delivery_backoff * 2 ** (attempt - 1))
        return status

    async def deliver_status(
        self, wamid: str, status: str, *, error_code: int | None = None, details: str = ""
    ) -> int | None:
        """Meta reports a sent message's ``status`` (``sent``, ``delivered``, ``read``, ``failed``)."""
        sent = self.sent[wamid]
        number = self.numbers[sent.phone_number_id]
        sent.statuses.append(status)
        user = sent.user
        item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(self.clock()))}
        if user is not None and user.wa_id:
            item["recipient_id"] = user.wa_id
        elif user is None:
            item["recipient_id"] = sent.to.lstrip("+")
        if user is not None and not user.legacy:
            item["recipient_user_id"] = user.user_id
        if status in ("sent", "delivered"):
            item["conversation"] = {"id": secrets.token_hex(8), "origin": {"type": "service"}}
            item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service"}
        if status == "failed":
            code = error_code or 131000
            title, text = ERRORS.get(code, ("Something went wrong", ""))
            item["errors"] = [
                {"code": code, "title": title, "message": title, "error_data": {"details": details or text or title}}
            ]
        contacts = (
            [self._contact(user)] if user is not None else [{"wa_id": item.get("recipient_id", ""), "user_id": "US.0"}]
        )
        return await self._emit(number, self._envelope(number, {"contacts": contacts, "statuses": [item]}))

    # -- the client side -------------------------------------------------------------------------

    async def _client_message(
        self, user: User, content: dict[str, Any], *, to: str | None = None, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        number = self.numbers[to] if to is not None else next(iter(self.numbers.values()))
        now = self.clock()
        message: dict[str, Any] = {"id": f"wamid.{secrets.token_urlsafe(18)}", "timestamp": str(int(now)), **content}
        if user.wa_id:
            message["from"] = user.wa_id
        if not user.legacy:
            message["from_user_id"] = user.user_id
        if context is not None:
            message["context"] = context
        user.last_message_at[number.phone_number_id] = now
        self.inbound[message["id"]] = (number.phone_number_id, user, message)
        await self._emit(number, self._envelope(number, {"contacts": [self._contact(user)], "messages": [message]}))
        return message

    # -- the business in the WhatsApp Business app (coexistence) --------------------------------------

    async def _app_echo(self, user: User, content: dict[str, Any], to: str | None) -> dict[str, Any]:
        number = self._number_for(to)
        if not number.business_app:
            raise LookupError(f"number {number.phone_number_id} is not on the WhatsApp Business app")
        if user.wa_id is None:
            raise LookupError(f"user {user.key!r} shares no phone number to write to from the app")
        echo = {
            "from": number.display_phone_number,
            "to": user.wa_id,
            "id": f"wamid.{secrets.token_urlsafe(18)}",
            "timestamp": str(int(self.clock())),
            **content,
        }
        self.app_sent[echo["id"]] = (number.phone_number_id, user, echo)
        metadata = {"display_phone_number": number.display_phone_number, "phone_number_id": number.phone_number_id}
        value = {
            "messaging_product": "whatsapp",
            "metadata": metadata,
            "contacts": [self._contact(user)],
            "message_echoes": [echo],
        }
        change = {"field": "smb_message_echoes", "value": value}
        await self._emit(
            number, {"object": "whatsapp_business_account", "entry": [{"id": number.waba_id, "changes": [change]}]}
        )
        return echo

    async def business_app_writes(self, user: User, text: str, *, to: str | None = None) -> dict[str, Any]:
        """The business writes ``user`` from the WhatsApp Business app: an ``smb_message_echoes`` webhook."""
        return await self._app_echo(user, {"type": "text", "text": {"body": text}}, to)

    async def business_app_edits(self, user: User, wamid: str, text: str) -> dict[str, Any]:
        """The business edits, in the app, its message ``wamid``: an echo of type ``edit``."""
        phone_number_id = self.app_sent[wamid][0]
        edit = {"original_message_id": wamid, "message": {"type": "text", "text": {"body": text}}}
        return await self._app_echo(user, {"type": "edit", "edit": edit}, phone_number_id)

    def _context(self, number: Number, quoted: str | None) -> dict[str, Any] | None:
        if quoted is None:
            return None
        return {"from": number.display_phone_number, "id": quoted}

    def _number_for(self, to: str | None) -> Number:
        return self.numbers[to] if to is not None else next(iter(self.numbers.values()))

    async def client_writes(
        self, user: User, text: str, *, to: str | None = None, reply_to: str | None = None
    ) -> dict[str, Any]:
        """``user`` writes ``text`` to a number (the first one by default), maybe quoting ``reply_to``."""
        context = self._context(self._number_for(to), reply_to)
        return await self._client_message(user, {"type": "text", "text": {"body": text}}, to=to, context=context)

    async def client_sends_media(
        self,
        user: User,
        kind: str,
        content: bytes,
        mime_type: str,
        *,
        caption: str = "",
        filename: str = "",
        voice: bool = False,
        to: str | None = None,
    ) -> dict[str, Any]:
        """``user`` sends an ``image``, ``video``, ``audio`` (``voice``), ``document`` or ``sticker``."""
        number = self._number_for(to)
        media = self._store_media(number.phone_number_id, content, mime_type)
        obj: dict[str, Any] = {"id": media.id, "mime_type": mime_type, "sha256": media.sha256}
        if caption:
            obj["caption"] = caption
        if kind == "document" and filename:
            obj["filename"] = filename
        if kind == "audio":
            obj["voice"] = voice
        if kind == "sticker":
            obj["animated"] = False
        return await self._client_message(user, {"type": kind, kind: obj}, to=to)

    async def client_sends_location(
        self, user: User, latitude: float, longitude: float, *, name: str = "", address: str = "", to: str | None = None
    ) -> dict[str, Any]:
        """``user`` shares a location."""
        location: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
        if name:
            location["name"] = name
        if address:
            location["address"] = address
        return await self._client_message(user, {"type": "location", "location": location}, to=to)

    async def client_sends_contact(self, user: User, name: str, phone: str, *, to: str | None = None) -> dict[str, Any]:
        """``user`` shares a contact card."""
        card = {
            "name": {"formatted_name": name, "first_name": name},
            "phones": [{"phone": phone, "type": "CELL", "wa_id": phone.lstrip("+")}],
        }
        return await self._client_message(user, {"type": "contacts", "contacts": [card]}, to=to)

    async def client_edits(self, user: User, wamid: str, text: str) -> dict[str, Any]:
        """``user`` edits their text message ``wamid`` to ``text``."""
        phone_number_id = self.inbound[wamid][0]
        edit = {"original_message_id": wamid, "message": {"type": "text", "text": {"body": text}}}
        return await self._client_message(user, {"type": "edit", "edit": edit}, to=phone_number_id)

    async def client_reacts(self, user: User, wamid: str, emoji: str, *, to: str | None = None) -> dict[str, Any]:
        """``user`` reacts to a message (``emoji`` empty: removes the reaction)."""
        if wamid in self.sent:
            self.sent[wamid].reactions.append(emoji)
        return await self._client_message(
            user, {"type": "reaction", "reaction": {"message_id": wamid, "emoji": emoji}}, to=to
        )

    async def client_picks(self, user: User, wamid: str, choice: str) -> dict[str, Any]:
        """``user`` picks row or reply button ``choice`` (its id) of the interactive message ``wamid``."""
        sent = self.sent[wamid]
        interactive = sent.body["interactive"]
        number = self.numbers[sent.phone_number_id]
        context = {"from": number.display_phone_number, "id": wamid}
        if interactive["type"] == "list":
            rows = [r for s in interactive["action"]["sections"] for r in s["rows"]]
            row = next(r for r in rows if r["id"] == choice)
            reply = {
                "id": row["id"],
                "title": row["title"],
                **({"description": row["description"]} if "description" in row else {}),
            }
            content = {"type": "interactive", "interactive": {"type": "list_reply", "list_reply": reply}}
        else:
            button = next(b["reply"] for b in interactive["action"]["buttons"] if b["reply"]["id"] == choice)
            content = {"type": "interactive", "interactive": {"type": "button_reply", "button_reply": dict(button)}}
        return await self._client_message(user, content, to=number.phone_number_id, context=context)

    async def client_presses_template_button(
        self, user: User, wamid: str, text: str, payload: str | None = None
    ) -> dict[str, Any]:
        """``user`` presses a template's quick-reply button."""
        number = self.numbers[self.sent[wamid].phone_number_id]
        context = {"from": number.display_phone_number, "id": wamid}
        content = {"type": "button", "button": {"payload": payload or text, "text": text}}
        return await self._client_message(user, content, to=number.phone_number_id, context=context)

    async def client_sends_unsupported(self, user: User, *, to: str | None = None) -> dict[str, Any]:
        """``user`` sends something the Cloud API cannot carry (``unsupported`` with error 131051)."""
        content = {
            "type": "unsupported",
            "errors": [
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."},
                }
            ],
        }
        return await self._client_message(user, content, to=to)

    def sent_to(self, user: User) -> list[Sent]:
        """What the business sent ``user``, oldest first."""
        return [s for s in self.sent.values() if s.user is user]
