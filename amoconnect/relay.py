"""The relay: takes jobs from the store and runs them, in order per conversation, in parallel across.

A handler per job kind does the work and tells the relay how it went: it returns
:class:`Done` (with the mapping records to write and follow-up jobs, all committed together
with the job's completion), or raises :class:`Retry` (try again later) or :class:`GiveUp` (a
dead letter right away). Any other exception is sorted by :func:`transient`: the network, the
store or a remote's retryable error is retried like :class:`Retry`; anything else is a bug or
a local surprise (a ``KeyError``, an invalid URL built from a messenger's answer), which no
attempt would mend: the job becomes a dead letter at once, its traceback in the error, so it
stops blocking its conversation. After ``max_attempts`` a job becomes a dead letter; a
handler's ``on_dead`` may then enqueue follow-ups (e.g. tell the manager the message failed).

Workers wake when a job is committed (no polling sleep); when nothing is due they sleep until
the earliest retry is. A finish that took its conversation's next job wakes nobody, so a drain
of one conversation costs no claims. A finished job's slot takes its conversation's next job in the finish's
own transaction while another slot is free, so a backlog of one conversation runs at the pace of
its jobs, not of claims.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import httpx
import structlog

from .crashpoints import crash_point
from .errors import MessengerError, RemoteError, StoreError
from .metrics import Metrics
from .store.base import Activity, ConversationRecord, Job, MessageRecord, NewJob, Store

__all__ = ["Done", "GiveUp", "Handler", "Relay", "Retry", "transient"]

log = structlog.get_logger("amoconnect.relay")

T = TypeVar("T")

_IDLE_WAIT = 5.0
_SETTLE_FOR = 60.0
"""Seconds a finished job keeps trying to record its outcome while the store is unavailable."""
_STORE_RETRY = 1.0


@dataclass(frozen=True)
class Done:
    """A job finished; these writes and follow-up jobs commit with its completion."""

    conversations: Sequence[ConversationRecord] = ()
    messages: Sequence[MessageRecord] = ()
    then: Sequence[NewJob] = ()
    activity: Sequence[Activity] = ()
    """The conversations' newest messages, for the console (:class:`~amoconnect.store.base.Activity`)."""


class Retry(Exception):
    """Run the job again later: after ``delay`` seconds, or the relay's backoff when ``None``."""

    def __init__(self, reason: str, *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class GiveUp(Exception):
    """The job can never succeed: move it to the dead letters now."""


def transient(exc: Exception) -> bool:
    """Whether an exception a handler let through may pass on a later attempt.

    The network (``httpx.TransportError`` but for errors in the request itself: an unsupported
    scheme, an invalid header; ``OSError``, ``TimeoutError``), the store (:class:`StoreError`), and
    remote and messenger errors that say so (``retryable``). Everything else is a local error.
    """
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    if isinstance(exc, RemoteError | MessengerError):
        return exc.retryable
    return isinstance(exc, httpx.TransportError | StoreError | OSError | TimeoutError)


@dataclass
class Handler:
    """How the relay runs one kind of job."""

    run: Callable[[Job, structlog.typing.FilteringBoundLogger], Awaitable[Done]]
    on_dead: Callable[[Job, str], Sequence[NewJob]] | None = None
    """Follow-up jobs to enqueue when a job of this kind becomes a dead letter."""
    max_attempts: int | None = None
    """Overrides the relay's ``max_attempts`` for this kind."""


@dataclass
class Relay:
    """Runs jobs from ``store`` with the ``handlers`` for their kinds."""

    store: Store
    handlers: dict[str, Handler]
    metrics: Metrics = field(default_factory=Metrics)
    concurrency: int = 64
    max_attempts: int = 10
    backoff: float = 1.0
    max_backoff: float = 600.0
    shutdown_timeout: float = 10.0
    _running: set[int] = field(default_factory=set, init=False)
    _slot_free: anyio.Event = field(default_factory=anyio.Event, init=False)
    _dispatching: anyio.CancelScope | None = field(default=None, init=False)
    _stopped: anyio.Event = field(default_factory=anyio.Event, init=False)

    def backoff_delay(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: exponential with jitter, capped."""
        ceiling = min(self.max_backoff, self.backoff * (2 ** (attempts - 1)))
        return random.uniform(ceiling / 2, ceiling)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work the queue until :meth:`stop` drains it, or until cancelled (in-flight jobs then stop
        at once, left to the store: they run again)."""
        self._stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as jobs:
                with anyio.CancelScope() as self._dispatching:
                    task_status.started()
                    await self._dispatch(jobs)
                await self._drain()
                jobs.cancel_scope.cancel()
        finally:
            self._dispatching = None
            self._stopped.set()

    async def stop(self) -> None:
        """Drain: claim no more jobs, give those in flight ``shutdown_timeout`` seconds to finish and
        record their outcome, then cancel the rest, which the store gives back to the queue (SQLite
        at the next start, PostgreSQL when it closes). Returns once :meth:`run` has returned."""
        if self._dispatching is None:
            return
        self._dispatching.cancel()
        await self._stopped.wait()

    async def _dispatch(self, jobs: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                wait = await self._start_due(jobs)
            except StoreError as exc:
                # A database restart or failover must not end the relay: look again shortly.
                log.warning("store unavailable; claiming again shortly", error=str(exc), retry_in_s=_STORE_RETRY)
                wait = _STORE_RETRY
            if wait > 0:
                await self.store.wait_for_work(wait)

    async def _start_due(self, jobs: anyio.abc.TaskGroup) -> float:
        """Start what is due in the free slots; how long to wait for more work (0: look again now)."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            self._slot_free = anyio.Event()
            await self._slot_free.wait()
            return 0.0
        with anyio.CancelScope(shield=True):  # a job claimed is a job started: stop() never strands one
            claimed = await self.store.claim(free)
            for job in claimed:
                self._running.add(job.id)
                jobs.start_soon(self._work, job)
        if len(claimed) == free:
            return 0.0
        due = await self.store.next_due_in()
        return _IDLE_WAIT if due is None else min(due, _IDLE_WAIT)

    async def _drain(self) -> None:
        if not self._running:
            return
        in_flight = len(self._running)
        log.info("draining", in_flight=in_flight, timeout_s=self.shutdown_timeout)
        with anyio.move_on_after(self.shutdown_timeout):
            while self._running:
                self._slot_free = anyio.Event()
                await self._slot_free.wait()
        if self._running:
            log.warning("left queued at shutdown", jobs=sorted(self._running))
        else:
            log.info("drained", finished=in_flight)

    async def _work(self, job: Job) -> None:
        """Run ``job`` and then, in the same slot, each next job of its conversation that its finish
        took (a conversation's backlog runs without a claim between its jobs)."""
        current: Job | None = job
        try:
            while current is not None:
                current = await self._run_one(current)
                if current is not None:
                    self._running.add(current.id)
        finally:
            self._slot_free.set()

    async def _run_one(self, job: Job) -> Job | None:
        """Run one job and record its outcome; the next job of its conversation if its finish took one."""
        bound = log.bind(job=job.id, kind=job.kind, scope_id=job.scope_id, key=job.key, attempt=job.attempts)
        handler = self.handlers.get(job.kind)
        try:
            crash_point("relay.running", job.kind)
            if handler is None:
                await self._bury(job, None, f"no handler for job kind {job.kind!r}", bound)
                return None
            try:
                done = await handler.run(job, bound)
            except GiveUp as exc:
                await self._bury(job, handler, str(exc), bound)
            except Retry as exc:
                await self._retry(job, handler, str(exc), exc.delay, bound)
            except Exception as exc:
                if transient(exc):
                    await self._retry(job, handler, f"{type(exc).__name__}: {exc}", None, bound)
                else:
                    bound.exception("job failed on an unexpected error; not retried")
                    trace = "".join(traceback.format_exception(exc)).rstrip()
                    await self._bury(job, handler, f"unexpected error, not retried: {trace}", bound)
            else:
                crash_point("relay.done", job.kind)
                # The finish takes the conversation's next job too while the relay dispatches and a
                # slot is free for other work (all slots busy: the slot goes back to the claims,
                # which serve every conversation's head in turn).
                taking = (
                    self._dispatching is not None
                    and not self._dispatching.cancel_called
                    and len(self._running) < self.concurrency
                )
                following = await self._settle(
                    job,
                    lambda: self.store.finish(
                        job.id,
                        conversations=done.conversations,
                        messages=done.messages,
                        then=done.then,
                        take_next=taking,
                        activity=done.activity,
                    ),
                    bound,
                )
                self.metrics.jobs_succeeded.labels(job.kind).inc()
                self.metrics.relay_latency.labels(job.kind).observe(max(time.time() - job.created_at, 0.0))
                for follow in done.then:
                    self.metrics.jobs_queued.labels(follow.kind).inc()
                return following
        finally:
            self._running.discard(job.id)
        return None

    async def _retry(
        self, job: Job, handler: Handler, error: str, delay: float | None, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        limit = handler.max_attempts or self.max_attempts
        if job.attempts >= limit:
            await self._bury(job, handler, f"gave up after {job.attempts} attempts: {error}", bound)
            return
        wait = self.backoff_delay(job.attempts) if delay is None else delay
        bound.warning("job will be retried", error=error, retry_in_s=round(wait, 3))
        await self._settle(job, lambda: self.store.retry(job.id, delay=wait, error=error), bound)
        self.metrics.jobs_retried.labels(job.kind).inc()

    async def _bury(
        self, job: Job, handler: Handler | None, error: str, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        bound.error("job moved to dead letters", error=error)
        follow = handler.on_dead(job, error) if handler is not None and handler.on_dead is not None else ()
        await self._settle(job, lambda: self.store.bury(job.id, error=error, then=follow), bound)
        self.metrics.jobs_dead.labels(job.kind).inc()

    async def _settle(
        self, job: Job, write: Callable[[], Awaitable[T]], bound: structlog.typing.FilteringBoundLogger
    ) -> T | None:
        """Record a job's outcome, through a store outage of up to ``_SETTLE_FOR`` seconds.

        The work is done (a message may have gone out), so giving up at the first store error
        would run it again; after the bound the job is abandoned (:meth:`Store.abandon`) and run
        again, at least once, when the store queues it again (SQLite's next claim that commits,
        PostgreSQL once its lease runs out).
        """
        pause = _STORE_RETRY / 4
        deadline = anyio.current_time() + _SETTLE_FOR
        while True:
            try:
                return await write()
            except StoreError as exc:
                if anyio.current_time() + pause > deadline:
                    bound.error("store unavailable; the job's outcome is not recorded", error=str(exc))
                    self.store.abandon(job.id)
                    return None
                bound.warning("store unavailable; recording the job's outcome again shortly", error=str(exc))
                await anyio.sleep(pause)
                pause = min(pause * 2, _STORE_RETRY * 5)
