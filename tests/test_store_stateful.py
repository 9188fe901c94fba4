"""The queue of every store against a model, by hypothesis: random runs of enqueue, claim, finish,
retry, bury, requeue, purge, abandon, restarts and (PostgreSQL) a process dying while it holds jobs.

The stores are async; the state machine is not: each machine drives its stores on the event loop
of a blocking portal. Time is not slept through. A job is due now (delay 0) or in an hour; rule
``time_passes`` makes every queued job due by moving ``next_run`` back two hours in SQL, and rule
``process_dies`` (PostgreSQL) ends a holder's leases by moving ``lease_until`` into the past, as
if its lease had run out, before another process runs its lease upkeep.

After every step: the counts, the dead letters and the payloads stored match the model (nothing
lost, nothing duplicated, a refused enqueue stored nothing), no key has two running jobs, and the
head records the claims read (``heads``) say what the queue's rows say.
Claims are checked against the model's heads: the earliest job of each key (by enqueue order; a
requeued dead letter keeps its place), due, with no job of its key running.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from heads import assert_heads_match_queue
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from amoconnect.store.base import DeadLetter, NewJob, Store
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.stores import fresh_postgres_schema, sql_session

T = TypeVar("T")

KEYS = ("a", "b")
DEDUP = tuple(f"d{i}" for i in range(5))
LATER = 3600.0
"""A delay that never passes by itself within a run."""

# No shrinking: replaying a run costs milliseconds a step, and shrinking one would outlast the
# test's timeout. A failure prints its whole run; add Phase.shrink (and -o timeout=0) to minimise it.
SETTINGS = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)

delays = st.sampled_from([0.0, 0.0, 0.0, LATER])
new_jobs = st.lists(st.tuples(st.sampled_from(KEYS), delays), max_size=3)


@dataclass
class ModelJob:
    payload: bytes
    key: str
    seq: int
    """Enqueue order: the store's ids grow in the same order."""
    due: bool
    state: str = "queued"
    """``queued``, ``running`` or ``dead``."""
    attempts: int = 0
    holder: int | None = None
    """The store (process) that claimed it."""
    id: int | None = None
    last_error: str | None = None
    abandoned: bool = False
    """Given up by its holder (SQLite: still running until the next claim queues it again)."""


class QueueMachine(RuleBasedStateMachine):
    """The queue of ``processes`` stores on one database (SQLite: one) against a model."""

    portal: ClassVar[BlockingPortal]
    processes: ClassVar[int] = 1

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[bytes, ModelJob] = {}
        self.dedup: set[str] = set()
        self._payloads = itertools.count()
        self.stores = [self.call(self.open_store) for _ in range(self.processes)]
        self._exit = ExitStack()
        self.sql = self._exit.enter_context(sql_session(self.stores[0]))
        """Runs a statement behind the stores' backs."""

    # -- plumbing ------------------------------------------------------------------------
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def run() -> T:
            return await fn(*args, **kwargs)

        return self.portal.call(run)

    async def open_store(self) -> Store:
        raise NotImplementedError

    def teardown(self) -> None:
        self._exit.close()
        for store in self.stores:
            self.call(store.close)

    def new_job(self, key: str, delay: float) -> NewJob:
        seq = next(self._payloads)
        payload = b"p%d" % seq
        self.jobs[payload] = ModelJob(payload, key, seq, due=delay == 0)
        return NewJob("test", key, payload, "scope", delay=delay)

    def add(self, specs: list[tuple[str, float]]) -> list[NewJob]:
        return [self.new_job(key, delay) for key, delay in specs]

    def in_state(self, state: str) -> list[ModelJob]:
        return sorted((j for j in self.jobs.values() if j.state == state), key=lambda j: j.seq)

    def heads(self) -> list[ModelJob]:
        """Each key's earliest queued job, unless a job of the key runs: what a claim may take once due."""
        heads = []
        for key in KEYS:
            queue = [j for j in self.jobs.values() if j.key == key and j.state != "dead"]
            if queue and not any(j.state == "running" for j in queue):
                heads.append(min(queue, key=lambda j: j.seq))
        return heads

    # -- rules -----------------------------------------------------------------------------
    @initialize(specs=st.lists(st.tuples(st.sampled_from(KEYS), delays), min_size=2, max_size=6))
    def some_jobs(self, specs: list[tuple[str, float]]) -> None:
        assert self.call(self.stores[0].enqueue, self.add(specs))

    @rule(specs=new_jobs, dedup=st.lists(st.sampled_from(DEDUP), max_size=2))
    def enqueue(self, specs: list[tuple[str, float]], dedup: list[str]) -> None:
        refused = bool(self.dedup.intersection(dedup))
        before = dict(self.jobs)
        jobs = self.add(specs)
        stored = self.call(self.stores[0].enqueue, jobs, dedup=dedup)
        assert stored is not refused
        if refused:
            self.jobs = before  # the invariants then check that nothing was stored
        else:
            self.dedup.update(dedup)

    @rule(limit=st.integers(1, 4), data=st.data())
    def claim(self, limit: int, data: st.DataObject) -> None:
        process = data.draw(st.integers(0, self.processes - 1), label="process")
        for job in self.in_state("running"):
            if job.abandoned:  # a claim queues the abandoned jobs again before it looks
                job.state, job.holder, job.abandoned = "queued", None, False
        heads = {j.payload: j for j in self.heads() if j.due}
        claimed = self.call(self.stores[process].claim, limit)
        assert len(claimed) == min(limit, len(heads)), (claimed, heads)
        for job in claimed:
            model = heads.pop(job.payload)  # KeyError: not a head, or claimed twice
            model.state, model.holder, model.id = "running", process, job.id
            model.attempts += 1
            assert (job.key, job.attempts, job.last_error) == (model.key, model.attempts, model.last_error)

    def held(self) -> list[ModelJob]:
        return [j for j in self.in_state("running") if not j.abandoned]

    def running(self, data: st.DataObject) -> ModelJob:
        return data.draw(st.sampled_from(self.held()), label="job")

    @precondition(lambda self: self.held())
    @rule(data=st.data(), then=new_jobs, take_next=st.booleans())
    def finish(self, data: st.DataObject, then: list[tuple[str, float]], take_next: bool) -> None:
        job = self.running(data)
        holder = job.holder
        assert holder is not None and job.id is not None
        taken = self.call(self.stores[holder].finish, job.id, then=self.add(then), take_next=take_next)
        del self.jobs[job.payload]
        following = [j for j in self.heads() if j.key == job.key and j.due]
        if not take_next or not following:
            assert taken is None, taken
            return
        (model,) = following
        assert taken is not None and taken.payload == model.payload, (taken, model)
        model.state, model.holder, model.id = "running", holder, taken.id
        model.attempts += 1
        assert (taken.attempts, taken.last_error) == (model.attempts, model.last_error)

    @precondition(lambda self: self.held())
    @rule(data=st.data(), delay=delays)
    def retry(self, data: st.DataObject, delay: float) -> None:
        job = self.running(data)
        assert job.holder is not None and job.id is not None
        error = f"retry {job.attempts}"
        self.call(self.stores[job.holder].retry, job.id, delay=delay, error=error)
        job.state, job.holder, job.due, job.last_error = "queued", None, delay == 0, error

    @precondition(lambda self: self.held())
    @rule(data=st.data(), then=new_jobs)
    def bury(self, data: st.DataObject, then: list[tuple[str, float]]) -> None:
        job = self.running(data)
        assert job.holder is not None and job.id is not None
        error = f"dead after {job.attempts}"
        self.call(self.stores[job.holder].bury, job.id, error=error, then=self.add(then))
        job.state, job.holder, job.last_error = "dead", None, error

    def on_dead(self, data: st.DataObject, operation: Callable[[list[int] | None], Awaitable[int]]) -> list[ModelJob]:
        """Run ``operation`` (requeue, purge) on some dead letters or, with None, all; the jobs it must have hit."""
        dead = self.in_state("dead")
        chosen = data.draw(st.none() | st.lists(st.sampled_from(dead), unique_by=id), label="dead letters")
        jobs: list[ModelJob] = dead if chosen is None else chosen
        ids = None if chosen is None else [j.id for j in jobs if j.id is not None]
        assert self.call(operation, ids) == len(jobs)
        return jobs

    @precondition(lambda self: self.in_state("dead"))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        for job in self.on_dead(data, self.stores[0].requeue):
            job.state, job.attempts, job.due = "queued", 0, True

    @precondition(lambda self: self.in_state("dead"))
    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        for job in self.on_dead(data, self.stores[0].purge):
            del self.jobs[job.payload]

    @precondition(lambda self: self.held())
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        """The holder cannot record a job's outcome and gives it up (the store was unavailable)."""
        job = self.running(data)
        assert job.holder is not None
        self.stores[job.holder].abandon(job.id or 0)
        job.abandoned = True
        self.abandoned(job)

    def abandoned(self, job: ModelJob) -> None:
        """What the engine does next with an abandoned job (SQLite: the next claim queues it again)."""

    @rule()
    def time_passes(self) -> None:
        """Two hours go by for the queue: every queued job is due."""
        self.sql(f"UPDATE queue SET next_run = next_run - {2 * LATER} WHERE state = 'queued'")
        for job in self.in_state("queued"):
            job.due = True

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        """A process stops cleanly (or crashes: SQLite) and starts again: what it held runs again."""
        process = data.draw(st.integers(0, self.processes - 1), label="process")
        self.call(self.stores[process].close)
        self.stores[process] = self.call(self.open_store)
        self.release(process)

    def release(self, process: int) -> None:
        for job in self.in_state("running"):
            if job.holder == process:
                job.state, job.holder, job.abandoned = "queued", None, False

    # -- invariants ------------------------------------------------------------------------
    async def observe(self) -> tuple[dict[str, int], list[DeadLetter], float | None]:
        """What the store's own API says, in one trip to the event loop."""
        store = self.stores[0]
        return await store.counts(), await store.dead_letters(1000), await store.next_due_in()

    @invariant()
    def the_store_matches_the_model(self) -> None:
        counts, dead, due_in = self.call(self.observe)
        assert counts == {state: len(self.in_state(state)) for state in ("queued", "running", "dead")}
        assert [(d.payload, d.key, d.error) for d in dead] == [
            (j.payload, j.key, j.last_error) for j in self.in_state("dead")
        ]
        waiting = self.heads()
        if not waiting:
            assert due_in is None
        elif any(j.due for j in waiting):
            assert due_in == 0.0
        else:
            assert due_in is not None and due_in > LATER / 2

    @invariant()
    def every_job_is_stored_once_as_the_model_says(self) -> None:
        rows = self.sql("SELECT payload, state FROM queue UNION ALL SELECT payload, 'dead' FROM dead")
        stored = sorted((bytes(payload), state) for payload, state in rows)
        assert stored == sorted((j.payload, j.state) for j in self.jobs.values())
        running = [self.jobs[payload].key for payload, state in stored if state == "running"]
        assert len(running) == len(set(running)), "a key has two running jobs"

    @invariant()
    def the_head_records_match_the_queue(self) -> None:
        """Each key with jobs has one head record: its earliest job, that job's due time, whether one of it runs."""
        assert_heads_match_queue(self.sql)


class SQLiteQueue(QueueMachine):
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="amoconnect-stateful-"))
        super().__init__()

    async def open_store(self) -> Store:
        store = SQLiteStore(self.workdir / "store.sqlite3", synchronous="NORMAL")
        await store.open()
        return store

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.workdir, ignore_errors=True)


class PostgresQueue(QueueMachine):
    """Two processes on one schema; a long lease, so that only ``process_dies`` ends one."""

    server: ClassVar[str]
    processes = 2

    def __init__(self) -> None:
        self.url = fresh_postgres_schema(self.server)
        super().__init__()

    async def open_store(self) -> Store:
        from amoconnect.store.postgres import PostgresStore

        store = PostgresStore(self.url, pool_size=2, lease=LATER)
        await store.open()
        return store

    @precondition(lambda self: self.in_state("running"))
    @rule(data=st.data())
    def process_dies(self, data: st.DataObject) -> None:
        """A holder dies without a word; once its lease has run out, another process takes its jobs back."""
        from amoconnect.store.postgres import PostgresStore

        holder = data.draw(st.sampled_from(sorted({j.holder for j in self.in_state("running")})), label="holder")
        dead, other = self.stores[holder], self.stores[1 - holder]
        assert isinstance(dead, PostgresStore) and isinstance(other, PostgresStore)
        assert self.call(other.release_expired) == 0  # live leases are kept
        self.sql(f"UPDATE queue SET lease_until = 0 WHERE owner = '{dead.owner}'")
        held = [j for j in self.in_state("running") if j.holder == holder]
        assert self.call(other.release_expired) == len(held)
        self.release(holder)
        self.stores[holder] = self.call(self.open_store)  # it restarts under a new name
        self.call(dead.close)

    def abandoned(self, job: ModelJob) -> None:
        """Its lease is no longer extended; once it runs out, any process queues the job again."""
        from amoconnect.store.postgres import PostgresStore

        self.sql(f"UPDATE queue SET lease_until = 0 WHERE id = {job.id}")
        other = self.stores[1 - (job.holder or 0)]
        assert isinstance(other, PostgresStore)
        assert self.call(other.release_expired) == 1
        job.state, job.holder, job.abandoned = "queued", None, False


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


def test_sqlite_queue_follows_the_model(portal: BlockingPortal) -> None:
    SQLiteQueue.portal = portal
    run_state_machine_as_test(SQLiteQueue, settings=SETTINGS)


def test_postgres_queue_follows_the_model(portal: BlockingPortal, postgres: str) -> None:
    PostgresQueue.portal, PostgresQueue.server = portal, postgres
    # Fewer runs: each step is a few round trips to the server.
    run_state_machine_as_test(PostgresQueue, settings=settings(SETTINGS, max_examples=15))
