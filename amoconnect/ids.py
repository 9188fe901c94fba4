"""Ids amoconnect makes up, all derived from the messenger's own ids.

Deterministic on purpose: a job that runs twice derives the same msgid, and amojo refuses a
msgid it already has, so a retry can never create a second message in amoCRM. Pure logic.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "business_msgid",
    "client_id",
    "comment_msgid",
    "conversation_id",
    "edit_msgid",
    "inbound_msgid",
    "job_key",
]

_MAX = 128


def _compact(value: str) -> str:
    """Keep ids readable, but bounded: a long one keeps its start and gains a hash of the whole."""
    if len(value) <= _MAX:
        return value
    return f"{value[:80]}~{hashlib.sha1(value.encode()).hexdigest()}"


def conversation_id(instance: str, chat: str) -> str:
    """Our conversation id of a messenger chat: ``{instance}:{chat}``."""
    return _compact(f"{instance}:{chat}")


def client_id(instance: str, user: str) -> str:
    """Our id of a messenger user, sent to amojo as ``sender.id``."""
    return _compact(f"{instance}:{user}")


def inbound_msgid(instance: str, chat: str, message_id: str) -> str:
    """Our msgid of a client's message."""
    return _compact(f"{instance}:{chat}:{message_id}")


def business_msgid(instance: str, chat: str, message_id: str) -> str:
    """Our msgid of a message the business wrote outside amoCRM (imported history, a live echo)."""
    return inbound_msgid(instance, chat, f"out:{message_id}")


def edit_msgid(instance: str, chat: str, message_id: str, dedup_key: str) -> str:
    """Our msgid of one edit of a client's message."""
    return _compact(f"{instance}:{chat}:{message_id}:edit:{dedup_key}")


def comment_msgid(instance: str, post_id: str, comment_id: str) -> str:
    """Our msgid of a client's comment."""
    return _compact(f"{instance}:post:{post_id}:{comment_id}")


def job_key(*parts: str) -> str:
    """The ordering key of a job: jobs with one key run one at a time, in order."""
    return "|".join(parts)
