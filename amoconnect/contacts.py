"""Joining a new conversation to a contact amoCRM already has, instead of a new incoming lead.

With ``chat_policy = "link_existing"`` on an account, the first message of a new conversation
first looks the client up (a plugin's ``find_contact`` hook, else the REST API by phone and
e-mail, normalised). Exactly one contact: the chat is created with *create chat* and linked
to it with ``POST /api/v4/contacts/chats``, then the message goes into that chat. Zero or
several matches, or a lookup that fails, fall back to amoCRM's default and the log says why:
a lookup never blocks a message. Once the REST API has refused an account's token (401), its
lookups pause for :data:`REFUSED_TOKEN_PAUSE`: each would fail the same way, after waiting for
the account's rate limit.
"""

from __future__ import annotations

import re
import time

import msgspec
from structlog.typing import FilteringBoundLogger

from .amocrm import AmoCRMClient, Contact
from .amojo import wire
from .amojo.client import AmojoClient
from .core import Core
from .errors import AmoconnectError, AmoCRMError
from .model import Person
from .routing import Instance
from .store.base import ConversationRecord

__all__ = ["REFUSED_TOKEN_PAUSE", "link_chat", "link_new_conversation", "normalise_email", "normalise_phone"]

REFUSED_TOKEN_PAUSE = 300.0
"""Seconds an account's contact lookups are skipped after the REST API refused its token."""

_PHONE_DIGITS = 10
"""Phones match on their last ten digits: ``+7 (999) 123-45-67`` and ``89991234567`` are one number."""


def normalise_phone(phone: str) -> str:
    """The comparable part of a phone number: its last ten digits."""
    return re.sub(r"\D", "", phone)[-_PHONE_DIGITS:]


def normalise_email(email: str) -> str:
    """An e-mail address as compared: trimmed and lower-case."""
    return email.strip().lower()


async def _lookup(rest: AmoCRMClient, person: Person) -> set[int]:
    matches: set[int] = set()
    if person.phone and len(phone := normalise_phone(person.phone)) >= 7:
        for contact in await rest.find_contacts(phone):
            if any(normalise_phone(p) == phone for p in contact.phones):
                matches.add(_id(contact))
    if person.email and "@" in person.email:
        email = normalise_email(person.email)
        for contact in await rest.find_contacts(email):
            if any(normalise_email(e) == email for e in contact.emails):
                matches.add(_id(contact))
    return matches


def _id(contact: Contact) -> int:
    assert contact.id is not None
    return contact.id


async def link_chat(
    amojo: AmojoClient,
    rest: AmoCRMClient,
    scope_id: str,
    conversation: ConversationRecord,
    person: Person,
    contact_id: int,
    source_external_id: str | None = None,
) -> str:
    """Create (or find) the amoCRM chat of ``conversation`` and link it to ``contact_id``; returns the chat id."""
    user = wire.ChatUser(
        id=conversation.client_id or conversation.chat,
        name=person.name or person.username or person.id,
        avatar=person.avatar,
        profile=wire.Profile(phone=person.phone, email=person.email) if person.phone or person.email else None,
        profile_link=person.profile_link,
    )
    chat = await amojo.create_chat(scope_id, conversation.conversation_id, user, source_external_id=source_external_id)
    await rest.link_chats_to_contacts([(contact_id, chat.id)])
    return chat.id


async def link_new_conversation(
    core: Core, instance: Instance, conversation: ConversationRecord, person: Person, log: FilteringBoundLogger
) -> ConversationRecord:
    """Apply the account's chat policy to a conversation seen for the first time."""
    account = instance.account
    hooked = core.pm.hook.find_contact(conversation=instance.conversation(conversation), person=person)
    if hooked is None and account.chat_policy != "link_existing":
        return conversation
    paused = core.rest_refused_until.get(account.name, 0.0) - time.monotonic()
    if paused > 0:
        log.info("contact lookup skipped: the REST API refused the account's token", resume_in_s=round(paused))
        return conversation
    try:
        if hooked is not None:
            contact_id, how = int(hooked), "plugin"
        else:
            if not (account.rest_url and account.token):
                log.warning("contact lookup skipped: the account has no REST API token", account=account.name)
                return conversation
            found = await _lookup(core.rest(account), person)
            if len(found) != 1:
                log.info(
                    "no single contact matches; amoCRM creates an incoming lead",
                    matches=len(found),
                    phone=bool(person.phone),
                    email=bool(person.email),
                )
                return conversation
            contact_id, how = found.pop(), "phone or e-mail"
        if not (account.rest_url and account.token):
            log.warning("cannot link: the account has no REST API token", account=account.name)
            return conversation
        chat_id = await link_chat(
            core.amojo,
            core.rest(account),
            instance.scope_id,
            conversation,
            person,
            contact_id,
            instance.source.external_id,
        )
    except AmoconnectError as exc:
        if isinstance(exc, AmoCRMError) and exc.status == 401:
            core.rest_refused_until[account.name] = time.monotonic() + REFUSED_TOKEN_PAUSE
        log.warning("contact lookup failed; amoCRM creates an incoming lead", error=str(exc))
        return conversation
    log.info("conversation linked to an existing contact", contact_id=contact_id, found_by=how, amocrm_chat_id=chat_id)
    return msgspec.structs.replace(conversation, amocrm_chat_id=chat_id)
