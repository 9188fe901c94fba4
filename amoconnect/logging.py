"""structlog set-up: JSON lines when the output is not a terminal, readable lines when it is.

Secrets never reach a log line: :func:`configure` takes the configured secrets and a
processor replaces any occurrence of them in every rendered value.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

__all__ = ["configure", "redactor"]

REDACTED = "[redacted]"


def redactor(secrets: Iterable[str]) -> structlog.types.Processor:
    """A processor that replaces every configured secret (≥ 6 characters) inside string values."""
    needles = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for needle in needles:
                if needle in value:
                    value = value.replace(needle, REDACTED)
        return value

    def process(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if needles:
            for key, value in event_dict.items():
                if isinstance(value, str):
                    event_dict[key] = scrub(value)
                elif isinstance(value, BaseException):
                    event_dict[key] = scrub(f"{type(value).__name__}: {value}")
        return event_dict

    return process


def configure(*, level: str = "info", json: bool | None = None, secrets: Iterable[str] = ()) -> None:
    """Configure structlog (and the standard library's root logger) for the running program."""
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
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(message)s")
