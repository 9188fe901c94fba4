"""structlog set-up: JSON lines when the output is not a terminal, readable lines when it is.

Secrets never reach a log line: :func:`configure` takes the configured secrets, a processor
replaces any occurrence of them in every rendered value (nested ones and exceptions included),
and the standard library's lines (uvicorn, httpx) are scrubbed the same way. A secret made at
run time (a token derived from a configured one, or generated and stored) joins them through
:func:`redact`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog

__all__ = ["RedactingFormatter", "configure", "redact", "redactor", "scrubber"]

REDACTED = "[redacted]"

_learned: set[str] = set()
"""Secrets made at run time (:func:`redact`): every scrubber of this process scrubs them too."""


def redact(secret: str) -> None:
    """Scrub ``secret`` from every log line from now on, beside the configured secrets.

    For a secret the configuration does not hold: one derived from a configured token, or one
    generated and stored (a webhook's verification token). Values under 6 characters are ignored.
    """
    if secret and len(secret) >= 6:
        _learned.add(secret)


def scrubber(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every configured secret (≥ 6 characters), and those :func:`redact` learns, in a text."""
    configured = {s for s in secrets if s and len(s) >= 6}
    needles: list[str] = []
    learned = -1

    def scrub(text: str) -> str:
        nonlocal needles, learned
        if learned != len(_learned):  # a secret was learned since: sort the needles again
            learned = len(_learned)
            needles = sorted(configured | _learned, key=len, reverse=True)
        for needle in needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    return scrub


def redactor(secrets: Iterable[str]) -> structlog.types.Processor:
    """A processor that scrubs every configured secret from an event's values, nested ones too."""
    scrub = scrubber(secrets)

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, BaseException):
            return scrub(f"{type(value).__name__}: {value}")
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [clean(v) for v in value]
        if isinstance(value, bytes | int | float | bool) or value is None:
            return value
        return scrub(repr(value))  # anything else renders as its repr (as JSONRenderer does): scrub that

    def process(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            event_dict[key] = clean(value)
        return event_dict

    return process


class RedactingFormatter(logging.Formatter):
    """A standard library formatter whose lines (tracebacks included) have the secrets scrubbed."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self._scrub = scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


def configure(*, level: str = "info", json: bool | None = None, secrets: Iterable[str] = ()) -> None:
    """Configure structlog (and the standard library's root logger) for the running program."""
    secrets = list(secrets)
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(name)s %(message)s", secrets))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler])
