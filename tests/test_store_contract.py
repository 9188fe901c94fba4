"""The Store contract, run against every backend: SQLite and (with a server) PostgreSQL."""

from __future__ import annotations

import time

import anyio
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from amoconnect.errors import StoreError
from amoconnect.store.base import (
    PREVIEW_CHARS,
    Activity,
    ConversationRecord,
    MessageRecord,
    NewJob,
    RecentConversation,
    SourceActivity,
    Store,
    preview,
)

pytestmark = pytest.mark.anyio


def job(key: str, payload: bytes = b"x", *, kind: str = "test", delay: float = 0.0) -> NewJob:
    return NewJob(kind=kind, key=key, payload=payload, scope_id="scope", delay=delay)


async def test_enqueue_and_claim_in_order(store: Store) -> None:
    assert await store.enqueue([job("a", b"1"), job("a", b"2"), job("b", b"3")])
    claimed = await store.claim(10)
    # Only the head of each key is handed out: "a"'s second job waits for the first.
    assert [(j.key, j.payload) for j in claimed] == [("a", b"1"), ("b", b"3")]
    assert all(j.attempts == 1 for j in claimed)
    assert await store.claim(10) == []
    await store.finish(claimed[0].id)
    nxt = await store.claim(10)
    assert [(j.key, j.payload) for j in nxt] == [("a", b"2")]


async def test_dedup_refuses_second_enqueue_and_stores_nothing(store: Store) -> None:
    assert await store.enqueue([job("a")], dedup=["tg:1"])
    assert not await store.enqueue([job("a"), job("b")], dedup=["tg:2", "tg:1"])
    assert (await store.counts())["queued"] == 1
    # The refused enqueue rolled back its own new key too.
    assert await store.enqueue([job("c")], dedup=["tg:2"])


async def test_retry_keeps_conversation_order(store: Store) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2")])
    (first,) = await store.claim(10)
    await store.retry(first.id, delay=0.05, error="boom")
    assert await store.claim(10) == []  # the head is waiting; the second must not overtake it
    due = await store.next_due_in()
    assert due is not None and 0 < due <= 0.05
    await anyio.sleep(0.06)
    (again,) = await store.claim(10)
    assert again.payload == b"1" and again.attempts == 2 and again.last_error == "boom"


async def test_next_due_ignores_jobs_blocked_behind_a_running_head(store: Store) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2")])
    await store.claim(10)
    assert await store.next_due_in() is None


async def test_dead_letters_requeue_and_purge(store: Store) -> None:
    await store.enqueue([job("a", b"1"), job("b", b"2")])
    for j in await store.claim(10):
        await store.bury(j.id, error=f"failed {j.payload!r}")
    dead = await store.dead_letters()
    assert [d.payload for d in dead] == [b"1", b"2"]
    assert dead[0].error == "failed b'1'" and dead[0].attempts == 1
    assert await store.counts() == {"queued": 0, "running": 0, "dead": 2}
    assert await store.requeue([dead[0].id]) == 1
    (back,) = await store.claim(10)
    assert back.id == dead[0].id and back.attempts == 1
    assert await store.purge() == 1
    assert await store.dead_letters() == []


async def test_dead_letters_of_one_account_are_listed_requeued_and_purged_alone(store: Store) -> None:
    await store.enqueue([NewJob("inbound", "a", b"1", "mine"), NewJob("inbound", "b", b"2", "theirs")])
    for j in await store.claim(10):
        await store.bury(j.id, error="failed")
    mine, theirs = await store.dead_letters()
    assert [d.payload for d in await store.dead_letters(scope_id="mine")] == [b"1"]
    assert await store.dead_letters(scope_id="nobody") == []
    # Another account's id changes nothing.
    assert await store.requeue([theirs.id], scope_id="mine") == 0
    assert await store.purge([theirs.id], scope_id="mine") == 0
    assert await store.purge(scope_id="nobody") == 0
    assert [d.id for d in await store.dead_letters()] == [mine.id, theirs.id]
    assert await store.requeue([mine.id, theirs.id], scope_id="mine") == 1
    assert [d.id for d in await store.dead_letters()] == [theirs.id]
    assert await store.purge(scope_id="theirs") == 1
    assert await store.dead_letters() == []


async def test_requeued_dead_letter_runs_before_later_jobs_of_its_conversation(store: Store) -> None:
    await store.enqueue([job("a", b"old")])
    (old,) = await store.claim(1)
    await store.bury(old.id, error="x")
    await store.enqueue([job("a", b"new")])
    await store.requeue()
    (head,) = await store.claim(10)
    assert head.payload == b"old"


async def test_a_requeued_dead_letter_waits_while_a_later_job_of_its_conversation_runs(store: Store) -> None:
    """Found by tests/test_store_stateful.py: the old id made the dead letter a head beside the running job."""
    await store.enqueue([job("a", b"old"), job("a", b"new")])
    (old,) = await store.claim(10)
    await store.bury(old.id, error="x")
    (new,) = await store.claim(10)
    assert new.payload == b"new"
    assert await store.requeue() == 1
    assert await store.claim(10) == []  # one job of a conversation at a time
    assert await store.next_due_in() is None  # nothing a worker could take: no busy loop
    await store.finish(new.id)
    (again,) = await store.claim(10)
    assert again.payload == b"old"


async def test_a_long_payload_comes_back_whole_whichever_way_its_job_goes(store: Store) -> None:
    """A payload longer than a page (SQLite keeps it beside its row) through claims, takes ahead,
    hand-backs, retries, follow-ups, burials and requeues, next to short ones."""
    long_a, long_b, long_c, long_d = (bytes([i]) * 100_000 + b"end" for i in range(4))
    await store.enqueue([job("a", long_a), job("a", b"short"), job("a", long_c), job("b", long_b)])
    first, other = await store.claim(10)
    assert (first.payload, other.payload) == (long_a, long_b)
    ahead = await store.take_ahead(first, 5)
    assert [j.payload for j in ahead] == [b"short", long_c]
    await store.release([j.id for j in ahead])
    await store.retry(other.id, delay=0, error="later")
    taken = await store.finish(first.id, then=[job("a", long_d)], take_next=True)
    assert taken is not None and taken.payload == b"short"
    (again,) = await store.claim(10)
    assert again.payload == long_b and again.last_error == "later"
    await store.bury(again.id, error="gone")
    await store.finish(taken.id)
    (third,) = await store.claim(10)
    assert third.payload == long_c
    await store.bury(third.id, error="gone")
    assert [d.payload for d in await store.dead_letters()] == [long_c, long_b]
    assert await store.requeue() == 2
    assert sorted(j.payload for j in await store.claim(10)) == sorted([long_b, long_c])
    assert await store.claim(10) == []  # "a"'s follow-up waits behind its requeued job
    assert await store.counts() == {"queued": 1, "running": 2, "dead": 0}


async def test_finish_writes_mapping_and_follow_ups_atomically(store: Store) -> None:
    await store.enqueue([job("a")])
    (j,) = await store.claim(1)
    conv = ConversationRecord("scope", "c1", "tg", "100", amocrm_chat_id="amo-chat", client_id="u1")
    msg = MessageRecord("scope", "m1", "c1", "in", amocrm_id="amo-1", messenger_id="55")
    await store.finish(j.id, conversations=[conv], messages=[msg], then=[job("a", b"next", kind="status")])
    assert await store.conversation("scope", "c1") == conv
    assert await store.conversation_by_chat("tg", "100") == conv
    assert await store.conversation_by_amocrm("scope", "amo-chat") == conv
    assert await store.message("scope", "m1") == msg
    assert await store.message_by_amocrm("scope", "amo-1") == msg
    assert await store.message_by_messenger("scope", "c1", "55") == msg
    (follow,) = await store.claim(1)
    assert follow.kind == "status"


async def test_finish_merges_a_conversation_so_a_stale_record_moves_nothing_back(store: Store) -> None:
    # An outbound and an inbound job of one chat (different keys) run at once, both having read this.
    read = ConversationRecord("scope", "c1", "tg", "100", client_id="u1", last_client_at=100.0)
    await store.put_conversation(read)
    await store.enqueue([job("inbound"), job("outbound")])
    inbound, outbound = await store.claim(10)
    newer = msgspec.structs.replace(read, last_client_at=200.0)
    await store.finish(inbound.id, conversations=[newer])
    await store.finish(outbound.id, conversations=[msgspec.structs.replace(read, amocrm_chat_id="amo-chat")])
    learned = msgspec.structs.replace(newer, amocrm_chat_id="amo-chat")
    assert await store.conversation("scope", "c1") == learned
    # A record that knows less (no reply window, no amoCRM chat id, no client id) forgets nothing either.
    await store.enqueue([job("outbound")])
    (later,) = await store.claim(10)
    blank = ConversationRecord("scope", "c1", "tg", "100", ref_pending=True)
    await store.finish(later.id, conversations=[blank])
    assert await store.conversation("scope", "c1") == msgspec.structs.replace(learned, ref_pending=True)


async def test_finish_sets_a_first_reply_window_and_put_conversation_moves_it_back(store: Store) -> None:
    await store.put_conversation(ConversationRecord("scope", "c1", "tg", "100", amocrm_chat_id="amo-chat"))
    await store.enqueue([job("inbound")])
    (first,) = await store.claim(10)
    await store.finish(first.id, conversations=[ConversationRecord("scope", "c1", "tg", "100", last_client_at=50.0)])
    stored = await store.conversation("scope", "c1")
    assert stored == ConversationRecord("scope", "c1", "tg", "100", amocrm_chat_id="amo-chat", last_client_at=50.0)
    backdated = msgspec.structs.replace(stored, last_client_at=10.0, amocrm_chat_id=None)
    await store.put_conversation(backdated)  # as it is: the test kit closes reply windows so
    assert await store.conversation("scope", "c1") == backdated


async def _finished(store: Store, **records: object) -> None:
    await store.enqueue([job(f"k{time.monotonic_ns()}")])
    (j,) = await store.claim(1)
    await store.finish(j.id, **records)  # type: ignore[arg-type]


async def test_finish_keeps_each_conversations_newest_message_with_its_delivery_status(store: Store) -> None:
    conv = ConversationRecord("scope", "c1", "tg", "100", client_id="u1", last_client_at=100.0)
    said = MessageRecord("scope", "m1", "c1", "in", amocrm_id="amo-1", messenger_id="55")
    await _finished(
        store, conversations=[conv], messages=[said], activity=[Activity("scope", "c1", "m1", "in", "hi", 100.0)]
    )
    answer = MessageRecord("scope", "amo-2", "c1", "out", amocrm_id="amo-2", messenger_id="56")
    out = Activity("scope", "c1", "amo-2", "out", "hello there", 130.0)
    await _finished(store, messages=[answer], activity=[out])
    # An older message finishing late (a retried inbound job) does not replace the newer one.
    await _finished(store, activity=[Activity("scope", "c1", "m0", "in", "older", 90.0)])
    assert await store.recent_conversations("scope") == [
        RecentConversation("c1", "tg", "100", "amo-2", "out", "hello there", 130.0, 0)
    ]
    # Its status moves with its message record; the conversation's own columns are untouched.
    await _finished(store, messages=[msgspec.structs.replace(answer, status=2)])
    (recent,) = await store.recent_conversations("scope")
    assert recent.status == 2
    assert await store.conversation("scope", "c1") == conv
    assert await store.source_activity("scope") == [SourceActivity("tg", 100.0, 130.0)]


async def test_recent_conversations_are_one_accounts_newest_first_and_bounded(store: Store) -> None:
    for n in range(5):
        scope = "mine" if n % 2 == 0 else "theirs"
        await _finished(
            store,
            conversations=[ConversationRecord(scope, f"c{n}", "tg" if scope == "mine" else "vk", str(n))],
            activity=[Activity(scope, f"c{n}", f"m{n}", "in", f"text {n}", 100.0 + n)],
        )
    # A conversation without any message yet is not listed; nor is an activity of an unknown one.
    await store.put_conversation(ConversationRecord("mine", "quiet", "tg", "quiet"))
    await _finished(store, activity=[Activity("mine", "nowhere", "m9", "in", "lost", 500.0)])
    mine = await store.recent_conversations("mine")
    assert [(r.conversation_id, r.preview, r.status) for r in mine] == [
        ("c4", "text 4", None),
        ("c2", "text 2", None),
        ("c0", "text 0", None),
    ]
    assert [r.conversation_id for r in await store.recent_conversations("mine", limit=2)] == ["c4", "c2"]
    assert [r.conversation_id for r in await store.recent_conversations("theirs")] == ["c3", "c1"]
    assert await store.recent_conversations("nobody") == []
    assert await store.source_activity("theirs") == [SourceActivity("vk", None, None)]


async def test_a_preview_is_one_line_and_bounded(store: Store) -> None:
    assert preview("  two\n lines\t here ") == "two lines here"
    long = preview("x" * 1000)
    assert len(long) == PREVIEW_CHARS and long.endswith("…")
    await store.put_conversation(ConversationRecord("scope", "c1", "tg", "100"))
    # A store keeps no more than the bound, whoever wrote the activity.
    await _finished(store, activity=[Activity("scope", "c1", "m1", "in", "y" * 1000, 1.0)])
    (recent,) = await store.recent_conversations("scope")
    assert recent.preview == "y" * PREVIEW_CHARS


def _whole_text_preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


@given(st.text(alphabet=st.sampled_from("ab \n\t\u00a0я"), max_size=600), st.integers(0, 400))
def test_a_preview_reads_only_the_beginning_of_a_long_text_and_says_the_same(text: str, blanks: int) -> None:
    for candidate in (text, " " * blanks + text, text + "z" * 300):
        assert preview(candidate) == _whole_text_preview(candidate)


async def test_state_and_prune(store: Store) -> None:
    assert await store.get_state("tg", "offset") is None
    await store.set_state("tg", "offset", b"42")
    assert await store.get_state("tg", "offset") == b"42"
    await store.enqueue([job("a")], dedup=["k"])
    assert (await store.prune(dedup_older_than=3600))["dedup keys"] == 0
    assert (await store.prune(dedup_older_than=-1))["dedup keys"] == 1


async def test_button_data_is_kept_until_its_time_runs_out_then_pruned(store: Store) -> None:
    long = "row " + "é" * 300
    assert await store.button_data("~b:one") is None
    await store.put_button_data("~b:one", long, 3600)
    await store.put_button_data("~b:two", "ran out", -1)
    assert await store.button_data("~b:one") == long
    assert await store.button_data("~b:two") is None  # expired reads as never kept, pruned or not
    assert (await store.prune(dedup_older_than=3600))["button data"] == 1
    assert (await store.prune(dedup_older_than=3600))["button data"] == 0
    await store.put_button_data("~b:one", long, -1)
    await store.put_button_data("~b:one", long, 3600)  # sent again: kept from now again
    assert (await store.prune(dedup_older_than=3600))["button data"] == 0
    assert await store.button_data("~b:one") == long


async def test_wait_for_work_wakes_on_commit(store: Store) -> None:
    await store.wait_for_work(0)  # clear the wake from open
    woke_at: list[float] = []

    async def waiter() -> None:
        await store.wait_for_work(5)
        woke_at.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        started = time.monotonic()
        await store.enqueue([job("a")])
    assert woke_at and woke_at[0] - started < 1


async def test_put_conversation_takes_over_its_chat(store: Store) -> None:
    await store.put_conversation(ConversationRecord("scope", "c1", "tg", "100"))
    await store.put_conversation(ConversationRecord("scope", "c2", "tg", "100", amocrm_chat_id="x"))
    assert await store.conversation("scope", "c1") is None
    assert (await store.conversation_by_chat("tg", "100")) == ConversationRecord(
        "scope", "c2", "tg", "100", amocrm_chat_id="x"
    )


async def test_state_overwrite_and_delete(store: Store) -> None:
    await store.set_state("tg", "offset", b"1")
    await store.set_state("tg", "offset", b"2")
    assert await store.get_state("tg", "offset") == b"2"
    await store.delete_state("tg", "offset")
    assert await store.get_state("tg", "offset") is None


async def test_lease_can_be_taken_and_released(store: Store) -> None:
    assert await store.hold_lease("poll", 30)
    assert await store.hold_lease("poll", 30)
    await store.release_lease("poll")
    assert await store.hold_lease("poll", 30)


async def test_probe_writes_while_the_store_serves_and_fails_once_it_cannot(store: Store) -> None:
    await store.probe()
    await store.probe()  # again: one row, rewritten
    await store.close()
    with pytest.raises(StoreError):
        await store.probe()


async def test_a_finish_takes_the_next_job_of_its_conversation_when_asked(store: Store) -> None:
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("b", b"3"), job("a", b"4", delay=60)])
    one, three = await store.claim(10)
    two = await store.finish(one.id, take_next=True)
    assert two is not None and (two.key, two.payload, two.attempts) == ("a", b"2", 1)
    assert await store.claim(10) == []  # taken: running, as a claim would have left it
    assert await store.counts() == {"queued": 1, "running": 2, "dead": 0}
    assert await store.finish(two.id, take_next=True) is None  # the next of "a" is not due yet
    assert await store.finish(three.id) is None  # not asked
    assert await store.finish(three.id, take_next=True) is None  # already finished: nothing to take
    assert await store.next_due_in() is not None


async def test_a_finish_takes_its_follow_up_or_an_earlier_requeued_dead_letter(store: Store) -> None:
    await store.enqueue([job("a", b"old"), job("a", b"running")])
    (old,) = await store.claim(10)
    await store.bury(old.id, error="x")
    (running,) = await store.claim(10)
    await store.requeue()
    # The dead letter kept its place: it goes before the follow-up the finish adds.
    back = await store.finish(running.id, then=[job("a", b"follow-up")], take_next=True)
    assert back is not None and back.payload == b"old"
    follow = await store.finish(back.id, take_next=True)
    assert follow is not None and follow.payload == b"follow-up"
    assert await store.finish(follow.id, take_next=True) is None
    assert await store.counts() == {"queued": 0, "running": 0, "dead": 0}


async def test_a_finish_that_does_not_wait_for_the_disk_is_seen_at_once_and_flushed(store: Store) -> None:
    from amoconnect.testing.stores import run_sql, table_rows

    await store.flush()  # nothing committed without waiting for the disk: nothing to do
    await store.enqueue([job("a", b"1"), job("a", b"2"), job("a", b"3")])
    (one,) = await store.claim(10)
    record = ConversationRecord("scope", "conv-a", "inst", "chat-a", client_id="client-a", last_client_at=5.0)
    sent = MessageRecord("scope", "m1", "conv-a", "in", amocrm_id="amo-1", messenger_id="1")
    two = await store.finish(one.id, conversations=[record], messages=[sent], take_next=True, durable=False)
    assert two is not None and two.payload == b"2"
    # Committed: every reader sees it before it is on disk, another connection too.
    assert await store.conversation("scope", "conv-a") == record
    assert await store.message_by_messenger("scope", "conv-a", "1") == sent
    assert sorted(table_rows(store, "queue", "id, state")) == [(two.id, "running"), (two.id + 1, "queued")]
    if hasattr(store, "url"):  # PostgreSQL: the flush waits for the WAL to be on disk up to here at least
        (written,) = run_sql(store, "SELECT pg_current_wal_insert_lsn()")[0]
        await store.flush()
        (flushed,) = run_sql(store, f"SELECT pg_current_wal_flush_lsn() >= '{written}'::pg_lsn")[0]
        assert flushed
    else:
        await store.flush()
    await store.flush()  # again: nothing new to flush
    # A finish with follow-ups is durable whatever it asks: its follow-up is claimable at once.
    three = await store.finish(two.id, then=[job("b", b"follow-up")], take_next=True, durable=False)
    assert three is not None and three.payload == b"3"
    assert [j.payload for j in await store.claim(10)] == [b"follow-up"]
    assert await store.finish(three.id, take_next=True, durable=False) is None
    await store.flush()
    assert await store.counts() == {"queued": 0, "running": 1, "dead": 0}


async def test_a_lingering_flush_is_spared_by_an_enqueue_s_durable_commit(store: Store) -> None:
    """``flush(linger=...)`` waits for a durable write made meanwhile (a webhook's enqueue) to put the
    finishes before it on disk, and writes to the disk itself only when none comes in time."""
    from amoconnect.testing.stores import run_sql

    def wal_flushed_past(written: str) -> bool:
        return bool(run_sql(store, f"SELECT pg_current_wal_flush_lsn() >= '{written}'::pg_lsn")[0][0])

    await store.enqueue([job("a", b"1"), job("b", b"2"), job("d", b"4"), job("e", b"5")])
    one, two, four, five = await store.claim(10)
    assert await store.finish(one.id, durable=False) is None
    written = run_sql(store, "SELECT pg_current_wal_insert_lsn()")[0][0] if hasattr(store, "url") else ""
    synced_before = getattr(store, "_flushes", 0)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.flush(linger=30.0))
        await anyio.sleep(0.05)
        assert await store.enqueue([job("c", b"3")])  # durable: its commit carries the finish to the disk
    assert time.monotonic() - started < 10  # released by the enqueue, not by its 30 seconds
    if hasattr(store, "url"):
        assert wal_flushed_past(written)
    else:
        assert store._flushes == synced_before  # type: ignore[attr-defined]  # no fsync of its own

    # No durable write comes: it waits its linger out, then writes to the disk itself.
    assert await store.finish(two.id, durable=False) is None
    written = run_sql(store, "SELECT pg_current_wal_insert_lsn()")[0][0] if hasattr(store, "url") else ""
    started = time.monotonic()
    await store.flush(linger=0.2)
    assert time.monotonic() - started >= 0.2
    if hasattr(store, "url"):
        assert wal_flushed_past(written)
    else:
        assert store._flushes == synced_before + 1  # type: ignore[attr-defined]
    started = time.monotonic()
    await store.flush(linger=30.0)  # nothing left to put on disk: at once
    assert time.monotonic() - started < 1

    # A durable finish (an outbound job's) spares it too.
    assert await store.finish(four.id, durable=False) is None
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.flush(linger=30.0))
        await anyio.sleep(0.05)
        await store.finish(five.id)
    assert time.monotonic() - started < 10


async def test_a_finish_accepted_without_waiting_is_seen_by_lookups_before_its_commit(store: Store) -> None:
    from amoconnect.testing.stores import table_rows

    await store.enqueue([job("a", b"1"), job("a", b"2")])
    (one,) = await store.claim(10)
    (two,) = await store.take_ahead(one, 10)
    stored = ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-chat", "client-a", last_client_at=9.0)
    await store.put_conversation(stored)
    first = MessageRecord("scope", "m0", "conv-a", "in", amocrm_id="amo-0", messenger_id="0")
    await store.put_message(first)
    # The job's record knows no amoCRM chat id (merged: the stored one stays) and a later reply window.
    record = ConversationRecord("scope", "conv-a", "inst", "chat-a", client_id="client-a", last_client_at=12.0)
    sent = MessageRecord("scope", "m1", "conv-a", "in", amocrm_id="amo-1", messenger_id="1")
    read = msgspec.structs.replace(first, status=2)
    newest = Activity("scope", "conv-a", "m1", "in", "hello", 12.0)
    committed = store.finish_soon(one.id, conversations=[record], messages=[sent, read], activity=[newest])
    assert table_rows(store, "messages WHERE msgid = 'm1'") == [(0,)]  # not committed yet
    merged = msgspec.structs.replace(stored, last_client_at=12.0)
    assert await store.conversation("scope", "conv-a") == merged
    assert await store.conversation_by_chat("inst", "chat-a") == merged
    assert await store.conversation_by_amocrm("scope", "amo-chat") == merged
    assert await store.message("scope", "m1") == sent
    assert await store.message_by_amocrm("scope", "amo-1") == sent
    assert await store.message_by_messenger("scope", "conv-a", "1") == sent
    assert await store.message("scope", "m0") == read  # replaced
    # Another conversation takes the chat over: the first one's row goes.
    other = ConversationRecord("scope", "conv-b", "inst", "chat-a", client_id="client-b", last_client_at=13.0)
    joined = Activity("scope", "conv-b", "m2", "in", "taken over", 13.0)
    taken_over = store.finish_soon(two.id, conversations=[other], activity=[joined])
    assert await store.conversation("scope", "conv-a") is None
    assert await store.conversation_by_chat("inst", "chat-a") == other
    assert await store.conversation_by_amocrm("scope", "amo-chat") is None
    await committed
    await taken_over
    assert [r[0] for r in table_rows(store, "messages WHERE msgid = 'm1'", "amocrm_id")] == ["amo-1"]
    assert await store.conversation("scope", "conv-a") is None
    assert await store.conversation_by_chat("inst", "chat-a") == other
    assert await store.message("scope", "m0") == read
    assert await store.recent_conversations("scope") == [
        RecentConversation("conv-b", "inst", "chat-a", "m2", "in", "taken over", 13.0, None)
    ]
    assert await store.counts() == {"queued": 0, "running": 0, "dead": 0}
    await store.flush()


async def test_a_chat_whose_backlog_runs_ahead_is_looked_up_without_a_read_per_job(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While finishes of a chat wait (its jobs run ahead in this process), a lookup by chat answers from
    the row last read, with this process's writes since; anything else reads the database as before."""
    from amoconnect.store import unwritten
    from amoconnect.testing.stores import run_sql

    reads = 0
    one_row = store._one  # type: ignore[attr-defined]

    async def counted(*args: object) -> object:
        nonlocal reads
        reads += 1
        return await one_row(*args)

    monkeypatch.setattr(store, "_one", counted)
    await store.enqueue([job("a", str(n).encode()) for n in range(5)])
    (first,) = await store.claim(10)
    ahead = await store.take_ahead(first, 10)
    stored = ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-1", "client-a", last_client_at=9.0)
    await store.put_conversation(stored)
    done = [store.finish_soon(first.id, conversations=[msgspec.structs.replace(stored, last_client_at=10.0)])]
    assert await store.conversation_by_chat("inst", "chat-a") == msgspec.structs.replace(stored, last_client_at=10.0)
    assert reads == 1
    await done[0]  # committed: folded into the row known
    later = ConversationRecord("scope", "conv-a", "inst", "chat-a", "amo-2", last_client_at=11.0)
    done.append(store.finish_soon(ahead[0].id, conversations=[later]))
    expected = msgspec.structs.replace(later, client_id="client-a")
    assert await store.conversation_by_chat("inst", "chat-a") == expected
    assert await store.conversation_by_chat("inst", "chat-a") == expected
    assert reads == 1
    # Another writer (behind this store's back) is seen once the row known is FRESH seconds old.
    run_sql(store, "UPDATE conversations SET client_id = 'client-b'")
    monkeypatch.setattr(unwritten, "FRESH", -1.0)
    assert await store.conversation_by_chat("inst", "chat-a") == msgspec.structs.replace(later, client_id="client-b")
    assert reads == 2
    monkeypatch.undo()
    monkeypatch.setattr(store, "_one", counted)
    # This process writing the conversation otherwise than by finish_soon: read again.
    await store.put_conversation(msgspec.structs.replace(stored, amocrm_chat_id="amo-3"))
    done.append(store.finish_soon(ahead[1].id, conversations=[later]))
    assert (await store.conversation_by_chat("inst", "chat-a")) == msgspec.structs.replace(later, client_id="client-a")
    assert reads == 3
    # A chat taken over by another conversation: read again, the taken one gone.
    other = ConversationRecord("scope", "conv-b", "inst", "chat-a", "amo-4", "client-c", last_client_at=12.0)
    done.append(store.finish_soon(ahead[2].id, conversations=[other]))
    await done[-1]
    done.append(store.finish_soon(ahead[3].id, conversations=[other]))
    assert await store.conversation_by_chat("inst", "chat-a") == other
    assert await store.conversation("scope", "conv-a") is None
    await done[-1]
    # No finish of the chat waits: every lookup reads, and sees what another writer did at once.
    reads = 0
    run_sql(store, "UPDATE conversations SET amocrm_chat_id = 'amo-5'")
    assert await store.conversation_by_chat("inst", "chat-a") == msgspec.structs.replace(other, amocrm_chat_id="amo-5")
    assert await store.conversation_by_chat("inst", "chat-a") is not None
    assert reads == 2
    assert await store.counts() == {"queued": 0, "running": 0, "dead": 0}


def _finishes(
    scope: str, instance: str
) -> list[list[tuple[list[ConversationRecord], list[MessageRecord], list[Activity]]]]:
    """Groups of finishes' records; in the second a chat is taken over, in the third a conversation's
    newest message comes before its first record."""

    def conv(name: str, chat: str, **fields: object) -> ConversationRecord:
        return ConversationRecord(scope, f"{scope}-{name}", instance, chat, **fields)  # type: ignore[arg-type]

    def msg(name: str, conversation: str, **fields: object) -> MessageRecord:
        return MessageRecord(scope, name, f"{scope}-{conversation}", "in", **fields)  # type: ignore[arg-type]

    def act(conversation: str, name: str, direction: str, at: float) -> Activity:
        return Activity(scope, f"{scope}-{conversation}", name, direction, f"{name} {direction}", at)  # type: ignore[arg-type]

    first = [
        ([conv("a", "chat-a", client_id="ca", last_client_at=5.0)], [msg("m1", "a")], [act("a", "m1", "out", 5.0)]),
        (
            [conv("a", "chat-a", amocrm_chat_id="x", last_client_at=3.0)],
            [msg("m1", "a", status=1), msg("m2", "a", amocrm_id="x2")],
            [act("a", "m2", "out", 7.0)],
        ),
        (
            [conv("b", "chat-b", amocrm_chat_id="y", last_client_at=4.0)],
            [],
            [act("a", "m3", "in", 6.0), act("b", "m4", "in", 4.0)],
        ),
        ([conv("a", "chat-a", ref_pending=True)], [msg("m2", "a", status=2)], [act("a", "m5", "in", 7.5)]),
        ([], [], [act("a", "m6", "in", 7.5), act("b", "m9", "in", 3.0)]),
    ]
    second = [
        ([conv("b", "chat-b", last_client_at=9.0)], [], []),
        ([conv("c", "chat-b", client_id="cc")], [], [act("c", "m7", "out", 9.0)]),
        ([conv("b", "chat-b", last_client_at=10.0)], [msg("m1", "b")], [act("b", "m8", "in", 10.0)]),
    ]
    third = [([], [], [act("d", "m10", "in", 1.0)]), ([conv("d", "chat-d")], [], [])]
    return [first, second, third]


async def test_finishes_committed_together_leave_what_they_leave_one_after_the_other(store: Store) -> None:
    """Finishes accepted without waiting commit in groups (PostgreSQL: a statement per kind of record
    where the order cannot tell): the mapping and each conversation's newest message end as when the
    same finishes are made one at a time."""

    async def state(scope: str, instance: str) -> list[object]:
        names = ["a", "b", "c", "d"]
        return [
            *[
                msgspec.structs.replace(c, scope_id="", conversation_id=c.conversation_id[-1], instance="")
                if c
                else None
                for c in [await store.conversation(scope, f"{scope}-{n}") for n in names]
            ],
            *[
                msgspec.structs.replace(m, scope_id="", conversation_id=m.conversation_id[-1]) if m else None
                for m in [await store.message(scope, f"m{n}") for n in (1, 2)]
            ],
            [
                (r.conversation_id[-1], r.msgid, r.direction, r.preview, r.at, r.status)
                for r in await store.recent_conversations(scope)
            ],
            [(a.last_in, a.last_out) for a in await store.source_activity(scope)],
        ]

    grouped, in_turn = _finishes("s1", "i1"), _finishes("s2", "i2")
    for scope, instance in (("s1", "i1"), ("s2", "i2")):
        # Newest messages already stored: an earlier one given now changes nothing.
        await store.put_conversation(ConversationRecord(scope, f"{scope}-a", instance, "chat-a"))
        await store.enqueue([job(f"{scope}-setup")])
        (setup,) = await store.claim(10)
        await store.finish(setup.id, activity=[Activity(scope, f"{scope}-a", "m0", "in", "m0", 6.5)])
    for step, (ours, theirs) in enumerate(zip(grouped, in_turn, strict=True)):
        await store.enqueue([job(f"{scope}-{step}-{i}") for scope in ("s1", "s2") for i in range(len(ours))])
        jobs = {j.key: j for j in await store.claim(100)}
        accepted = [
            store.finish_soon(jobs[f"s1-{step}-{i}"].id, conversations=c, messages=m, activity=a)
            for i, (c, m, a) in enumerate(ours)
        ]
        for i, (c, m, a) in enumerate(theirs):
            await store.finish(jobs[f"s2-{step}-{i}"].id, conversations=c, messages=m, activity=a)
        for future in accepted:
            await future
        assert await state("s1", "i1") == await state("s2", "i2")
    assert (await state("s1", "i1"))[4:] != [None, None, [], []]
