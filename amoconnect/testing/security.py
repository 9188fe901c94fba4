"""Test helpers for the connector's guards: who decides a secret check, what a request stored, what leaked.

- :func:`digest_verdict` patches :func:`hmac.compare_digest`: it records every comparison and,
  given a verdict, answers it, so a test proves a check is decided there (a wrong secret passes
  when it says yes, the right one fails when it says no);
- :func:`secret_comparisons` scans source files for ``==``, ``!=``, ``in`` on secrets;
- :class:`StoreWrites` records queue jobs and dedup keys written while a request runs;
  :func:`check_body_cap` proves a webhook route refuses bodies over its cap, streaming;
- :func:`leaks` finds configured secrets in captured text; :func:`captured_logs` renders every
  log line through the connector's own processors (redaction included) into a list.
"""

from __future__ import annotations

import ast
import hmac
import io
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog

from ..logging import RedactingFormatter, configure
from ..store.base import NewJob, Store

__all__ = [
    "SECRET_NAMES",
    "CapturedLogs",
    "StoreWrites",
    "captured_logs",
    "digest_verdict",
    "leaks",
    "secret_comparisons",
]

SECRET_NAMES = re.compile(
    r"secret|signature|token|confirmation|password|passwd|digest|hmac|api_key|(^|_)mac($|_)|(^|_)sig($|_)", re.I
)
"""Names of values that are secrets, or carry one (``self.token``, ``headers.get("X-Signature")``)."""


@contextmanager
def digest_verdict(verdict: bool | None = None) -> Iterator[list[tuple[Any, Any]]]:
    """Record every :func:`hmac.compare_digest` call; with ``verdict``, answer it instead of comparing."""
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b) if verdict is None else verdict

    hmac.compare_digest = spy
    try:
        yield calls
    finally:
        hmac.compare_digest = real


def _names(node: ast.AST) -> list[str]:
    found: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("len", "type", "bool"):
            return []  # a length or a type is no secret
        if isinstance(sub, ast.Name):
            found.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.append(sub.attr)
        elif isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "get" and sub.args:
            found.append(_text(sub.args[0]))  # headers.get("X-Signature")
        elif isinstance(sub, ast.Subscript):
            found.append(_text(sub.slice))  # body["secret"]
    return found


def _text(node: ast.AST) -> str:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def secret_comparisons(files: Iterable[Path], root: Path | None = None) -> list[str]:
    """``path:line: code`` of each ``==``, ``!=``, ``in``, ``not in`` between two values of which one is a secret.

    A comparison with a literal (``mode == "webhook"``, ``token == ""``) is not one: the other side
    is no secret the caller holds. Use :func:`hmac.compare_digest` (or
    :func:`amoconnect.signing.same_secret`) for the others.
    """
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
                if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                    continue
                if isinstance(left, ast.Constant) or isinstance(right, ast.Constant):
                    continue
                if any(SECRET_NAMES.search(name) for name in _names(left) + _names(right)):
                    shown = path.relative_to(root) if root is not None else path
                    found.append(f"{shown}:{node.lineno}: {ast.unparse(node)}")
    return found


class StoreWrites:
    """Records the jobs and dedup keys a store is asked to keep (``enqueue``) while installed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs: list[NewJob] = []
        self.dedup: list[str] = []

    @contextmanager
    def watching(self) -> Iterator[StoreWrites]:
        """Install on the store for the ``with`` block."""
        real = self.store.enqueue

        async def enqueue(jobs: Sequence[NewJob], *, dedup: Sequence[str] = ()) -> bool:
            self.jobs.extend(jobs)
            self.dedup.extend(dedup)
            return await real(jobs, dedup=dedup)

        self.store.enqueue = enqueue  # type: ignore[method-assign]
        try:
            yield self
        finally:
            self.store.enqueue = real  # type: ignore[method-assign]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.jobs.clear()
        self.dedup.clear()

    def __bool__(self) -> bool:
        return bool(self.jobs or self.dedup)


CHUNK = 16 * 1024


async def check_body_cap(
    client: httpx.AsyncClient, url: str, cap: int, store: Store, *, headers: Mapping[str, str] | None = None
) -> None:
    """POST bodies over ``cap`` to ``url``: one that says so (``Content-Length``), one chunked with no
    length, one whose ``Content-Length`` lies (says 10). Each must get 413, store nothing, and be read
    no further than the cap (the app stops pulling the body: it is not buffered whole first)."""
    headers = dict(headers or {})
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < 64 * cap:  # far past the cap, but a broken guard still ends
            pulled += CHUNK
            yield b"{" * CHUNK

    writes = StoreWrites(store)
    before = await store.counts()
    with writes.watching():
        declared = await client.post(url, content=b"{" * (cap + 1), headers=headers)
        assert declared.status_code == 413, f"{url}: {cap + 1} bytes declared got {declared.status_code}"
        for name, extra in (("chunked", {}), ("lying Content-Length", {"Content-Length": "10"})):
            pulled = 0
            response = await client.post(url, content=endless(), headers={**headers, **extra})
            assert response.status_code == 413, f"{url}: a {name} body over the cap got {response.status_code}"
            assert pulled <= cap + 2 * CHUNK, f"{url}: {pulled} bytes of a {name} body read past the {cap} cap"
    assert not writes, f"{url}: a refused body stored {writes.jobs} {writes.dedup}"
    assert await store.counts() == before


def leaks(texts: Iterable[str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """``(secret, text)`` for each secret found in a text (the text cut around it)."""
    found = []
    for text in texts:
        for secret in secrets:
            at = text.find(secret)
            if secret and at >= 0:
                found.append((secret, text[max(at - 80, 0) : at + len(secret) + 80]))
    return found


class CapturedLogs:
    """The log lines written since :func:`captured_logs` began."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def lines(self) -> list[str]:
        """Every line so far."""
        return self._stream.getvalue().splitlines()


@contextmanager
def captured_logs(secrets: Iterable[str] = (), *, level: str = "debug") -> Iterator[CapturedLogs]:
    """Every log line, structlog's and the standard library's, rendered as the running connector
    renders them (:func:`amoconnect.logging.configure`: JSON, the ``secrets`` redacted, the standard
    library at ``WARNING`` and above); the previous set-up is restored after."""
    previous = structlog.get_config()
    stream = io.StringIO()
    secrets = list(secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(name)s %(message)s", secrets))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    configure(level=level, json=True, secrets=secrets)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stream))
    root.addHandler(handler)
    try:
        yield CapturedLogs(stream)
    finally:
        root.removeHandler(handler)
        structlog.configure(**previous)
