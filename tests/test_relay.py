"""The relay on its own: a store that cannot serve for a while does not end it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
import structlog
from rig import eventually

from amoconnect import relay as relay_module
from amoconnect.clock import SteadyClock
from amoconnect.errors import AmojoError, MessengerError, StoreError
from amoconnect.precedence import Arrivals
from amoconnect.relay import Done, Handler, Relay, Retry, transient
from amoconnect.store.base import Job, MessageRecord, NewJob, Store
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.stores import counts_are, table_rows

pytestmark = pytest.mark.anyio


class Unavailable(SQLiteStore):
    """A store whose first ``outage`` claims fail, as during a database restart or failover."""

    outage = 2

    async def claim(self, limit: int) -> list[Job]:
        if self.outage:
            self.outage -= 1
            raise StoreError("PostgreSQL store: claim failed: the database system is starting up")
        return await super().claim(limit)


async def test_the_relay_outlives_a_store_outage(tmp_path: Path) -> None:
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    async with Unavailable(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        await store.enqueue([NewJob("test", "k", b"after the outage")])
        relay = Relay(store, {"test": Handler(run)})
        await tg.start(relay.run)
        await eventually(lambda: ran, within=10)
        tg.cancel_scope.cancel()
    assert store.outage == 0 and ran == [b"after the outage"]


class FinishFails(SQLiteStore):
    """A store whose first ``outage`` finishes fail: the job ran, its outcome cannot be written yet."""

    outage = 2

    async def finish(self, job_id: int, **records: object) -> Job | None:  # type: ignore[override]
        if self.outage:
            self.outage -= 1
            raise StoreError("PostgreSQL store: finish failed: connection lost")
        return await super().finish(job_id, **records)  # type: ignore[arg-type]


async def test_a_finished_job_records_its_outcome_once_the_store_is_back(tmp_path: Path) -> None:
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done(then=[NewJob("test", "k", b"follow-up")] if job.payload == b"first" else ())

    async with FinishFails(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        await store.enqueue([NewJob("test", "k", b"first")])
        relay = Relay(store, {"test": Handler(run)})
        await tg.start(relay.run)
        await eventually(lambda: len(ran) == 2, within=10)
        # The follow-up ran; its own finish commits just after.
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    # The job ran once: its outcome waited for the store instead of running the work again.
    assert store.outage == 0 and ran == [b"first", b"follow-up"]


def fail_finishes(store: Store, outage: int) -> None:
    """The store's next ``outage`` finishes fail, as while the database is unreachable."""
    finish = store.finish

    async def failing(job_id: int, **records: object) -> None:
        nonlocal outage
        if outage:
            outage -= 1
            raise StoreError("PostgreSQL store: finish failed: connection lost")
        await finish(job_id, **records)  # type: ignore[arg-type]

    store.finish = failing  # type: ignore[method-assign]


async def test_a_job_whose_outcome_cannot_be_recorded_is_abandoned_then_runs_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the relay gives up recording an outcome, the store queues the job again once it serves:
    SQLite with its next claim, PostgreSQL once the job's lease runs out (the heartbeat left it)."""
    monkeypatch.setattr(relay_module, "_SETTLE_FOR", 0.1)
    fail_finishes(store, outage=1)
    abandoned: list[int] = []
    abandon = store.abandon

    def recording(job_id: int) -> None:
        abandoned.append(job_id)
        abandon(job_id)

    monkeypatch.setattr(store, "abandon", recording)
    attempts: list[int] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        attempts.append(job.attempts)
        return Done()

    await store.enqueue([NewJob("test", "k", b"x")])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}).run)
        await eventually(lambda: len(attempts) == 2, within=15)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert len(abandoned) == 1
    assert attempts == [1, 2]  # the first run's outcome was lost: it ran again, at least once


async def test_an_unexpected_local_error_is_a_dead_letter_at_once_with_its_traceback(store: Store) -> None:
    """A bug (here an invalid URL built from a remote's answer) fails its job once, visibly, and
    the conversation's next job runs at once instead of waiting behind ten attempts."""
    ran: list[tuple[bytes, int]] = []

    async def send_to_link_from_answer(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append((job.payload, job.attempts))
        if job.payload == b"bad":
            async with httpx.AsyncClient() as client:
                await client.get("http://chat.example:not-a-port/photo")
        return Done()

    await store.enqueue([NewJob("test", "k", b"bad"), NewJob("test", "k", b"next")])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(send_to_link_from_answer)}, backoff=30.0).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=1), within=10)
        tg.cancel_scope.cancel()
    assert ran == [(b"bad", 1), (b"next", 1)]
    (dead,) = await store.dead_letters()
    assert dead.attempts == 1 and dead.payload == b"bad"
    assert dead.error.startswith("unexpected error, not retried: Traceback")
    assert "in send_to_link_from_answer" in dead.error and "httpx.InvalidURL: Invalid port" in dead.error


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        StoreError("PostgreSQL store: read failed: connection lost"),
        ConnectionResetError("reset by peer"),
        MessengerError("the messenger is down", retryable=True),
        AmojoError("amojo answered HTTP 503", status=503),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_a_network_store_or_retryable_remote_error_is_retried(store: Store, error: Exception) -> None:
    attempts: list[int] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        attempts.append(job.attempts)
        if len(attempts) == 1:
            raise error
        return Done()

    await store.enqueue([NewJob("test", "k", b"x")])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}, backoff=0.01).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert attempts == [1, 2]


@pytest.mark.parametrize(
    "error",
    [
        KeyError("chat"),
        httpx.InvalidURL("Invalid port"),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
        MessengerError("chat not found", retryable=False),
        AmojoError("amojo answered HTTP 400", status=400),
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_is_transient(error: Exception) -> None:
    assert not transient(error)


async def test_stop_lets_the_jobs_in_flight_finish_and_claims_no_more(store: Store) -> None:
    started: list[bytes] = []
    release = anyio.Event()

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        started.append(job.payload)
        await release.wait()
        return Done()

    await store.enqueue([NewJob("test", f"k{i}", b"%d" % i) for i in range(5)])
    relay = Relay(store, {"test": Handler(run)}, concurrency=2, shutdown_timeout=30.0)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        await eventually(lambda: len(started) == 2)
        async with anyio.create_task_group() as stopping:
            stopping.start_soon(relay.stop)
            await anyio.sleep(0.2)
            assert len(started) == 2, "no job is claimed once stopping"
            release.set()  # the two in flight finish within shutdown_timeout
    assert started == [b"0", b"1"]
    assert await store.counts() == {"queued": 3, "running": 0, "dead": 0}


async def test_stop_cancels_what_outlives_shutdown_timeout_and_leaves_it_to_the_store(tmp_path: Path) -> None:
    attempts: list[int] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        attempts.append(job.attempts)
        if len(attempts) == 1:
            await anyio.sleep_forever()
        return Done()

    path = tmp_path / "store.sqlite3"
    async with SQLiteStore(path) as store:
        await store.enqueue([NewJob("test", "k", b"x")])
        relay = Relay(store, {"test": Handler(run)}, shutdown_timeout=0.1)
        async with anyio.create_task_group() as tg:
            await tg.start(relay.run)
            await eventually(lambda: attempts)
            await relay.stop()
        assert await store.counts() == {"queued": 0, "running": 1, "dead": 0}
    # The next start queues it again and it runs.
    async with SQLiteStore(path) as store, anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0))
        tg.cancel_scope.cancel()
    assert attempts == [1, 2]


@pytest.mark.parametrize("step", [-600.0, -3600.0])
async def test_a_backward_step_of_the_wall_clock_does_not_stall_a_retry(
    store: Store, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """The process's wall clock steps back (NTP, an operator): a retry still runs after the backoff it
    asked for, not after the step too (SQLite's times are a steady clock's, PostgreSQL's the database's)."""
    attempts: list[int] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        attempts.append(job.attempts)
        if len(attempts) == 1:
            raise Retry("not yet", delay=0.3)
        return Done()

    await store.enqueue([NewJob("test", "k", b"x")])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}).run)
        await eventually(lambda: counts_are(store, queued=1, running=0))  # the retry is scheduled
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() + step)
        await eventually(lambda: len(attempts) == 2, within=5)
        tg.cancel_scope.cancel()


def test_a_steady_clock_keeps_time_through_wall_clock_steps() -> None:
    wall, monotonic = [1_000_000.0], [50.0]
    clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    assert clock() == 1_000_000.0
    wall[0] -= 600  # stepped back
    monotonic[0] += 2
    assert clock() == 1_000_002.0
    wall[0] += 3600  # and forward
    monotonic[0] += 1
    assert clock() == 1_000_003.0


def counting_claims(store: Store) -> list[int]:
    """The ids of the jobs the claims of ``store`` take from now on."""
    claimed: list[int] = []
    claim = store.claim

    async def counted(limit: int) -> list[Job]:
        jobs = await claim(limit)
        claimed.extend(job.id for job in jobs)
        return jobs

    store.claim = counted  # type: ignore[method-assign]
    return claimed


async def test_a_conversation_s_backlog_runs_in_order_without_a_claim_between_its_jobs(store: Store) -> None:
    """Each finish takes the conversation's next job in its own transaction: claims stay few
    however long the backlog, and stopping ends the chain after the job in flight."""
    ran: list[bytes] = []
    claimed = counting_claims(store)
    release = anyio.Event()

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        if job.payload == b"20":
            await release.wait()
        return Done()

    await store.enqueue([NewJob("test", "chat", b"%d" % i) for i in range(30)])
    relay = Relay(store, {"test": Handler(run)}, shutdown_timeout=30.0)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        await eventually(lambda: len(ran) == 21)
        async with anyio.create_task_group() as stopping:
            stopping.start_soon(relay.stop)
            await anyio.sleep(0.1)
            release.set()
    assert ran == [b"%d" % i for i in range(21)]
    assert len(claimed) == 1
    assert await store.counts() == {"queued": 9, "running": 0, "dead": 0}


async def test_a_finish_that_takes_the_next_job_wakes_no_worker_to_claim(store: Store) -> None:
    """A conversation's backlog drains without a claim (and a look for the next due job) after each
    job: its finishes make nothing new claimable, nor does the last one, which leaves the conversation
    empty. A finish that leaves a job the claims must take (a slot was not free) wakes the workers."""
    looks: list[str] = []
    claim, next_due_in = store.claim, store.next_due_in

    async def counted_claim(limit: int) -> list[Job]:
        looks.append("claim")
        return await claim(limit)

    async def counted_next_due_in() -> float | None:
        looks.append("next_due_in")
        return await next_due_in()

    store.claim = counted_claim  # type: ignore[method-assign]
    store.next_due_in = counted_next_due_in  # type: ignore[method-assign]

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        return Done()

    await store.enqueue([NewJob("test", "chat", b"%d" % i) for i in range(30)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0))
        settled = len(looks)
        await anyio.sleep(0.3)
        assert len(looks) == settled, looks  # the last finish woke nobody
        tg.cancel_scope.cancel()
    # The first claim and those of the wakes at the start (the enqueue; PostgreSQL's listener
    # connecting): a few, not one a job.
    assert looks.count("claim") <= 4, looks
    assert looks.count("next_due_in") <= 4, looks


@pytest.mark.parametrize(("concurrency", "claims"), [(1, 10), (3, 2)])
async def test_a_finish_takes_the_next_job_only_while_a_slot_is_free_for_other_work(
    store: Store, concurrency: int, claims: int
) -> None:
    """With every slot busy, a finished job's slot goes back to the claims (each conversation's
    head in turn, as before), so conversations with backlogs cannot hold every slot for good."""
    claimed: list[int] = []
    claim = store.claim

    async def counted(limit: int) -> list[Job]:
        jobs = await claim(limit)
        claimed.extend(job.id for job in jobs)
        return jobs

    store.claim = counted  # type: ignore[method-assign]

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        return Done()

    await store.enqueue([NewJob("test", key, b"%d" % i) for i in range(5) for key in ("a", "b")])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"test": Handler(run)}, concurrency=concurrency).run)
        await eventually(lambda: counts_are(store, queued=0, running=0))
        tg.cancel_scope.cancel()
    assert len(claimed) == claims


async def test_a_repeatable_kind_sends_the_next_job_before_the_previous_finish_commits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a finish took the conversation's next job (a backlog), a repeatable job's finish is handed
    to the store without waiting (:meth:`Store.finish_soon`): the next job, taken ahead, runs at once
    and reads what the previous one wrote; a finish with follow-ups, the last job taken, and every job
    of a kind that is not repeatable wait for their commit."""
    events: list[tuple[str, bytes]] = []
    finish_soon = store.finish_soon
    payload_of: dict[int, bytes] = {}

    def recording(job_id: int, **records: object) -> object:
        events.append(("accepted", payload_of[job_id]))
        committed = finish_soon(job_id, **records)  # type: ignore[arg-type]
        committed.add_done_callback(lambda _: events.append(("committed", payload_of[job_id])))
        return committed

    monkeypatch.setattr(store, "finish_soon", recording)

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        payload_of[job.id] = job.payload
        events.append(("run", job.payload))
        if job.kind == "repeatable" and job.payload != b"1":
            previous = await store.message("scope", f"m{int(job.payload) - 1}")
            assert previous is not None, "the previous job's record is seen before its commit"
        record = MessageRecord("scope", f"m{job.payload.decode()}", "conv", "in", amocrm_id=f"amo-{job.payload}")
        follow = [NewJob("plain", "p", b"follow-up")] if job.payload == b"3" else []
        return Done(messages=[record], then=follow)

    await store.enqueue([NewJob("repeatable", "k", str(i).encode()) for i in range(1, 7)])
    handlers = {"repeatable": Handler(run, repeatable=True), "plain": Handler(run)}
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, handlers).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    runs = [payload for kind, payload in events if kind == "run"]
    assert [r for r in runs if r != b"follow-up"] == [b"1", b"2", b"3", b"4", b"5", b"6"] and b"follow-up" in runs
    # Job 1's finish took job 2 (one look for a backlog); job 3 ran before job 2's finish was
    # committed, job 5 before job 4's.
    assert events.index(("run", b"3")) < events.index(("committed", b"2"))
    assert events.index(("run", b"5")) < events.index(("committed", b"4"))
    accepted = [payload for kind, payload in events if kind == "accepted"]
    # Job 3 enqueued a follow-up: its finish waited for its commit, after 2's; job 6 was the last one
    # taken: it finished like any job, with its conversation's next (none) taken in the finish.
    assert accepted == [b"2", b"4", b"5"]
    assert events.index(("committed", b"2")) < events.index(("run", b"4"))
    assert await store.message("scope", "m6") is not None


async def test_a_failed_job_stops_the_jobs_taken_ahead_of_it_until_it_is_retried(store: Store) -> None:
    """Job 2 fails its first attempt (amojo answered 5xx or 429, or timed out): the jobs taken ahead
    behind it are given back and wait, without an attempt counted, until job 2 passes."""
    ran: list[tuple[bytes, int]] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append((job.payload, job.attempts))
        if job.payload == b"2" and job.attempts == 1:
            raise Retry("amojo answered 503", delay=0.05)
        return Done()

    await store.enqueue([NewJob("repeatable", "k", str(i).encode()) for i in range(1, 6)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert ran == [(b"1", 1), (b"2", 1), (b"2", 2), (b"3", 1), (b"4", 1), (b"5", 1)]


def taking_ahead(
    store: Store, monkeypatch: pytest.MonkeyPatch, *, pause: float = 0.0
) -> tuple[list[tuple[bytes, bytes | None]], dict[str, bytes | None]]:
    """Four jobs taken ahead at a time, the next ones once two are left; each take recorded with the job
    running at its start (``in_flight["job"]``, which the test's handler sets), answered ``pause`` seconds
    after the store took the jobs."""
    monkeypatch.setattr(relay_module, "_AHEAD", 4)
    monkeypatch.setattr(relay_module, "_TAKE_AGAIN", 2)
    take_ahead = store.take_ahead
    takes: list[tuple[bytes, bytes | None]] = []
    in_flight: dict[str, bytes | None] = {"job": None}

    async def recording(job: Job, limit: int) -> list[Job]:
        takes.append((job.payload, in_flight["job"]))
        taken = await take_ahead(job, limit)
        await anyio.sleep(pause)  # the jobs are the relay's, their answer on its way
        return taken

    monkeypatch.setattr(store, "take_ahead", recording)
    return takes, in_flight


async def test_a_backlog_takes_its_next_jobs_while_the_jobs_taken_before_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A draining backlog never waits for a take ahead: once few jobs taken ahead are left, the next ones
    are taken while those run (the send to amojo is in flight), after the last one taken."""
    takes, in_flight = taking_ahead(store, monkeypatch)
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        in_flight["job"] = job.payload
        ran.append(job.payload)
        await anyio.sleep(0.005)  # amojo answers
        in_flight["job"] = None
        return Done()

    await store.enqueue([NewJob("repeatable", "k", b"%d" % i) for i in range(1, 21)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert ran == [b"%d" % i for i in range(1, 21)]
    # Job 1's finish took job 2; job 2 took 3–6 with nothing in flight; from then on each take starts
    # after the last job taken, while a job taken before it runs.
    assert takes[0] == (b"2", None)
    assert [after for after, _ in takes[1:]] == [b"6", b"10", b"14", b"18"]
    assert all(running is not None for _, running in takes[1:])


async def test_a_job_that_fails_while_the_next_jobs_are_being_taken_gives_them_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The take under way when a job fails ends first; everything it took goes back to the queue with
    the jobs held, so none is stranded running and the failed job's retry runs before them."""
    takes, in_flight = taking_ahead(store, monkeypatch, pause=0.05)
    ran: list[tuple[bytes, int]] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append((job.payload, job.attempts))
        in_flight["job"] = job.payload
        try:
            await anyio.sleep(0.005)  # amojo answers
            if job.payload == b"5" and job.attempts == 1:
                raise Retry("amojo answered 503", delay=0.1)  # while 7–10 are being taken
            return Done()
        finally:
            in_flight["job"] = None

    await store.enqueue([NewJob("repeatable", "k", b"%d" % i) for i in range(1, 13)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert (b"6", b"5") in takes
    assert ran == [(b"%d" % i, 1) for i in range(1, 6)] + [(b"5", 2)] + [(b"%d" % i, 1) for i in range(6, 13)]


async def test_a_finish_accepted_and_not_committed_is_recorded_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store could not commit a finish it accepted (the database went away): the relay records it
    again, waiting for the store, and the conversation goes on in order, each job run once."""
    finish_soon = store.finish_soon
    failed: list[int] = []

    def failing(job_id: int, **records: object) -> object:
        if failed:
            return finish_soon(job_id, **records)  # type: ignore[arg-type]
        failed.append(job_id)  # the first one never reaches the database
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lost.set_exception(StoreError("PostgreSQL store: finish failed: connection lost"))
        return lost

    monkeypatch.setattr(store, "finish_soon", failing)
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    await store.enqueue([NewJob("repeatable", "k", str(i).encode()) for i in range(1, 5)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert failed and ran == [b"1", b"2", b"3", b"4"]


async def test_a_lone_message_of_a_repeatable_kind_looks_for_no_jobs_to_take_ahead(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking ahead costs a write: a conversation with one job (everyday traffic) does without it.
    Its finish does not wait for the disk: the flush that ends its run waits a moment for another
    write's durable commit to put it there (an fsync a message instead of two). A backlog starts
    taking ahead once a finish took the conversation's next job."""
    take_ahead, finish, flush = store.take_ahead, store.finish, store.flush
    looked: list[bytes] = []
    durable: list[object] = []
    lingers: list[float] = []

    async def recording(job_id: int, **records: object) -> Job | None:
        durable.append(records.get("durable", True))
        return await finish(job_id, **records)  # type: ignore[arg-type]

    async def flushing(*, linger: float = 0.0) -> None:
        lingers.append(linger)
        await flush(linger=linger)

    monkeypatch.setattr(store, "finish", recording)
    monkeypatch.setattr(store, "flush", flushing)

    async def counting(job: Job, limit: int) -> list[Job]:
        looked.append(job.payload)
        return await take_ahead(job, limit)

    monkeypatch.setattr(store, "take_ahead", counting)

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        return Done()

    await store.enqueue([NewJob("repeatable", f"k{i}", b"alone") for i in range(3)])
    async with anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        await eventually(lambda: len(lingers) == 3)
        assert looked == [] and durable == [False, False, False] and lingers == [relay_module._FLUSH_LINGER] * 3
        await store.enqueue([NewJob("repeatable", "backlog", str(i).encode()) for i in range(1, 5)])
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()
    assert looked[:1] == [b"2"]  # job 1's finish took job 2; job 2 took 3 and 4 ahead


def deferring(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Arrivals, list[bytes], Callable[[Job, structlog.typing.FilteringBoundLogger], Awaitable[Done]]]:
    """Webhooks being received hold a backlog for as long as they last; a handler that records what ran."""
    monkeypatch.setattr(relay_module, "_DEFER_AT_MOST", 60.0)
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    return Arrivals(), ran, run


async def test_a_backlog_s_next_job_waits_for_the_webhooks_being_received(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks go first: while a webhook is being received, neither a conversation's next job nor the
    next claim of a backlog of many conversations starts; once it is answered they go on. A lone
    job (no backlog) starts at once."""
    arrivals, ran, run = deferring(monkeypatch)
    relay = Relay(store, {"test": Handler(run), "repeatable": Handler(run, repeatable=True)}, arrivals=arrivals)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        with arrivals.arriving():
            await store.enqueue([NewJob("test", "lone", b"lone")])
            await eventually(lambda: ran == [b"lone"])
            await store.enqueue(
                [NewJob(kind, kind, b"%s %d" % (kind.encode(), i)) for kind in ("test", "repeatable") for i in range(3)]
            )
            await eventually(lambda: len(ran) == 3)
            await anyio.sleep(0.2)
            assert sorted(ran[1:]) == [b"repeatable 0", b"test 0"]  # each conversation's first, no more
        await eventually(lambda: len(ran) == 7)
        tg.cancel_scope.cancel()
    assert [p for p in ran if p.startswith(b"test")] == [b"test 0", b"test 1", b"test 2"]


async def test_a_full_claim_waits_for_the_webhooks_being_received(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that took as many jobs as it asked for (a backlog of many conversations) lets the
    webhooks being received go first before it claims again."""
    arrivals, ran, run = deferring(monkeypatch)
    await store.enqueue([NewJob("test", f"k{i}", b"%d" % i) for i in range(6)])
    relay = Relay(store, {"test": Handler(run)}, arrivals=arrivals, concurrency=2)
    async with anyio.create_task_group() as tg:
        with arrivals.arriving():
            await tg.start(relay.run)
            await eventually(lambda: len(ran) == 2)
            await anyio.sleep(0.2)
            assert len(ran) == 2
        await eventually(lambda: len(ran) == 6)
        tg.cancel_scope.cancel()


async def test_arrivals_settle_when_the_last_webhook_is_answered_or_after_the_bound() -> None:
    arrivals = Arrivals()
    with anyio.fail_after(5):
        await arrivals.settled(60.0)  # none arriving: at once
    settled = anyio.Event()

    async def wait() -> None:
        await arrivals.settled(60.0)
        settled.set()

    async with anyio.create_task_group() as tg:
        with arrivals.arriving():
            with arrivals.arriving():
                tg.start_soon(wait)
                await anyio.sleep(0.05)
            await anyio.sleep(0.05)
            assert not settled.is_set() and arrivals.count == 1
        with anyio.fail_after(5):
            await settled.wait()
    with arrivals.arriving():
        with anyio.fail_after(5):
            await arrivals.settled(0.01)  # bounded: a steady stream of webhooks slows a backlog, never stops it


async def test_a_job_enqueued_while_a_slot_is_free_runs_without_a_claim(tmp_path: Path) -> None:
    """SQLite hands a job that is claimable at its enqueue straight to the relay in the enqueue's
    transaction (marked running, its attempt counted): no claim, no wake. A job of a busy
    conversation, or one behind jobs due before it, is left to the claims, in their order."""
    ran: list[tuple[bytes, int]] = []
    release = anyio.Event()

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append((job.payload, job.attempts))
        if job.payload == b"slow":
            await release.wait()
        return Done()

    async with SQLiteStore(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        claims = counting_claims(store)
        await tg.start(Relay(store, {"test": Handler(run)}).run)
        await store.enqueue([NewJob("test", "a", b"slow")])
        await eventually(lambda: len(ran) == 1)
        assert claims == [] and ran == [(b"slow", 1)]
        assert await store.counts() == {"queued": 0, "running": 1, "dead": 0}
        await store.enqueue([NewJob("test", "a", b"behind slow")])  # its conversation is busy
        await store.enqueue([NewJob("test", "b", b"other")])
        await eventually(lambda: len(ran) == 2)
        assert ran[1] == (b"other", 1) and claims == []
        release.set()
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0))
        assert [payload for payload, _ in ran] == [b"slow", b"other", b"behind slow"]
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("messages", "apart"), [(40, 0.004), (8, 0.2)])
async def test_lone_messages_arriving_steadily_cost_one_fsync_each(tmp_path: Path, messages: int, apart: float) -> None:
    """Everyday traffic: lone messages of many conversations, hundreds a second or a few. Each one's
    enqueue is fsync'd (its webhook's ack waits for it); its finish is not, and the flush that ends its
    run is spared by the next enqueue's fsync: the store's own flushes are only the last one's."""
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    async with SQLiteStore(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        await tg.start(Relay(store, {"repeatable": Handler(run, repeatable=True)}).run)
        for i in range(messages):
            await store.enqueue([NewJob("repeatable", f"conversation-{i}", str(i).encode())])
            await anyio.sleep(apart)
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0))
        # The last run's flush lingers, then syncs itself.
        await eventually(lambda: store._disk.synced == store._disk.unsynced, within=relay_module._FLUSH_LINGER * 5)
        assert len(ran) == messages
        assert store._flushes <= 3  # one a message without the linger
        tg.cancel_scope.cancel()


async def test_a_stop_puts_the_finishes_a_flush_lingers_for_on_disk_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush that ends a lone job's run waits for another write's fsync; a stop waits for it (what
    was finished is on disk once the relay has stopped) without waiting out its linger: no webhook
    comes any more, so the stop flushes at once."""
    monkeypatch.setattr(relay_module, "_FLUSH_LINGER", 30.0)
    ran: list[bytes] = []

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        return Done()

    async with SQLiteStore(tmp_path / "store.sqlite3") as store, anyio.create_task_group() as tg:
        relay = Relay(store, {"repeatable": Handler(run, repeatable=True)})
        await tg.start(relay.run)
        await store.enqueue([NewJob("repeatable", "a", b"lone")])
        await eventually(lambda: ran == [b"lone"] and relay._flushing == 1)
        assert store._disk.synced < store._disk.unsynced  # its finish committed, not on disk yet
        started = time.monotonic()
        await relay.stop()
        assert time.monotonic() - started < 5
        assert store._disk.synced == store._disk.unsynced
        tg.cancel_scope.cancel()


async def test_a_handed_off_job_waits_its_turn_behind_due_jobs_and_free_slots(tmp_path: Path) -> None:
    """No slot free, or another conversation's job due first: the new job is the claims'. An enqueue
    that adds nothing (a duplicate) asks for no slot."""
    offers: list[bool] = []
    handed: list[Job | None] = []

    class Taker:
        room = 0

        def offer(self) -> bool:
            offers.append(self.room > 0)
            self.room -= 1
            return offers[-1]

        def handed(self, job: Job | None) -> None:
            handed.append(job)

    taker = Taker()
    async with SQLiteStore(tmp_path / "store.sqlite3") as store:
        store.hand_off_to(taker)
        await store.enqueue([NewJob("test", "a", b"no slot")])
        taker.room = 5
        await store.enqueue([NewJob("test", "b", b"behind a")])
        assert offers == [False] and handed == []  # "behind a" was never offered: "no slot" is due first
        assert [job.payload for job in await store.claim(10)] == [b"no slot", b"behind a"]
        await store.enqueue([NewJob("test", "c", b"handed")], dedup=["c"])
        assert [(job.payload, job.attempts) for job in handed if job] == [(b"handed", 1)]
        assert await store.counts() == {"queued": 0, "running": 3, "dead": 0}
        # Built from the enqueued job, not read back: what the row holds, as a claim would read it.
        columns = "id, kind, key, payload, scope_id, attempts, created_at, last_error"
        assert handed[-1] == Job(*table_rows(store, "queue WHERE key = 'c'", columns)[0])
        assert not await store.enqueue([NewJob("test", "c", b"duplicate")], dedup=["c"])
        await store.enqueue([NewJob("test", "long", b"x" * 10_000)])  # its payload kept beside its row
        assert handed[-1] is not None and handed[-1].payload == b"x" * 10_000
        await store.release([handed[-1].id])
        (claimed,) = await store.claim(10)
        assert claimed == handed[-1]
        store.hand_off_to(None)
        await store.enqueue([NewJob("test", "d", b"claimed")])
        assert len(handed) == 2 and len(offers) == 3
        assert [job.payload for job in await store.claim(10)] == [b"claimed"]


async def test_a_hand_off_whose_transaction_fails_gives_its_slot_back(tmp_path: Path) -> None:
    """The enqueue fails after its job was offered (here: the file was replaced, so new work is
    refused): the taker hears that the reservation is released, and nothing runs."""
    store = SQLiteStore(tmp_path / "store.sqlite3")
    handed: list[Job | None] = []

    class Taker:
        def offer(self) -> bool:
            return True

        def handed(self, job: Job | None) -> None:
            handed.append(job)

    async with store:
        store.hand_off_to(Taker())
        (tmp_path / "store.sqlite3").rename(tmp_path / "moved.sqlite3")
        (tmp_path / "store.sqlite3").write_bytes(b"")
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.enqueue([NewJob("test", "a", b"refused")])
        assert handed == [None]


async def test_jobs_taken_ahead_run_on_when_every_slot_is_busy(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a conversation's jobs are taken ahead they run in their slot even when other work fills
    every other slot meanwhile: giving them back would cost a write each way for nothing."""
    released: list[int] = []
    release = store.release

    async def recording(job_ids: list[int]) -> None:
        released.extend(job_ids)
        await release(job_ids)

    monkeypatch.setattr(store, "release", recording)
    ran: list[bytes] = []
    c_running, done_waiting = anyio.Event(), anyio.Event()

    async def run(job: Job, log: structlog.typing.FilteringBoundLogger) -> Done:
        ran.append(job.payload)
        if job.payload == b"a 3":
            await c_running.wait()
        elif job.payload == b"c":
            c_running.set()
            await done_waiting.wait()
        elif job.payload == b"b":
            await done_waiting.wait()
        return Done()

    await store.enqueue([NewJob("repeatable", "a", b"a %d" % i) for i in range(10)] + [NewJob("slow", "b", b"b")])
    relay = Relay(store, {"repeatable": Handler(run, repeatable=True), "slow": Handler(run)}, concurrency=3)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        await eventually(lambda: b"a 3" in ran)
        await store.enqueue([NewJob("slow", "c", b"c")])  # the third slot: every slot is busy from now on
        await eventually(lambda: b"a 9" in ran)
        assert [p for p in ran if p.startswith(b"a")] == [b"a %d" % i for i in range(10)]
        assert released == []
        done_waiting.set()
        await eventually(lambda: counts_are(store, queued=0, running=0, dead=0), within=10)
        tg.cancel_scope.cancel()


async def test_a_finish_wakes_the_workers_only_when_it_leaves_a_job_to_claim(store: Store) -> None:
    """A finish that leaves its conversation empty (or took its next job) makes nothing claimable: the
    workers are not woken to look. One that leaves the next job to the claims wakes them."""
    wake = store._wake  # type: ignore[attr-defined]
    await store.enqueue([NewJob("test", "a", b"a1"), NewJob("test", "a", b"a2"), NewJob("test", "b", b"b1")])
    a1, b1 = await store.claim(10)
    await anyio.sleep(0.2)  # PostgreSQL: the enqueue's own notification has come back
    wake.clear()
    assert await store.finish(b1.id, take_next=True) is None
    assert not wake.is_set()
    assert await store.finish(a1.id) is None
    assert wake.is_set()
    await anyio.sleep(0.2)  # PostgreSQL: its notification too
    wake.clear()
    [a2] = await store.claim(10)
    assert await store.finish(a2.id) is None
    await anyio.sleep(0.2)
    assert not wake.is_set()


async def test_a_hand_off_that_fails_to_mark_its_job_running_gives_its_slot_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offers: list[bool] = []
    handed: list[Job | None] = []

    class Taker:
        def offer(self) -> bool:
            offers.append(True)
            return True

        def handed(self, job: Job | None) -> None:
            handed.append(job)

    async with SQLiteStore(tmp_path / "store.sqlite3") as store:
        store.hand_off_to(Taker())
        monkeypatch.setattr("amoconnect.store.sqlite._RUNNING", "UPDATE no_such_table SET state = ? ")
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await store.enqueue([NewJob("test", "a", b"x")])
        assert offers and handed == [None] * len(offers)  # the batch ran again, its operations apart
