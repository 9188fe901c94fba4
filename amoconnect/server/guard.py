"""Guards below the app: bounded connections, deadlines and sizes for reading requests, bounded body memory.

uvicorn bounds nothing before a request's head is complete: a connection that sends nothing, or
its headers a byte at a time, stays open for ever, and enough of them use up the process's file
descriptors. :func:`guarded_protocol` subclasses uvicorn's httptools protocol with what is missing
(the ``[server]`` keys in brackets):

- at most ``max_connections`` open connections. At the cap a new connection takes the place of the
  one that has waited longest without a request in progress (idle keep-alive, or still sending its
  headers): a slow-header flood then only displaces itself, while a client that sends its request
  at once gets through. With no such connection the new one is answered 503 and closed;
- a request's line and headers must arrive within ``header_timeout`` seconds (from connecting, or
  from the request's first byte on a kept-alive connection) and ``max_header_bytes`` (431), else
  the connection is closed; idle keep-alive connections close after ``keepalive_timeout``.

Webhook bodies are read by the app (:mod:`.app`) within ``body_timeout`` seconds, and all bodies
being read or handled share ``max_body_memory`` bytes (:class:`BodyMemory`).

Every refusal is counted (``amoconnect_connections_refused_total{reason}``) and logged: at most one
line per reason every :data:`LOG_EVERY` seconds, with the count since the last line, so that a
flood does not flood the log too.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from ..config import ServerConfig
    from ..metrics import Metrics

__all__ = ["LOG_EVERY", "RESERVED_DESCRIPTORS", "BodyMemory", "Refusals", "fit_descriptors", "guarded_protocol"]

log = structlog.get_logger("amoconnect.server")

LOG_EVERY = 10.0
"""Seconds between two log lines about refusals of one reason."""
RESERVED_DESCRIPTORS = 256
"""File descriptors kept for what is not an incoming connection (store, outgoing HTTP, media files)."""

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\n"
    b"connection: close\r\ncontent-length: 33\r\n\r\ntoo many connections, retry later\n"
)
_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 26\r\n\r\nrequest headers too large\n"
)


class Refusals:
    """Counts refusals by reason and logs them, one line per reason per :data:`LOG_EVERY` seconds at most:
    the first at once, the ones after it in a line with their count when the interval is over."""

    def __init__(self, metrics: Metrics, *, log_every: float = LOG_EVERY) -> None:
        self.metrics = metrics
        self.log_every = log_every
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._later: asyncio.TimerHandle | None = None

    def note(self, reason: str, **context: Any) -> None:
        """Count one refusal; log it unless a line about ``reason`` went out within :attr:`log_every` seconds."""
        self.metrics.connections_refused.labels(reason).inc()
        self._unlogged[reason] += 1
        now = time.monotonic()
        last = self._logged_at.get(reason, -self.log_every)
        if now - last >= self.log_every:
            self._logged_at[reason] = now
            log.warning("connections refused", reason=reason, count=self._unlogged.pop(reason), **context)
        elif self._later is None:
            self._later = asyncio.get_running_loop().call_later(last + self.log_every - now, self.flush)

    def flush(self) -> None:
        """Log what was counted since each reason's last line (also when the server stops)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        now = time.monotonic()
        for reason, count in sorted(self._unlogged.items()):
            self._logged_at[reason] = now
            log.warning("connections refused", reason=reason, count=count)
        self._unlogged.clear()


class BodyMemory:
    """The bytes that webhook bodies being read or handled take together, at most ``limit``."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.used = 0
        self._gauge = metrics.body_memory

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes; ``False`` (and nothing counted) if they would pass the limit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        self._gauge.set(self.used)
        return True

    def give_back(self, size: int) -> None:
        """Release bytes counted by :meth:`take`."""
        self.used -= size
        self._gauge.set(self.used)


def fit_descriptors(max_connections: int) -> int:
    """``max_connections``, after raising the soft open-file limit towards what it needs (up to the hard
    limit); lowered, with a warning, when the limit still cannot hold it and :data:`RESERVED_DESCRIPTORS`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - RESERVED_DESCRIPTORS)
        log.warning(
            "server.max_connections lowered to fit the open-file limit (raise LimitNOFILE / ulimit -n)",
            configured=max_connections,
            effective=fitted,
            open_file_limit=soft,
        )
        return fitted
    return max_connections


def guarded_protocol(
    server: ServerConfig, metrics: Metrics, refusals: Refusals, max_connections: int
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the connection guards of ``server`` (see the module docstring),
    noting what it refuses in ``refusals``."""
    header_timeout, max_header_bytes = server.header_timeout, server.max_header_bytes
    waiting: dict[Guarded, None] = {}
    """Open connections without a request in progress, the longest waiting first."""

    class Guarded(HttpToolsProtocol):
        _admitted = False
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn declares an int; the event loop's timer takes any number of seconds.
            self.timeout_keep_alive = server.keepalive_timeout  # type: ignore[assignment]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections and not self._evict_one():
                refusals.note("max_connections", open=len(self.connections))
                transport.write(_BUSY)
                transport.close()
                return
            self._admitted = True
            super().connection_made(transport)
            metrics.connections_open.set(len(self.connections))
            waiting[self] = None
            self._arm_head_timer()

        def _evict_one(self) -> bool:
            if not waiting:
                return False
            oldest = next(iter(waiting))
            del waiting[oldest]
            refusals.note("evicted", open=len(self.connections))
            oldest.transport.close()
            self.connections.discard(oldest)  # its slot is free now, though the loop reports the loss later
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._admitted:
                return
            waiting.pop(self, None)
            self._cancel_head_timer()
            super().connection_lost(exc)
            metrics.connections_open.set(len(self.connections))

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_header_bytes:
                    refusals.note("header_too_large", client=_client(self))
                    self.transport.write(_HEADERS_TOO_LARGE)
                    self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:
                self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            waiting.pop(self, None)
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            idle = not self.pipeline  # else the next request, already read, starts now
            super().on_response_complete()
            if idle and not self.transport.is_closing():
                waiting[self] = None

        def _arm_head_timer(self) -> None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                refusals.note("header_timeout", client=_client(self))
                self.transport.close()

    return Guarded


def _client(protocol: HttpToolsProtocol) -> str | None:
    return f"{protocol.client[0]}:{protocol.client[1]}" if protocol.client else None
