"""Logging set-up of every command: JSON lines when the output is not a terminal, readable lines when it is.

Secrets never reach a log line: :func:`configure` takes the configured secrets, a processor
replaces any occurrence of them in every rendered value (nested ones and exceptions included),
and the standard library's lines (uvicorn, httpx) are scrubbed the same way. A secret made at
run time (a token derived from a configured one, or generated and stored) joins them through
:func:`redact`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import msgspec
import structlog

__all__ = ["RedactingFormatter", "compact", "configure", "name_account", "redact", "redactor", "scrubber"]

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
    needles = _needles(secrets)

    def scrub(text: str) -> str:
        for needle in needles():
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    return scrub


def _needles(secrets: Iterable[str]) -> Callable[[], list[str]]:
    """The secrets to scrub, longest first: the configured ones and those :func:`redact` has learned so far."""
    configured = {s for s in secrets if s and len(s) >= 6}
    needles: list[str] = []
    learned = -1

    def current() -> list[str]:
        nonlocal needles, learned
        if learned != len(_learned):  # a secret was learned since: sort the needles again
            learned = len(_learned)
            needles = sorted(configured | _learned, key=len, reverse=True)
        return needles

    return current


def redactor(secrets: Iterable[str]) -> structlog.types.Processor:
    """A processor that scrubs every configured secret from an event's values, nested ones too.

    A line whose values are plain strings and numbers without a secret (nearly every line) is
    checked with one search per secret over its strings joined, and left as it is.
    """
    needles = _needles(secrets)
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
        if isinstance(value, int | float | bool) or value is None:
            return value
        return scrub(repr(value))  # anything else (bytes too) renders as its repr, as JSONRenderer did: scrub that

    def process(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        texts = []
        for value in event_dict.values():
            kind = type(value)
            if kind is str:
                texts.append(value)
            elif kind is not int and kind is not bool and kind is not float and value is not None:
                break  # a container, an exception or an object: clean each value
        else:
            joined = "\0".join(texts)
            if not any(needle in joined for needle in needles()):
                return event_dict
        for key, value in event_dict.items():
            event_dict[key] = clean(value)
        return event_dict

    return process


_json_line = msgspec.json.Encoder().encode


def _render_json(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
    """One JSON line (after :func:`redactor`, whose values are all JSON types)."""
    return _json_line(event_dict).decode()


class RedactingFormatter(logging.Formatter):
    """A standard library formatter whose lines (tracebacks included) have the secrets scrubbed."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self._scrub = scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


_UUID = re.compile(r"(?<![0-9a-f])([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-f])", re.I)


_account_names: dict[str, str] = {}
"""Scope ids and the names of their accounts (:func:`name_account`), for console lines."""


def name_account(scope_id: str, name: str) -> None:
    """Show ``scope_id`` as ``account=name`` on console lines from now on (:func:`compact`)."""
    _account_names[scope_id] = name


def compact() -> structlog.types.Processor:
    """A processor that keeps a console line short enough to read on a terminal of 80-120 columns.

    ``scope_id`` (two joined UUIDs) becomes ``account=<name>`` (:func:`name_account`), or goes
    when there is one account; a job's queue ``key`` (scope and
    conversation again) goes; on info and debug lines a job's ``job``, ``kind`` and ``attempt`` go
    (warnings and errors keep them: they say which job to look at), and so do fields that are
    ``False``; every other UUID is cut to its first 8 characters. JSON lines keep everything.
    """

    def process(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        names = _account_names
        event_dict.pop("key", None)
        if event_dict.get("level") in ("debug", "info"):
            for name in ("job", "kind", "attempt", *(k for k, v in event_dict.items() if v is False)):
                event_dict.pop(name, None)
        scope_id = event_dict.pop("scope_id", None)
        if scope_id is not None and (len(names) > 1 or scope_id not in names):
            event_dict["account"] = names.get(scope_id, scope_id)
        for name, value in event_dict.items():
            if isinstance(value, str) and name != "event":
                event_dict[name] = _UUID.sub(r"\1…", value)
        return event_dict

    return process


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # typeshed: StreamHandler[TextIO]
    """Writes to whatever ``sys.stderr`` is when a line is written (a test may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _shared(printer: structlog.WriteLogger) -> Callable[..., structlog.WriteLogger]:
    """A logger factory that hands every bound logger the same printer: a job's ``bind`` made a new
    one each time (its file's lock looked up again), about a fifth of a log line's CPU. A line is one
    write of the file (``print`` writes its end apart: two system calls a line when stderr is
    unbuffered, as with ``PYTHONUNBUFFERED`` in most container images)."""
    return lambda *args: printer


def configure(
    *,
    level: str = "info",
    json: bool | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog and the standard library's root logger for a command of the program.

    ``json``: JSON lines when true, readable lines (:func:`compact`, coloured on a terminal) when
    false, and when ``None`` JSON unless stderr is a terminal. The standard library's lines (uvicorn,
    httpx) are rendered the same way from ``WARNING`` up. Every value is scrubbed of ``secrets``.
    Calling it again replaces the previous set-up.
    """
    secrets = list(secrets)
    tty = sys.stderr.isatty()
    if json is None:
        json = not tty
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso" if json else "%H:%M:%S", utc=json),
        structlog.processors.format_exc_info,
        redactor(secrets),
    ]
    rendering: list[structlog.types.Processor] = (
        [_render_json]
        if json
        else [compact(), structlog.dev.ConsoleRenderer(colors=tty, pad_level=False, pad_event_to=20)]
    )
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_shared(structlog.WriteLogger(file=sys.stderr)),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    handler.setLevel(max(numeric, logging.WARNING))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
