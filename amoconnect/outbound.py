"""amoCRM → messenger: the handlers of ``amocrm`` jobs (manager webhooks) and ``status`` jobs.

A manager's message is resolved to its conversation (or starts one: write first), checked
against the reply window and the adapter's capabilities, handed to the adapter, and its
messenger id recorded; a failure becomes a ``delivery_status`` -1 the manager sees. Sends to
a messenger are at-least-once: the job is marked running before the call and done right after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Sequence
from typing import Literal, cast

import msgspec
from structlog.typing import FilteringBoundLogger

from . import ids
from .amojo import wire
from .amojo.hooks import foreign_account
from .capabilities import Capability
from .core import Core, GivenUp, StatusJob, status_job
from .errors import AmojoError, MessengerError, RateLimited, WebhookError
from .model import (
    Attachment,
    Button,
    ListMessage,
    ListRow,
    ListSection,
    MediaKind,
    OutgoingCommentReply,
    OutgoingMessage,
    OutgoingReaction,
    OutgoingTyping,
    SendResult,
    Template,
    TemplateParam,
)
from .plugins import alter_outgoing_message
from .relay import Done, GiveUp, Retry
from .routing import Instance
from .statuses import DELIVERED, FAILED
from .store.base import Activity, ConversationRecord, Job, MessageRecord, NewJob, Store, preview
from .windows import failure_for, window_closed_at, window_closed_text

__all__ = [
    "AmocrmHandler",
    "StatusHandler",
    "amojo_failure",
    "latest_comment_key",
    "messenger_retry",
    "outgoing_from_hook",
    "wait_for_mapping",
    "write_first_pending",
]

MAPPING_WAITS = 3
WRITE_FIRST_MARK = "write-first"
"""State namespace: per instance, when a write first last started there (the client's first answer waits)."""
WRITE_FIRST_RECENT = 60.0
"""Seconds after a write first during which a new chat's first message waits for that chat's record."""
"""Attempts a job waits for a mapping another job may still be recording before it goes on without."""
_MARKER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_MEDIA_KINDS = {"picture", "video", "file", "voice", "audio", "sticker"}


def outgoing_from_hook(
    body: wire.HookMessageBody, *, chat: str | None, phone: str | None, reply_to: str | None, dedup_key: str
) -> OutgoingMessage:
    """The neutral message of a manager's webhook message (everything the webhook says, before capability checks)."""
    attachments: tuple[Attachment, ...] = ()
    if body.type in _MEDIA_KINDS and body.media:
        attachments = (
            Attachment(
                kind=cast(MediaKind, body.type), url=body.media, file_name=body.file_name or "", size=body.file_size
            ),
        )
    buttons: tuple[tuple[Button, ...], ...] = ()
    list_message = None
    if body.markup is not None:
        if body.markup.buttons:
            buttons = tuple(
                tuple(Button(text=b.text, url=b.url, callback_data=None if b.url else b.text) for b in row)
                for row in body.markup.buttons
            )
        if body.markup.list_message is not None:
            lm = body.markup.list_message
            list_message = ListMessage(
                body=lm.body,
                button=lm.button,
                header=lm.header or "",
                footer=lm.footer or "",
                sections=tuple(
                    ListSection(
                        title=s.title or "",
                        rows=tuple(
                            ListRow(callback_data=r.callback_data, title=r.title, description=r.description or "")
                            for r in s.rows
                        ),
                    )
                    for s in lm.sections
                ),
            )
    template = None
    if body.template is not None:
        template = Template(
            id=str(body.template.id),
            content=body.template.content,
            external_id=body.template.external_id,
            params=tuple(TemplateParam(key=p.key, value=p.value) for p in body.template.params),
        )
    return OutgoingMessage(
        chat=chat,
        phone=phone if chat is None else None,
        dedup_key=dedup_key,
        text=body.text or "",
        attachments=attachments,
        buttons=buttons,
        list_message=list_message,
        template=template,
        reply_to=reply_to,
        media_group_id=body.media_group_id,
    )


async def messenger_retry(instance: Instance, exc: MessengerError, chat: str | None = None) -> Retry:
    """The relay retry for a retryable messenger failure; a rate limit also holds the chat's other sends."""
    if isinstance(exc, RateLimited):
        if chat is not None:
            await instance.penalize(chat, exc.retry_after)
        return Retry(f"{instance.messenger}: {exc}", delay=exc.retry_after)
    return Retry(f"{instance.messenger}: {exc}")


def amojo_failure(exc: AmojoError) -> Retry | GiveUp:
    """The relay's answer to a failed amojo call: retry what may pass later (after ``Retry-After``), else give up."""
    if exc.retryable:
        return Retry(str(exc), delay=exc.retry_after)
    return GiveUp(str(exc))


def wait_for_mapping(attempt: int, what: str) -> None:
    """Retry the job shortly (after 0.5 s, 1 s, ...) while it has attempts of :data:`MAPPING_WAITS` left:
    the job that records ``what`` (a conversation, a message's ids) may still be finishing.
    Returns on the last attempt; the caller then goes on without the mapping."""
    if attempt < MAPPING_WAITS:
        raise Retry(f"{what} not mapped yet", delay=0.5 * attempt)


async def write_first_pending(store: Store, instance: str) -> bool:
    """Whether a write first started on ``instance`` lately, so a new chat's first message may be its answer."""
    mark = await store.get_state(WRITE_FIRST_MARK, instance)
    return mark is not None and abs(time.time() - float(mark)) < WRITE_FIRST_RECENT


def latest_comment_key(conversation_id: str, post_id: str) -> str:
    """The msgid under which the client's latest comment on a post is remembered (the one a reply answers)."""
    return f"{conversation_id}|latest-comment|{post_id}"


def _comment_id(messenger_id: str | None, post_id: str) -> str | None:
    prefix = f"comment:{post_id}:"
    if messenger_id and messenger_id.startswith(prefix):
        return messenger_id[len(prefix) :]
    return None


def _fit_to_capabilities(message: OutgoingMessage, instance: Instance) -> OutgoingMessage:
    """Drop what the adapter cannot send, keeping its meaning in text where that is possible."""
    text = message.text
    changes: dict[str, object] = {}
    if message.buttons and not instance.can(Capability.buttons):
        links = [f"{b.text}: {b.url}" for row in message.buttons for b in row if b.url]
        text = "\n".join([text, *links]) if links else text
        changes["buttons"] = ()
    if message.list_message is not None and not instance.can(Capability.list_messages):
        lm = message.list_message
        lines = [lm.header, lm.body, *(f"- {r.title}" for s in lm.sections for r in s.rows), lm.footer]
        text = "\n".join(line for line in [text, *lines] if line)
        changes["list_message"] = None
    if message.template is not None and not instance.can(Capability.templates):
        text = text or _render_template_model(message.template)
        changes["template"] = None
    if message.reply_to is not None and not instance.can(Capability.replies):
        changes["reply_to"] = None
    if changes:
        changes["text"] = text
        return msgspec.structs.replace(message, **changes)
    return message


def _missing_params(template: Template) -> list[str]:
    """The ``{{markers}}`` of a template that its params leave without a value."""
    given = {p.key.strip("{} ") for p in template.params}
    return [f"{{{{{m}}}}}" for m in dict.fromkeys(_MARKER.findall(template.content)) if m not in given]


def _render_template_model(template: Template) -> str:
    text = template.content
    for param in template.params:
        text = text.replace(f"{{{{{param.key}}}}}", param.value)
    return text


def _preview(body: wire.HookMessageBody) -> str:
    kind = "" if body.type == "text" else f"[{body.type}] "
    return preview(kind + (body.text or ""))


def _activity(scope_id: str, conversation: ConversationRecord, body: wire.HookMessageBody) -> Activity:
    """A manager's message as its conversation's newest (the console's list), sent or failed now."""
    return Activity(scope_id, conversation.conversation_id, body.id, "out", _preview(body), time.time())


async def _conversation_of(
    store: Store, scope_id: str, amocrm_chat: str, client_id: str | None
) -> ConversationRecord | None:
    """The conversation amoCRM's webhook names: by our id (``client_id``), else by amoCRM's chat id."""
    record = None
    if client_id:
        record = await store.conversation(scope_id, client_id)
    if record is None:
        record = await store.conversation_by_amocrm(scope_id, amocrm_chat)
    return record


class AmocrmHandler:
    """Runs ``amocrm`` jobs: a manager's message, typing or reaction."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def on_dead(self, job: Job, error: str) -> Sequence[NewJob]:
        """When a manager's message is given up on, tell the manager (status -1 / 903)."""
        try:
            hook = wire.parse_webhook(job.payload)
        except WebhookError:
            return ()
        account = self.core.registry.account_by_scope(job.scope_id)
        if not isinstance(hook, wire.MessageHook) or account is None or account.amojo_id != hook.account_id:
            return ()
        m = hook.message
        given_up = GivenUp(m.conversation.id, m.conversation.client_id, _preview(m.message))
        error = f"amoconnect could not deliver the message: {error}"[:1000]
        return [status_job(job.scope_id, StatusJob(hook.amocrm_message_id, FAILED, 903, error, given_up))]

    async def __call__(self, job: Job, log: FilteringBoundLogger) -> Done:
        # A webhook the server kept without understanding it is decoded again here: after an
        # upgrade, a re-queued dead letter may go through.
        try:
            hook = wire.parse_webhook(job.payload)
        except WebhookError as exc:
            raise GiveUp(f"amoCRM webhook not understood: {exc}") from exc
        account = self.core.registry.account_by_scope(job.scope_id)
        if account is None:
            raise GiveUp(f"no account is connected as scope {job.scope_id!r}")
        if not account.active:
            raise GiveUp(f"account {account.name!r} disconnected the integration")
        problem = foreign_account(hook.account_id, job.scope_id, account.amojo_id)
        if problem is not None:
            raise GiveUp(problem)
        if isinstance(hook, wire.MessageHook):
            return await self._message(job.scope_id, hook, job.attempts, log.bind(amocrm_id=hook.amocrm_message_id))
        if isinstance(hook, wire.TypingHook):
            return await self._typing(job.scope_id, hook.typing, job.attempts, log)
        return await self._reaction(job.scope_id, hook.reaction, job.attempts, log)

    async def _conversation(self, scope_id: str, conversation: wire.Conversation) -> ConversationRecord | None:
        return await _conversation_of(self.core.store, scope_id, conversation.id, conversation.client_id)

    def _fail(
        self,
        scope_id: str,
        amocrm_id: str,
        reason: str,
        text: str,
        log: FilteringBoundLogger,
        record: MessageRecord | None = None,
        *,
        shown: tuple[ConversationRecord | None, wire.HookMessageBody] | None = None,
    ) -> Done:
        """Report the message failed; ``shown``: its conversation (if known) and body, so that the console
        lists it as the conversation's newest message, failed."""
        code, error = failure_for(reason, text)
        log.warning("message failed", error_code=code, error=error)
        messages = [msgspec.structs.replace(record, status=FAILED)] if record is not None else []
        activity: list[Activity] = []
        conversation, body = shown if shown is not None else (None, None)
        if conversation is not None and body is not None:
            if not messages:
                messages = [
                    MessageRecord(
                        scope_id, amocrm_id, conversation.conversation_id, "out", amocrm_id=amocrm_id, status=FAILED
                    )
                ]
            activity = [_activity(scope_id, conversation, body)]
        then = [status_job(scope_id, StatusJob(amocrm_id, FAILED, code, error))]
        return Done(messages=messages, then=then, activity=activity)

    async def _message(self, scope_id: str, hook: wire.MessageHook, attempt: int, log: FilteringBoundLogger) -> Done:
        core = self.core
        m = hook.message
        amocrm_id = m.message.id
        account = core.registry.account_by_scope(scope_id)
        assert account is not None  # checked by __call__
        existing = await core.store.message_by_amocrm(scope_id, amocrm_id)
        if existing is not None and existing.messenger_id is not None:
            log.info("already sent; nothing to do")
            return Done()
        conversation = await self._conversation(scope_id, m.conversation)
        if conversation is not None:
            instance = core.routing.get(conversation.instance)
            if instance is None:
                raise GiveUp(f"instance {conversation.instance!r} of the conversation is no longer configured")
        elif m.conversation.client_id:
            # The client's message that made the conversation may still be finishing its job.
            wait_for_mapping(attempt, f"conversation {m.conversation.client_id!r}")
            return self._fail(
                scope_id, amocrm_id, "other", f"amoconnect does not know conversation {m.conversation.client_id!r}", log
            )
        else:
            external_id = m.source.external_id if m.source else None
            found = core.routing.for_source(scope_id, external_id)
            if found is None:
                return self._fail(
                    scope_id, amocrm_id, "other", f"no messenger is configured for source {external_id!r}", log
                )
            instance = found
            if not instance.can(Capability.write_first):
                return self._fail(
                    scope_id,
                    amocrm_id,
                    "no_chat",
                    f"{instance.messenger} cannot start a chat; the client has to write first",
                    log,
                )
            if not m.receiver.phone:
                return self._fail(scope_id, amocrm_id, "no_chat", "write first needs the client's phone number", log)
            # The client's answer may outrun this job's record of the chat: it waits while this mark is fresh.
            await core.store.set_state(WRITE_FIRST_MARK, instance.name, str(time.time()).encode())
        log = log.bind(instance=instance.name)
        if m.message.post is not None:
            return await self._comment_reply(scope_id, instance, conversation, m, log)
        reply_to = None
        if m.message.reply_to is not None and conversation is not None:
            quoted_id = m.message.reply_to.message.id
            quoted = await core.store.message_by_amocrm(scope_id, quoted_id) if quoted_id else None
            if quoted is None and m.message.reply_to.message.msgid:
                quoted = await core.store.message(scope_id, m.message.reply_to.message.msgid)
            reply_to = quoted.messenger_id if quoted is not None else None
        message = outgoing_from_hook(
            m.message,
            chat=conversation.chat if conversation is not None else None,
            phone=m.receiver.phone,
            reply_to=reply_to,
            dedup_key=amocrm_id,
        )
        if message.template is not None and (missing := _missing_params(message.template)):
            return self._fail(
                scope_id,
                amocrm_id,
                "other",
                f"template {message.template.id} has no value for {', '.join(missing)}",
                log,
                shown=(conversation, m.message),
            )
        message = _fit_to_capabilities(message, instance)
        closed_at = window_closed_at(
            instance.adapter.capabilities,
            instance.adapter.reply_window,
            conversation.last_client_at if conversation is not None else None,
            window_disabled=account.time_window_disabled,
        )
        if closed_at is not None:
            if message.template is not None and instance.can(Capability.templates):
                log.info("reply window closed; sending the template instead of free text")
                message = msgspec.structs.replace(message, text="", attachments=(), buttons=(), list_message=None)
            else:
                assert instance.adapter.reply_window is not None
                return self._fail(
                    scope_id,
                    amocrm_id,
                    "window_closed",
                    window_closed_text(closed_at, instance.adapter.reply_window),
                    log,
                    shown=(conversation, m.message),
                )
        if conversation is not None:
            message = alter_outgoing_message(core.pm, message, instance.conversation(conversation))
        await instance.throttle(message.chat or message.phone or "")
        target = message.chat or message.phone or ""
        return await self._send(
            scope_id, instance, conversation, m, instance.adapter.send_message(message), log, chat=target
        )

    async def _send(
        self,
        scope_id: str,
        instance: Instance,
        conversation: ConversationRecord | None,
        m: wire.HookMessage,
        send: Awaitable[SendResult],
        log: FilteringBoundLogger,
        chat: str | None = None,
    ) -> Done:
        """Await the adapter's send; record its result, retry what may pass later, report the rest as failed."""
        try:
            result = await send
        except MessengerError as exc:
            if exc.retryable:
                raise await messenger_retry(instance, exc, chat) from exc
            shown = (conversation, m.message)
            return self._fail(scope_id, m.message.id, exc.reason, exc.description, log, shown=shown)
        return self._sent(scope_id, instance, conversation, m, result, log)

    def _sent(
        self,
        scope_id: str,
        instance: Instance,
        conversation: ConversationRecord | None,
        m: wire.HookMessage,
        result: SendResult,
        log: FilteringBoundLogger,
    ) -> Done:
        amocrm_id = m.message.id
        # Only a new or changed conversation is written back. The record read before the send may be
        # stale by now (an inbound job of the chat may have moved its reply window on): finish merges it.
        written: list[ConversationRecord] = []
        if conversation is None:  # write first: the chat exists now
            chat = result.chat or m.receiver.phone or ""
            conversation = ConversationRecord(
                scope_id=scope_id,
                conversation_id=ids.conversation_id(instance.name, chat),
                instance=instance.name,
                chat=chat,
                amocrm_chat_id=m.conversation.id,
                ref_pending=True,
            )
            written.append(conversation)
        elif conversation.amocrm_chat_id != m.conversation.id:
            conversation = msgspec.structs.replace(conversation, amocrm_chat_id=m.conversation.id)
            written.append(conversation)
        status = DELIVERED if result.status == "delivered" else 0
        messages = [
            MessageRecord(
                scope_id,
                amocrm_id if i == 0 else f"{amocrm_id}#{i}",
                conversation.conversation_id,
                "out",
                amocrm_id=amocrm_id,
                messenger_id=messenger_id,
                status=status,
            )
            for i, messenger_id in enumerate(result.message_ids or ("",))
        ]
        then = [status_job(scope_id, StatusJob(amocrm_id, DELIVERED))] if status == DELIVERED else []
        log.info("relayed to messenger", messenger_ids=list(result.message_ids), chat=conversation.chat)
        newest = _activity(scope_id, conversation, m.message)
        return Done(conversations=written, messages=messages, then=then, activity=[newest])

    async def _comment_reply(
        self,
        scope_id: str,
        instance: Instance,
        conversation: ConversationRecord | None,
        m: wire.HookMessage,
        log: FilteringBoundLogger,
    ) -> Done:
        """A reply in a post's comments (spec §7): text only, under the comment it answers."""
        amocrm_id = m.message.id
        assert m.message.post is not None
        post_id = m.message.post.id
        if conversation is None or not instance.can(Capability.comments):
            return self._fail(scope_id, amocrm_id, "other", f"{instance.messenger} cannot answer comments", log)
        store = self.core.store
        target = None
        if m.message.reply_to is not None and m.message.reply_to.message.id:
            target = await store.message_by_amocrm(scope_id, m.message.reply_to.message.id)
        if target is None:
            target = await store.message(scope_id, latest_comment_key(conversation.conversation_id, post_id))
        comment = _comment_id(target.messenger_id if target is not None else None, post_id)
        if comment is None:
            return self._fail(scope_id, amocrm_id, "other", "no comment of this client under the post to answer", log)
        if not m.message.text:
            return self._fail(scope_id, amocrm_id, "other", "a reply in the comments can only be text", log)
        reply = OutgoingCommentReply(
            chat=conversation.chat, post_id=post_id, comment_id=comment, text=m.message.text, dedup_key=amocrm_id
        )
        return await self._send(
            scope_id, instance, conversation, m, instance.adapter.send_comment_reply(reply), log, chat=conversation.chat
        )

    async def _typing(self, scope_id: str, typing: wire.TypingAction, attempt: int, log: FilteringBoundLogger) -> Done:
        if typing.expired_at <= time.time():
            return Done()
        conversation = await self._conversation(scope_id, typing.conversation)
        if conversation is None:
            # The client's message that made the conversation may still be finishing its job.
            wait_for_mapping(attempt, "the typing's conversation")
            log.info("typing in a conversation amoconnect does not know; dropped")
            return Done()
        instance = self.core.routing.get(conversation.instance)
        if instance is None or not instance.can(Capability.typing):
            return Done()
        try:
            await instance.adapter.send_typing(
                OutgoingTyping(chat=conversation.chat, until=float(typing.expired_at), post_id=typing.post_id)
            )
        except MessengerError as exc:
            log.info("typing not shown", error=str(exc))
        return Done()

    async def _reaction(
        self, scope_id: str, reaction: wire.ReactionAction, attempt: int, log: FilteringBoundLogger
    ) -> Done:
        core = self.core
        conversation = await self._conversation(scope_id, reaction.conversation)
        instance = core.routing.get(conversation.instance) if conversation is not None else None
        if conversation is None or instance is None:
            wait_for_mapping(attempt, "the reaction's conversation")
            log.warning("reaction in a conversation amoconnect does not know; dropped")
            return Done()
        if not instance.can(Capability.reactions):
            log.info("reaction not relayed: the messenger has no reactions", messenger=instance.messenger)
            return Done()
        target = await core.store.message_by_amocrm(scope_id, reaction.message_id)
        if target is None and reaction.message is not None and reaction.message.client_id:
            target = await core.store.message(scope_id, reaction.message.client_id)
        if target is None or not target.messenger_id:
            wait_for_mapping(attempt, f"message {reaction.message_id!r} reacted to")
            log.warning("reaction to a message amoconnect does not know; dropped", amocrm_id=reaction.message_id)
            return Done()
        removed = reaction.type == "unreact"
        emoji = ""
        if not removed:
            matched = instance.adapter.reactions.match(reaction.emoji or "")
            if matched is None:
                log.warning(
                    "reaction not relayed: emoji not in the messenger's set",
                    emoji=reaction.emoji,
                    messenger=instance.messenger,
                )
                return Done()
            emoji = matched
        try:
            await instance.adapter.send_reaction(
                OutgoingReaction(chat=conversation.chat, message_id=target.messenger_id, emoji=emoji, removed=removed)
            )
        except MessengerError as exc:
            if exc.retryable:
                raise await messenger_retry(instance, exc, conversation.chat) from exc
            log.warning("reaction refused by the messenger", error=str(exc))
        return Done()


class StatusHandler:
    """Runs ``status`` jobs: one ``delivery_status`` call each."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def __call__(self, job: Job, log: FilteringBoundLogger) -> Done:
        status = msgspec.json.decode(job.payload, type=StatusJob)
        code: Literal[1, 2, -1] = 1 if status.delivery_status == 1 else 2 if status.delivery_status == 2 else -1
        try:
            await self.core.amojo.update_delivery_status(
                job.scope_id, status.amocrm_id, code, error_code=status.error_code, error=status.error
            )
        except AmojoError as exc:
            raise amojo_failure(exc) from exc
        log.info("status reported to amoCRM", amocrm_id=status.amocrm_id, delivery_status=code)
        if status.given_up is None:
            return Done()
        return await self._given_up(job.scope_id, status.amocrm_id, status.given_up)

    async def _given_up(self, scope_id: str, amocrm_id: str, given_up: GivenUp) -> Done:
        """A dead letter's message recorded failed, as its conversation's newest (the console's list)."""
        store = self.core.store
        conversation = await _conversation_of(store, scope_id, given_up.conversation, given_up.client_id)
        if conversation is None:  # a chat the connector never knew: nothing to list it under
            return Done()
        record = await store.message_by_amocrm(scope_id, amocrm_id)
        if record is None:
            record = MessageRecord(scope_id, amocrm_id, conversation.conversation_id, "out", amocrm_id=amocrm_id)
        failed = msgspec.structs.replace(record, status=FAILED)
        newest = Activity(scope_id, conversation.conversation_id, failed.msgid, "out", given_up.preview, time.time())
        return Done(messages=[failed], activity=[newest])
