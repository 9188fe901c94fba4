"""Messenger → amoCRM: the handler of ``inbound`` jobs.

Each neutral event becomes amojo calls: a message or comment becomes ``new_message`` (media
re-hosted first), a business message written outside amoCRM (an echo) a silent ``new_message``
from the channel bot unless it is one of our own sends, an edit ``edit_message``, a status
``delivery_status`` (forward only), a reaction ``react``/``unreact``, typing ``typing`` (at most
one per 5 s per conversation). Every msgid is derived from the messenger's ids, so a retried job
cannot duplicate; when amojo refuses a msgid as a duplicate, amoCRM's id of the message is looked
up in the chat's history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec
from structlog.typing import FilteringBoundLogger

from . import ids
from .amojo import wire
from .amojo.client import is_unknown_scope
from .business import author_ref, business_payload
from .capabilities import Capability
from .contacts import link_new_conversation
from .core import Core, InboundJob
from .errors import AmojoError, MessengerError, UnsafeURL
from .media import MediaTooLarge
from .model import (
    Attachment,
    InboundComment,
    InboundEcho,
    InboundEdit,
    InboundMessage,
    InboundReaction,
    InboundStatus,
    InboundTyping,
    MessageRef,
    Person,
)
from .outbound import amojo_failure, latest_comment_key, messenger_retry, wait_for_mapping, write_first_pending
from .plugins import alter_inbound_message
from .relay import Done, GiveUp
from .routing import Instance
from .statuses import DELIVERED, FAILED, READ, STATUS_NAMES, is_forward
from .store.base import Activity, ConversationRecord, Job, MessageRecord, preview
from .windows import failure_for

__all__ = ["InboundHandler"]

TYPING_INTERVAL = 5.0

_STATUS_CODES = {"delivered": DELIVERED, "read": READ, "failed": FAILED}
_decode = msgspec.json.Decoder(InboundJob).decode


def _participant(sender: Person, client_id: str) -> wire.Participant:
    profile = wire.Profile(phone=sender.phone, email=sender.email) if sender.phone or sender.email else None
    return wire.Participant(
        id=client_id,
        name=sender.name or sender.username or sender.id,
        avatar=sender.avatar,
        profile=profile,
        profile_link=sender.profile_link,
    )


def _preview(event: InboundMessage | InboundComment) -> str:
    """What the console shows of a client's message: its attachments' kinds, then its text."""
    parts = [f"[{a.kind}]" for a in event.attachments]
    if getattr(event, "location", None) is not None:
        parts.append("[location]")
    if getattr(event, "contact", None) is not None:
        parts.append("[contact]")
    return preview(" ".join([*parts, event.text or ""]))


class InboundHandler:
    """Runs ``inbound`` jobs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._last_typing: dict[str, float] = {}

    async def __call__(self, job: Job, log: FilteringBoundLogger) -> Done:
        item = _decode(job.payload)
        instance = self.core.routing.get(item.instance)
        if instance is None:
            raise GiveUp(f"instance {item.instance!r} is no longer configured")
        event = item.event
        log = log.bind(instance=instance.name, chat=event.chat, event=type(event).__name__)
        try:
            if isinstance(event, InboundMessage | InboundComment):
                return await self._message(instance, event, job, log)
            if isinstance(event, InboundEdit):
                return await self._edit(instance, event, log)
            if isinstance(event, InboundStatus):
                return await self._status(instance, event, job, log)
            if isinstance(event, InboundReaction):
                return await self._reaction(instance, event, job, log)
            if isinstance(event, InboundEcho):
                return await self._echo(instance, event, job, log)
            return await self._typing(instance, event, log)
        except AmojoError as exc:
            raise amojo_failure(exc) from exc

    # -- conversations -------------------------------------------------------------------
    @staticmethod
    def _conversation(
        instance: Instance, chat: str, sender: Person, record: ConversationRecord | None
    ) -> ConversationRecord:
        """The stored conversation of ``chat`` with our client id filled in, or a new one."""
        if record is None:
            return ConversationRecord(
                scope_id=instance.scope_id,
                conversation_id=ids.conversation_id(instance.name, chat),
                instance=instance.name,
                chat=chat,
                client_id=ids.client_id(instance.name, sender.id),
            )
        if record.client_id is None:
            return msgspec.structs.replace(record, client_id=ids.client_id(instance.name, sender.id))
        return record

    async def _known(self, instance: Instance, chat: str) -> ConversationRecord | None:
        return await self.core.store.conversation_by_chat(instance.name, chat)

    # -- media ---------------------------------------------------------------------------
    async def _media_url(self, instance: Instance, attachment: Attachment) -> tuple[str, int | None, str]:
        """A URL amoCRM can download the attachment from, its size and file name."""
        if attachment.url is not None:
            return attachment.url, attachment.size, attachment.file_name or attachment.url.rsplit("/", 1)[-1]
        assert attachment.fetch is not None
        try:
            fetched = await instance.adapter.fetch_media(attachment.fetch)
        except UnsafeURL:
            raise  # the message goes on without the file, saying why
        except MessengerError as exc:
            if exc.retryable:
                raise await messenger_retry(instance, exc) from exc
            raise GiveUp(f"fetching media failed: {exc}") from exc
        if fetched.size is not None and fetched.size > self.core.media.max_bytes:
            raise MediaTooLarge(f"media of {fetched.size} bytes exceeds the {self.core.media.max_bytes} byte cap")
        name = attachment.file_name or fetched.file_name or ""
        file_id, size = await self.core.media.put(
            fetched.content, content_type=attachment.mime_type or fetched.content_type, file_name=name
        )
        stored = await self.core.media.get(file_id)
        assert stored is not None
        url = f"{self.core.config.server.public_url.rstrip('/')}/media/{self.core.media.token(file_id)}"
        return url, size, stored.file_name

    async def _contents(
        self,
        instance: Instance,
        event: InboundMessage | InboundComment | InboundEdit | InboundEcho,
        log: FilteringBoundLogger,
    ) -> list[wire.MessageContent]:
        """One amojo message per attachment (the text rides on the first), or one text/location/contact message."""
        contents: list[wire.MessageContent] = []
        text = event.text or None
        for attachment in event.attachments:
            try:
                url, size, name = await self._media_url(instance, attachment)
            except (MediaTooLarge, UnsafeURL) as exc:
                log.warning("media refused", reason=str(exc))
                contents.append(wire.MessageContent(type="text", text=f"[{attachment.kind} not relayed: {exc}]"))
                continue
            contents.append(
                wire.MessageContent(
                    type=attachment.kind,
                    media=url,
                    file_name=name or attachment.kind,
                    file_size=size if size is not None else 0,
                    media_duration=int(attachment.duration) if attachment.duration is not None else None,
                    text=text if not contents else None,
                )
            )
        if contents:
            return contents
        location = getattr(event, "location", None)
        contact = getattr(event, "contact", None)
        if location is not None:
            return [wire.MessageContent(type="location", location=wire.Location(lon=location.lon, lat=location.lat))]
        if contact is not None:
            return [wire.MessageContent(type="contact", contact=wire.Contact(name=contact.name, phone=contact.phone))]
        return [wire.MessageContent(type="text", text=text or "")]

    # -- events --------------------------------------------------------------------------
    async def _message(
        self, instance: Instance, event: InboundMessage | InboundComment, job: Job, log: FilteringBoundLogger
    ) -> Done:
        core = self.core
        known = await self._known(instance, event.chat)
        if known is None and await write_first_pending(core.store, instance.name):
            # Possibly the answer to a write first whose job is still recording the chat: with that
            # record it carries amoCRM's chat id (conversation_ref_id) and joins the chat the manager started.
            wait_for_mapping(job.attempts, f"chat {event.chat!r} (a write first may be recording it)")
        conversation = self._conversation(instance, event.chat, event.sender, known)
        if known is None:
            conversation = await link_new_conversation(core, instance, conversation, event.sender, log)
        assert conversation.client_id is not None
        if isinstance(event, InboundMessage):
            event = alter_inbound_message(core.pm, event, instance.conversation(conversation))
            msgid = ids.inbound_msgid(instance.name, event.chat, event.message_id)
            messenger_id = event.message_id
        else:
            msgid = ids.comment_msgid(instance.name, event.post.id, event.comment_id)
            messenger_id = f"comment:{event.post.id}:{event.comment_id}"
        contents = await self._contents(instance, event, log)
        reply_to = (
            await self._quoted(instance, conversation, event.reply_to) if isinstance(event, InboundMessage) else None
        )
        if isinstance(event, InboundMessage) and event.callback_data:
            contents[0] = msgspec.structs.replace(contents[0], callback_data=event.callback_data)
        if isinstance(event, InboundComment):
            post = wire.Post(
                id=event.post.id,
                url=event.post.url,
                preview_url=event.post.preview_url,
                username=event.sender.username,
                caption=event.post.caption,
            )
            contents = [msgspec.structs.replace(c, post=post) for c in contents]
        sender = _participant(event.sender, conversation.client_id)
        ref_id = conversation.amocrm_chat_id if conversation.ref_pending else None

        def payload(part_msgid: str, content: wire.MessageContent, quote: wire.ReplyTo | None) -> wire.MessagePayload:
            return wire.MessagePayload(
                timestamp=int(event.timestamp),
                msec_timestamp=int(event.timestamp * 1000),
                msgid=part_msgid,
                conversation_id=conversation.conversation_id,
                conversation_ref_id=ref_id,
                source=wire.Source(external_id=instance.source.external_id),
                sender=sender,
                message=content,
                reply_to=quote,
            )

        messages, chat_id = await self._send_parts(
            instance, conversation, msgid, contents, reply_to, payload, sender, "in", messenger_id, log
        )
        if isinstance(event, InboundComment):
            messages.append(
                MessageRecord(
                    instance.scope_id,
                    latest_comment_key(conversation.conversation_id, event.post.id),
                    conversation.conversation_id,
                    "in",
                    messenger_id=messenger_id,
                )
            )
        updated = msgspec.structs.replace(
            conversation, last_client_at=event.timestamp, ref_pending=False, amocrm_chat_id=chat_id
        )
        newest = Activity(
            instance.scope_id, conversation.conversation_id, msgid, "in", _preview(event), event.timestamp
        )
        return Done(conversations=[updated], messages=messages, activity=[newest])

    async def _quoted(
        self, instance: Instance, conversation: ConversationRecord, reply_to: str | None
    ) -> wire.ReplyTo | None:
        """amojo's ``reply_to`` for the messenger's id of a quoted message, when amoconnect knows it."""
        if not reply_to:
            return None
        quoted = await self.core.store.message_by_messenger(instance.scope_id, conversation.conversation_id, reply_to)
        if quoted is None:
            return None
        if quoted.direction == "in":
            return wire.ReplyTo(message=wire.EmbeddedMessage(msgid=quoted.msgid))
        return wire.ReplyTo(message=wire.EmbeddedMessage(id=quoted.amocrm_id))

    async def _send_parts(
        self,
        instance: Instance,
        conversation: ConversationRecord,
        msgid: str,
        contents: list[wire.MessageContent],
        reply_to: wire.ReplyTo | None,
        payload: Callable[[str, wire.MessageContent, wire.ReplyTo | None], wire.MessagePayload],
        client: wire.Participant,
        direction: Literal["in", "out"],
        messenger_id: str,
        log: FilteringBoundLogger,
    ) -> tuple[list[MessageRecord], str | None]:
        """Send one amojo message per content (``{msgid}#{n}`` after the first, which carries the quote);
        the records of what amoCRM has and amoCRM's chat id. A msgid amojo already has is a retry whose
        answer was lost: amoCRM's id of it is looked up."""
        messages: list[MessageRecord] = []
        chat_id = conversation.amocrm_chat_id
        for index, content in enumerate(contents):
            part_msgid = msgid if index == 0 else f"{msgid}#{index}"
            sent = await self.core.amojo.send_message(
                instance.scope_id, payload(part_msgid, content, reply_to if index == 0 else None)
            )
            if sent.duplicate:
                chat_id = chat_id or await self._chat_id(instance, conversation, client, log)
                amocrm_id = await self._recovered_id(instance.scope_id, chat_id, sent.msgid, log)
            else:
                amocrm_id, chat_id = sent.amocrm_id, sent.conversation_id or chat_id
            log.info("relayed to amoCRM", msgid=part_msgid, amocrm_id=amocrm_id, duplicate=sent.duplicate)
            messages.append(
                MessageRecord(
                    instance.scope_id,
                    part_msgid,
                    conversation.conversation_id,
                    direction,
                    amocrm_id=amocrm_id,
                    messenger_id=messenger_id,
                )
            )
        return messages, chat_id

    async def _echo(self, instance: Instance, event: InboundEcho, job: Job, log: FilteringBoundLogger) -> Done:
        """A message the business wrote outside amoCRM: into the amoCRM chat as the channel bot's,
        silently; an echo of one of our own sends (or of a message already imported) is dropped."""
        core = self.core
        log = log.bind(message_id=event.message_id)
        if not instance.can(Capability.echoes):
            log.warning("business message from an adapter that does not declare capability 'echoes'; dropped")
            return Done()
        if event.ours:
            log.info("echo of amoconnect's own send; dropped")
            return Done()
        conversation = await self._known(instance, event.chat)
        if conversation is None:
            log.info("business message in a chat amoCRM has not seen; not imported (the chat starts with the client)")
            return Done()
        known = await core.store.message_by_messenger(instance.scope_id, conversation.conversation_id, event.message_id)
        if known is not None:
            log.info("echo of a message amoCRM already has; dropped", direction=known.direction)
            return Done()
        # Our own send may have reached the messenger and still be recording its id: wait briefly.
        wait_for_mapping(job.attempts, f"message {event.message_id!r} of the echo")
        known_conversation = conversation
        conversation = self._conversation(instance, event.chat, event.client, conversation)
        assert conversation.client_id is not None
        client = _participant(event.client, conversation.client_id)
        author = author_ref(
            core.config.channel.bot_id, instance.source.authors, event.author.id if event.author else None
        )
        ref_id = conversation.amocrm_chat_id if conversation.ref_pending else None

        def payload(part_msgid: str, content: wire.MessageContent, quote: wire.ReplyTo | None) -> wire.MessagePayload:
            return business_payload(
                msgid=part_msgid,
                conversation_id=conversation.conversation_id,
                conversation_ref_id=ref_id,
                timestamp=event.timestamp,
                author=author,
                client=client,
                content=content,
                external_id=instance.source.external_id,
                silent=True,
                reply_to=quote,
            )

        msgid = ids.business_msgid(instance.name, event.chat, event.message_id)
        contents = await self._contents(instance, event, log)
        reply_to = await self._quoted(instance, conversation, event.reply_to)
        messages, chat_id = await self._send_parts(
            instance, conversation, msgid, contents, reply_to, payload, client, "out", event.message_id, log
        )
        updated = msgspec.structs.replace(conversation, ref_pending=False, amocrm_chat_id=chat_id)
        return Done(conversations=[updated] if updated != known_conversation else [], messages=messages)

    async def _chat_id(
        self, instance: Instance, conversation: ConversationRecord, sender: wire.Participant, log: FilteringBoundLogger
    ) -> str | None:
        """amoCRM's id of a conversation's chat that none of our records holds yet: the send
        whose answer carried it was lost. *create chat* with our conversation_id answers the
        existing chat. ``None`` (the log says why) when amojo refuses; amojo down for now fails
        the attempt."""
        user = wire.ChatUser(
            id=sender.id or conversation.conversation_id,
            name=sender.name,
            avatar=sender.avatar,
            profile=sender.profile,
            profile_link=sender.profile_link,
        )
        try:
            chat = await self.core.amojo.create_chat(
                instance.scope_id, conversation.conversation_id, user, source_external_id=instance.source.external_id
            )
        except AmojoError as exc:
            if exc.retryable:
                raise
            log.warning(
                "duplicate msgid: amoCRM's chat id of the conversation is not known and amojo refused to give it; "
                "amoCRM's id of the message is not recovered, its edits, statuses and quotes will be dropped",
                error=str(exc),
            )
            return None
        log.info("amoCRM's chat id of the conversation recovered", amocrm_chat_id=chat.id)
        return chat.id

    async def _recovered_id(
        self, scope_id: str, chat_id: str | None, msgid: str, log: FilteringBoundLogger
    ) -> str | None:
        """amoCRM's id of a message refused as a duplicate (an earlier attempt went through, its
        outcome unrecorded), found in the history of amoCRM's chat ``chat_id``; ``None`` when it
        is not there or the history is refused. amojo down for now (no answer, 429, 5xx) fails
        the attempt: the job's next one looks again."""
        if chat_id is None:
            return None  # _chat_id said why
        try:
            found = await self.core.amojo.find_message(scope_id, chat_id, msgid)
        except AmojoError as exc:
            if exc.retryable:  # amojo is down for now: look again with the job's next attempt
                raise
            log.warning(
                "duplicate msgid: amoCRM's id of it not recovered, the history failed; its edits, statuses "
                "and quotes will be dropped",
                msgid=msgid,
                error=str(exc),
            )
            return None
        if found is None:
            log.warning(
                "duplicate msgid: amoCRM's id of it is not in the chat's newest history; its edits, statuses "
                "and quotes will be dropped",
                msgid=msgid,
                amocrm_chat_id=chat_id,
            )
        return found

    async def _edit(self, instance: Instance, event: InboundEdit, log: FilteringBoundLogger) -> Done:
        core = self.core
        conversation = await self._known(instance, event.chat)
        original = (
            await core.store.message_by_messenger(instance.scope_id, conversation.conversation_id, event.message_id)
            if conversation is not None
            else None
        )
        if conversation is None or original is None or original.amocrm_id is None:
            log.warning("edit of a message amoCRM does not know; dropped", message_id=event.message_id)
            return Done()
        assert conversation.client_id is not None
        (content, *_) = await self._contents(instance, event, log)
        if original.direction == "in":
            payload = wire.MessagePayload(
                timestamp=int(event.timestamp),
                msec_timestamp=int(event.timestamp * 1000),
                msgid=original.msgid,
                id=original.amocrm_id,
                conversation_id=conversation.conversation_id,
                source=wire.Source(external_id=instance.source.external_id),
                sender=_participant(event.sender, conversation.client_id),
                message=content,
            )
        elif original.msgid == ids.business_msgid(instance.name, event.chat, event.message_id):
            # The business edited a message it wrote in the messenger's app (``sender`` is its author).
            author = author_ref(core.config.channel.bot_id, instance.source.authors, event.sender.id)
            payload = business_payload(
                msgid=original.msgid,
                conversation_id=conversation.conversation_id,
                timestamp=event.timestamp,
                author=author,
                client=wire.Participant(id=conversation.client_id),
                content=content,
                external_id=instance.source.external_id,
                silent=True,
                amocrm_id=original.amocrm_id,
            )
        else:
            log.info("a manager's message edited in the messenger; amoCRM keeps what the manager wrote")
            return Done()
        await core.amojo.send_message(instance.scope_id, payload, event="edit_message")
        log.info("edit relayed to amoCRM", amocrm_id=original.amocrm_id)
        return Done()

    async def _status(self, instance: Instance, event: InboundStatus, job: Job, log: FilteringBoundLogger) -> Done:
        core = self.core
        if event.status == "sent":
            return Done()
        conversation = await self._known(instance, event.chat)
        record = (
            await core.store.message_by_messenger(instance.scope_id, conversation.conversation_id, event.message_id)
            if conversation is not None
            else None
        )
        if conversation is None or record is None or record.amocrm_id is None:
            wait_for_mapping(job.attempts, f"message {event.message_id!r} of the status")
            log.warning("status for a message amoconnect did not send; dropped", message_id=event.message_id)
            return Done()
        new = _STATUS_CODES[event.status]
        if not is_forward(record.status, new):
            log.info("stale status ignored", old=STATUS_NAMES[record.status], new=event.status)
            return Done()
        error_code: int | None = None
        error: str | None = None
        if new == FAILED:
            reason = event.reason or "other"
            if reason == "other" and event.error_code is not None:
                reason = instance.adapter.error_reasons.get(event.error_code, reason)
            error_code, error = failure_for(reason, event.error)
        delivery: Literal[1, 2, -1] = 1 if new == DELIVERED else 2 if new == READ else -1
        try:
            await core.amojo.update_delivery_status(
                instance.scope_id, record.amocrm_id, delivery, error_code=error_code, error=error
            )
        except AmojoError as exc:
            if exc.status == 404 and not is_unknown_scope(exc.status, exc.body):
                log.warning("amoCRM does not know the message; status dropped", amocrm_id=record.amocrm_id)
                return Done()
            raise
        log.info("status relayed to amoCRM", amocrm_id=record.amocrm_id, status=event.status)
        updated = msgspec.structs.replace(record, status=new)
        core.pm.hook.status_changed(
            message=MessageRef(
                conversation=instance.conversation(conversation),
                direction=record.direction,
                msgid=record.msgid,
                amocrm_id=record.amocrm_id,
                messenger_id=record.messenger_id,
            ),
            old=STATUS_NAMES[record.status] if record.status else None,
            new=event.status,
        )
        return Done(messages=[updated])

    async def _reaction(self, instance: Instance, event: InboundReaction, job: Job, log: FilteringBoundLogger) -> Done:
        core = self.core
        conversation = await self._known(instance, event.chat)
        target = (
            await core.store.message_by_messenger(instance.scope_id, conversation.conversation_id, event.message_id)
            if conversation is not None
            else None
        )
        if conversation is None or target is None:
            wait_for_mapping(job.attempts, f"message {event.message_id!r} reacted to")  # a manager's, still sending
            log.warning("reaction to a message amoconnect does not know; dropped", message_id=event.message_id)
            return Done()
        emoji = None if event.removed else event.emoji or None
        if emoji is None and not event.removed:
            log.warning("reaction without an emoji; dropped")
            return Done()
        await core.amojo.react(
            instance.scope_id,
            user_id=ids.client_id(instance.name, event.sender.id),
            emoji=emoji,
            conversation_id=conversation.conversation_id,
            msgid=target.msgid if target.direction == "in" else None,
            amocrm_id=target.amocrm_id if target.direction == "out" else None,
        )
        log.info("reaction relayed to amoCRM", removed=event.removed)
        return Done()

    async def _typing(self, instance: Instance, event: InboundTyping, log: FilteringBoundLogger) -> Done:
        conversation = await self._known(instance, event.chat)
        if conversation is None:
            return Done()
        now = time.monotonic()
        if now - self._last_typing.get(conversation.conversation_id, -TYPING_INTERVAL) < TYPING_INTERVAL:
            return Done()
        if time.time() - event.timestamp > TYPING_INTERVAL:
            return Done()  # stale: the client stopped typing long ago
        self._last_typing[conversation.conversation_id] = now
        await self.core.amojo.typing(
            instance.scope_id, conversation.conversation_id, ids.client_id(instance.name, event.sender.id)
        )
        return Done()
