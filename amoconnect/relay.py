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

A kind whose jobs may run twice without harm (:attr:`Handler.repeatable`: amojo refuses a msgid
it has) runs a conversation's backlog as a pipeline: once a finish took the conversation's next
job (there is a backlog) while a slot is free for other work, the slot takes the jobs after it
ahead (:meth:`Store.take_ahead`; they run in the slot even if every other slot fills meanwhile, and
the next ones are taken while the last few run), and
once a job's work is done hands its finish to the store without waiting
(:meth:`Store.finish_soon`) and starts the next job at once; the finishes commit in the
background, several in a transaction, and reach the disk with a flush every ``_FLUSH_EVERY``.
Order holds: a job starts only after the one before it returned, and a job that fails gives the
jobs taken behind it back to the queue, after the finishes before it committed, so nothing
overtakes its retry. A crash runs the jobs whose finish was not committed (or, after a power cut,
not on disk) again, in order; amojo refuses each as a duplicate and the handler finds amoCRM's id
of it. A lone job of such a kind is finished without waiting for the disk too, and its run's last
flush waits a moment for a webhook's durable commit to carry it there (``_FLUSH_LINGER``). Jobs of
other kinds, and a finish with follow-ups, wait for a durable commit.

Webhooks go first (:mod:`~amoconnect.precedence`): a backlog's next step (a conversation's next job
in a slot, or the next claim after one that took all it asked for) waits while webhooks are being
received, at most ``_DEFER_AT_MOST`` each time, so acks stay quick while a queue drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import httpx
import structlog

from .crashpoints import crash_point
from .errors import MessengerError, RemoteError, StoreError
from .metrics import Metrics, Observed, Value
from .precedence import Arrivals
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
    repeatable: bool = False
    """A job of this kind may run again after it succeeded without harm (amojo refuses a msgid it
    has; the rest of its effects are idempotent): a conversation's jobs of this kind run as a
    pipeline, each starting before the finish of the one before it is committed (see above)."""


_AHEAD = 32
"""How many jobs of a repeatable kind a slot takes ahead of the one it runs (:meth:`Store.take_ahead`)."""
_TAKE_AGAIN = 8
"""Once this few jobs taken ahead are left, the slot takes the next ones while its jobs run."""
_UNCOMMITTED = 32
"""A slot waits for its oldest finish handed to the store (:meth:`Store.finish_soon`) past this many."""
_DEFER_AT_MOST = 0.005
"""How long a backlog's next job waits for the webhooks being received (:mod:`~amoconnect.precedence`)."""
_FLUSH_EVERY = 64
_UNFLUSHED = 256
"""A slot flushes (:meth:`Store.flush`) every this many finishes that did not wait for the disk, and
waits for that flush past ``_UNFLUSHED``: what a power cut may make run again."""
_FLUSH_LINGER = 1.0
"""The flush that ends a run first waits this long for a durable commit of another write (a webhook's
enqueue) to put the run's finishes on disk: while messages come at least once a second one does, and a
message then costs one fsync instead of two (PostgreSQL's asynchronous commit leaves up to 0.6 s of
commits off the disk the same way). Its slot is the claims' meanwhile; a stop waits for it and flushes
at once (no webhook comes any more)."""


@dataclass
class _Accepted:
    """A finish handed to the store, its commit not seen yet."""

    job: Job
    done: Done
    committed: asyncio.Future[None]
    bound: structlog.typing.FilteringBoundLogger


@dataclass
class _Run:
    """A slot's run through one conversation's jobs."""

    held: deque[Job] = field(default_factory=deque)
    """Jobs taken ahead (:meth:`Store.take_ahead`), not started yet."""
    committing: deque[_Accepted] = field(default_factory=deque)
    unflushed: int = 0
    """Finishes committed that may not be on disk yet."""
    flushing: anyio.Event | None = None
    """Set when the flush under way ends."""
    last: Job | None = None
    """The latest job whose finish is counted in ``unflushed``."""
    behind: bool = False
    """The conversation has jobs queued behind the one running: a finish took the next one, or jobs are
    held. Only then does the run take jobs ahead; a lone message costs no look for more."""
    taking: anyio.Event | None = None
    """Set when the take ahead under way, started while a job ran, has added its jobs to ``held``."""
    more: bool = True
    """No take ahead since the latest finish that took the conversation's next job came back short: the
    conversation may have more to take (after one that did, the finish of the last job held looks)."""
    background: anyio.abc.TaskGroup | None = None
    """Where the run's flushes and takes ahead go on while its jobs run: open once the run is past its
    first job (a lone job starts nothing in the background, and costs no task group)."""


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
    arrivals: Arrivals | None = None
    """The webhooks being received: a backlog's next job waits for them (:mod:`~amoconnect.precedence`)."""
    _running: set[int] = field(default_factory=set, init=False)
    _slot_free: anyio.Event = field(default_factory=anyio.Event, init=False)
    _dispatching: anyio.CancelScope | None = field(default=None, init=False)
    _stopped: anyio.Event = field(default_factory=anyio.Event, init=False)
    _jobs: anyio.abc.TaskGroup | None = field(default=None, init=False)
    """Where jobs run while the relay takes new ones (None once it stops taking)."""
    _offered: int = field(default=0, init=False)
    """Slots reserved for jobs the store is handing over (:meth:`offer`)."""
    _flushing: int = field(default=0, init=False)
    """Runs whose jobs are done, putting their finishes on disk (a stop waits for them too)."""
    _log: structlog.typing.FilteringBoundLogger = field(default=log, init=False)
    """``log`` as configured when :meth:`run` started: each job's logger binds its fields to it."""
    _finished: dict[str, tuple[Value, Observed]] = field(default_factory=dict, init=False)
    """The succeeded count and relay latency of each kind."""

    def backoff_delay(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: exponential with jitter, capped."""
        ceiling = min(self.max_backoff, self.backoff * (2 ** (attempts - 1)))
        return random.uniform(ceiling / 2, ceiling)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work the queue until :meth:`stop` drains it, or until cancelled (in-flight jobs then stop
        at once, left to the store: they run again)."""
        self._stopped = anyio.Event()
        self._log = log.bind()
        try:
            async with anyio.create_task_group() as jobs:
                self._jobs = jobs
                self.store.hand_off_to(self)
                with anyio.CancelScope() as self._dispatching:
                    task_status.started()
                    await self._dispatch(jobs)
                self._taking_no_more()
                await self._drain()
                jobs.cancel_scope.cancel()
        finally:
            self._taking_no_more()
            self._dispatching = None
            self._stopped.set()

    def _taking_no_more(self) -> None:
        self._jobs = None
        self.store.hand_off_to(None)

    def offer(self) -> bool:
        """A slot for a job the store hands over at its enqueue (:meth:`Store.hand_off_to`), while one is
        free: the job runs without a claim."""
        if self._jobs is None or len(self._running) + self._offered >= self.concurrency:
            return False
        self._offered += 1
        return True

    def handed(self, job: Job | None) -> None:
        """Run the job handed over in its reserved slot (``None``: the slot is free again)."""
        self._offered -= 1
        if job is None:
            return
        if self._jobs is None:  # stopped meanwhile: the store queues it again
            self.store.abandon(job.id)
            return
        self._running.add(job.id)
        self._jobs.start_soon(self._work, job)

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
        free = self.concurrency - len(self._running) - self._offered
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
            await self._defer()  # a backlog: more is due at once
            return 0.0
        due = await self.store.next_due_in()
        return _IDLE_WAIT if due is None else min(due, _IDLE_WAIT)

    async def _defer(self) -> None:
        """Let the webhooks being received go first: a backlog's next step waits for their acks, briefly."""
        if self.arrivals is not None:
            await self.arrivals.settled(_DEFER_AT_MOST)

    async def _drain(self) -> None:
        if not self._running and not self._flushing:
            return
        in_flight = len(self._running)
        log.info("draining", in_flight=in_flight, timeout_s=self.shutdown_timeout)
        with anyio.move_on_after(self.shutdown_timeout):
            while self._running or self._flushing:
                self._slot_free = anyio.Event()
                if not self._running:
                    # Only runs' last flushes are left, lingering for another write's fsync: no more come.
                    with contextlib.suppress(StoreError):
                        await self.store.flush()
                await self._slot_free.wait()
        if self._running:
            log.warning("left queued at shutdown", jobs=sorted(self._running))
        else:
            log.info("drained", finished=in_flight)

    async def _work(self, job: Job) -> None:
        """Run ``job`` and then, in the same slot, each next job of its conversation that its finish
        took or that the slot took ahead (a conversation's backlog runs without a claim between its jobs)."""
        run = _Run()
        try:
            current = await self._run_one(job, run)
            if current is not None:
                async with anyio.create_task_group() as run.background:
                    while current is not None:
                        self._running.add(current.id)
                        await self._defer()
                        current = await self._run_one(current, run)
                run.background = None
            if run.unflushed and run.last is not None:  # after the flushes under way: what they did not cover
                # The slot is the claims' again meanwhile (its jobs left _running): the flush may linger.
                self._flushing += 1
                self._slot_free.set()
                try:
                    linger = _FLUSH_LINGER if self._jobs is not None else 0.0  # none while stopping
                    await self._flush(run, run.last, run.unflushed, linger)
                finally:
                    self._flushing -= 1
        finally:
            self._slot_free.set()

    async def _run_one(self, job: Job, run: _Run) -> Job | None:
        """Run one job and record its outcome (or accept it: :meth:`Store.finish_soon`); the next job of
        its conversation to run in this slot, if any."""
        bound = self._log.bind(job=job.id, kind=job.kind, scope_id=job.scope_id, key=job.key, attempt=job.attempts)
        handler = self.handlers.get(job.kind)
        try:
            crash_point("relay.running", job.kind)
            if handler is None:
                await self._catch_up(run)
                await self._bury(job, None, f"no handler for job kind {job.kind!r}", bound)
                await self._give_back(run)
                return None
            try:
                done = await handler.run(job, bound)
            except Exception as exc:
                await self._catch_up(run)
                await self._failed(job, handler, exc, bound)
                await self._give_back(run)
                return None
            if not run.held:
                await self._taken(run)  # what follows may be on its way
            crash_point("relay.done", job.kind)
            if run.committing or run.unflushed:
                # This job ran while an earlier finish of its conversation may not be committed or on disk.
                crash_point("relay.ahead", job.kind)
            # The conversation's next job runs in this slot while the relay dispatches and a slot is free
            # for other work (all slots busy: the slot goes back to the claims, which serve every
            # conversation's head in turn). Jobs already taken ahead run on (at most _AHEAD): giving them
            # back would cost a write each way for nothing.
            dispatching = self._dispatching is not None and not self._dispatching.cancel_called
            taking = dispatching and len(self._running) < self.concurrency
            soon = handler.repeatable and dispatching and not done.then
            if soon and taking and not run.held and run.behind and run.more:
                await self._take_ahead(run, job)
            if soon and run.held:
                await self._accept(job, done, run, bound)
                self._succeeded(job, done)
                upcoming = run.held.popleft()
                if taking and run.more and run.taking is None and len(run.held) < _TAKE_AGAIN:
                    # Take the next ones while the jobs held run: the pipeline never waits for a take.
                    run.taking = anyio.Event()
                    self._background(run).start_soon(self._take_soon, run, run.held[-1] if run.held else upcoming)
                return upcoming
            await self._catch_up(run)
            if not dispatching:
                await self._give_back(run)
            # The finish need not wait for the disk either (the job may run again): the run's flushes put it
            # there, a lone job's by the flush that ends its run, which an enqueue's fsync usually spares.
            lazy = soon and taking
            following = await self._settle(
                job,
                lambda: self.store.finish(
                    job.id,
                    conversations=done.conversations,
                    messages=done.messages,
                    then=done.then,
                    take_next=taking and not run.held,
                    activity=done.activity,
                    durable=not lazy,
                ),
                bound,
            )
            self._succeeded(job, done)
            if lazy:
                self._unflushed(run, job)
            run.behind = following is not None or bool(run.held)  # a backlog: what follows is taken ahead
            if following is not None:
                run.more = True  # the conversation goes on past what was taken ahead
            return run.held.popleft() if run.held else following
        finally:
            self._running.discard(job.id)

    async def _failed(
        self, job: Job, handler: Handler, exc: Exception, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        """Record a job's failure: retried or buried."""
        if isinstance(exc, GiveUp):
            await self._bury(job, handler, str(exc), bound)
        elif isinstance(exc, Retry):
            await self._retry(job, handler, str(exc), exc.delay, bound)
        elif transient(exc):
            await self._retry(job, handler, f"{type(exc).__name__}: {exc}", None, bound)
        else:
            bound.exception("job failed on an unexpected error; not retried", exc_info=exc)
            trace = "".join(traceback.format_exception(exc)).rstrip()
            await self._bury(job, handler, f"unexpected error, not retried: {trace}", bound)

    def _succeeded(self, job: Job, done: Done) -> None:
        finished = self._finished.get(job.kind)
        if finished is None:
            finished = self._finished[job.kind] = (
                self.metrics.jobs_succeeded.labels(job.kind),
                self.metrics.relay_latency.labels(job.kind),
            )
        succeeded, latency = finished
        succeeded.inc()
        latency.observe(max(time.time() - job.created_at, 0.0))
        for follow in done.then:
            self.metrics.jobs_queued.labels(follow.kind).inc()

    async def _take_ahead(self, run: _Run, job: Job) -> None:
        """Hold the jobs that follow ``job`` in its conversation, taken to run next in this slot (none when
        the store cannot say now: the conversation then goes on through finishes and claims)."""
        try:
            taken = await self.store.take_ahead(job, _AHEAD)
        except StoreError as exc:
            log.warning("store unavailable; the conversation's next jobs are not taken ahead", error=str(exc))
            taken = []
        run.held.extend(taken)
        run.more = len(taken) == _AHEAD

    async def _take_soon(self, run: _Run, job: Job) -> None:
        """:meth:`_take_ahead` while the run goes on; ``run.taking`` is set once it is done."""
        try:
            await self._take_ahead(run, job)
        finally:
            taking, run.taking = run.taking, None
            if taking is not None:
                taking.set()

    @staticmethod
    async def _taken(run: _Run) -> None:
        """Wait for the take ahead under way, if any: ``held`` is then complete."""
        if run.taking is not None:
            await run.taking.wait()

    async def _accept(
        self,
        job: Job,
        done: Done,
        run: _Run,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        """Hand ``job``'s finish to the store without waiting for its commit; wait for the oldest finishes
        of the run while too many are not committed, or not on disk."""
        committed = self.store.finish_soon(
            job.id, conversations=done.conversations, messages=done.messages, activity=done.activity
        )
        run.committing.append(_Accepted(job, done, committed, bound))
        while run.committing and (run.committing[0].committed.done() or len(run.committing) > _UNCOMMITTED):
            await self._committed(run.committing.popleft(), run)
        if run.unflushed >= _UNFLUSHED and run.flushing is not None:
            await run.flushing.wait()

    async def _catch_up(self, run: _Run) -> None:
        """Wait until every finish the run handed to the store is committed (the next write of the
        conversation follows them)."""
        while run.committing:
            await self._committed(run.committing.popleft(), run)

    async def _committed(self, accepted: _Accepted, run: _Run) -> None:
        """Wait for an accepted finish's commit; one that failed is recorded again, waiting for it."""
        job, done = accepted.job, accepted.done
        try:
            await accepted.committed
        except StoreError as exc:
            accepted.bound.warning("store unavailable; recording the job's outcome again", error=str(exc))
            await self._settle(
                job,
                lambda: self.store.finish(
                    job.id, conversations=done.conversations, messages=done.messages, activity=done.activity
                ),
                accepted.bound,
            )
            return
        self._unflushed(run, job)

    def _unflushed(self, run: _Run, job: Job) -> None:
        """One more finish of the run is committed and maybe not on disk: flush every ``_FLUSH_EVERY``."""
        run.unflushed += 1
        run.last = job
        if run.unflushed >= _FLUSH_EVERY and run.flushing is None:
            self._start_flush(run, job)

    def _start_flush(self, run: _Run, job: Job) -> None:
        run.flushing = anyio.Event()
        self._background(run).start_soon(self._flush, run, job, run.unflushed)

    @staticmethod
    def _background(run: _Run) -> anyio.abc.TaskGroup:
        """The run's task group (:attr:`_Run.background`): only a job after the run's first one starts work
        in the background (a take ahead needs a backlog, a flush :data:`_FLUSH_EVERY` finishes)."""
        assert run.background is not None, "background work before the run's task group opened"
        return run.background

    async def _flush(self, run: _Run, job: Job, count: int, linger: float = 0.0) -> None:
        """Put the run's finishes on disk (:meth:`Store.flush`)."""
        try:
            flush = functools.partial(self.store.flush, linger=linger)
            await self._settle(job, flush, log.bind(job=job.id, kind=job.kind, key=job.key))
        finally:
            run.unflushed -= count
            flushing, run.flushing = run.flushing, None
            if flushing is not None:
                flushing.set()

    async def _give_back(self, run: _Run) -> None:
        """Return the jobs the run took ahead and did not start to the queue."""
        await self._taken(run)
        held = [j.id for j in run.held]
        run.held.clear()
        if not held:
            return
        try:
            await self.store.release(held)
        except StoreError as exc:
            log.warning("store unavailable; jobs taken ahead are queued again later", error=str(exc), jobs=held)
            for job_id in held:
                self.store.abandon(job_id)

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
        deadline: float | None = None  # from the first failure: a write that succeeds reads no clock
        while True:
            try:
                return await write()
            except StoreError as exc:
                now = anyio.current_time()
                deadline = now + _SETTLE_FOR if deadline is None else deadline
                if now + pause > deadline:
                    bound.error("store unavailable; the job's outcome is not recorded", error=str(exc))
                    self.store.abandon(job.id)
                    return None
                bound.warning("store unavailable; recording the job's outcome again shortly", error=str(exc))
                await anyio.sleep(pause)
                pause = min(pause * 2, _STORE_RETRY * 5)
