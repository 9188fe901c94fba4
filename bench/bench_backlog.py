"""Backlog benchmark: what a claim costs as the queue grows, and what a draining backlog does to acks.

1. Claim cost against the backlog, on each store in this process (SQLite with
   ``synchronous=FULL``; PostgreSQL on a throwaway durable server): the queue grows to 10,000,
   100,000 and 1,000,000 jobs spread over 1, 10 and 10,000 conversations, and at each size
   (and empty) the benchmark times ``claim(64)`` taking jobs (64 fresh conversations' jobs are
   queued for it each round, then the claimed jobs are finished, untimed), ``claim(64)`` while
   every backlog conversation's head is running (1 and 10 conversations: what the relay does
   while it waits), ``next_due_in`` and ``finish``. The plans of the claim at the largest size
   are kept: SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's ``EXPLAIN ANALYZE`` (rolled back).
2. Draining one conversation: the connector (``bench/connector.py``, the real runtime) is started
   on a store holding a backlog of one conversation's client messages (ingested through its
   webhook while amojo did not answer) and relays them to the fake amojo. The drain rate is
   compared with that conversation's limit: the same fake amojo answering ``send_message``
   calls made one after the other (a conversation's messages go one at a time, in order). The
   two are measured in turns, five times (the limit while the connector is stopped with
   SIGSTOP, then the drain for two seconds), so that each pair meets the same spell of the shared
   machine; the figure is the median of the five shares. The connector's CPU time (user +
   system) per drained message is read from ``/proc`` over the drain's turns.
3. Acks while it drains: an open loop of 500 webhooks/s from 1,000 other conversations for 10 s
   while the backlog drains; ack latency from each request's scheduled time.

    python bench/bench_backlog.py                       # both stores, up to 1,000,000 jobs
    python bench/bench_backlog.py --quick               # up to 100,000 jobs, a 30,000-job drain
    python bench/bench_backlog.py --stores sqlite --only claims

Results are printed and written to bench/out/backlog.json (backlog-quick.json, or
backlog-<parts>.json for a partial run); ``--save`` writes them to bench/results/ instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from _support import (
    CHANNEL_ID,
    CHANNEL_SECRET,
    SCOPE_ID,
    Process,
    RawPool,
    add_save_option,
    children,
    fmt,
    latency_summary,
    machine,
    machine_line,
    table,
    write_results,
)
from bench_relay import (
    HOST,
    INSTANCE,
    Amojo,
    connector,
    fakechat_plan,
    filesystem,
    fsync_probe,
    open_loop,
    start_amojo,
)

from amoconnect.amojo import wire
from amoconnect.amojo.client import AmojoClient
from amoconnect.store.base import Job, NewJob, Store
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.stores import fresh_postgres_schema

RATE = 500.0
SECONDS = 10.0
"""Webhooks per second, and for how long, whose acks are timed."""

CLAIM_LIMIT = 64
ROUNDS = 40
PAYLOAD = b'{"text": "' + b"x" * 180 + b'"}'


# -- 1. claim cost against the backlog ---------------------------------------------------------------


def jobs(keys: Sequence[str]) -> list[NewJob]:
    return [NewJob("bench", key, PAYLOAD, SCOPE_ID) for key in keys]


async def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


def ms(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"median_ms": None, "p90_ms": None}
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
    }


async def finish_all(store: Store, claimed: Sequence[Job]) -> list[float]:
    return [await timed(lambda j=j: store.finish(j.id)) for j in claimed]


async def measure(store: Store, conversations: int, backlog: int, tag: str) -> dict[str, Any]:
    """Time claims, next_due_in and finishes against the queue as it is; leaves the backlog as it found it."""
    taking: list[float] = []
    finishing: list[float] = []
    cpu_before = time.process_time()
    for r in range(ROUNDS):
        await store.enqueue(jobs([f"{tag}-p{r}-{j}" for j in range(CLAIM_LIMIT)]))
        claimed: list[Job] = []

        async def claim(into: list[Job] = claimed) -> None:
            into.extend(await store.claim(CLAIM_LIMIT))

        taking.append(await timed(claim))
        # Backlog jobs taken are queued again at the end (the backlog keeps its size), then finished.
        again = [j for j in claimed if not j.key.startswith(f"{tag}-p")]
        if again:
            await store.enqueue(jobs([j.key for j in again]))
        finishing += await finish_all(store, claimed)
    cpu_per_claim = (time.process_time() - cpu_before) / ROUNDS
    blocked: list[float] = []
    due: list[float] = []
    if backlog and conversations <= CLAIM_LIMIT:
        heads = await store.claim(CLAIM_LIMIT)  # every backlog conversation's head runs now
        for _ in range(ROUNDS):
            blocked.append(await timed(lambda: store.claim(CLAIM_LIMIT)))
            due.append(await timed(store.next_due_in))
        await store.enqueue(jobs([j.key for j in heads]))
        await finish_all(store, heads)
    else:
        for _ in range(ROUNDS):
            due.append(await timed(store.next_due_in))
    return {
        "conversations": conversations,
        "backlog": backlog,
        "claim_taking": ms(taking),
        "claim_taking_cpu_ms_in_process": round(cpu_per_claim * 1000, 3),
        "claim_heads_running": ms(blocked),
        "next_due_in": ms(due),
        "finish": ms(finishing),
    }


async def fill(store: Store, conversations: int, start: int, stop: int) -> float:
    """Queue jobs ``start`` … ``stop`` over ``conversations``; seconds it took."""
    started = time.perf_counter()
    batch = 5000
    for first in range(start, stop, batch):
        await store.enqueue(jobs([f"c{i % conversations}" for i in range(first, min(first + batch, stop))]))
    return time.perf_counter() - started


def claim_plan(store: Store) -> list[str]:
    """The claim's plan on the store as it is now: SQLite's query plan, PostgreSQL's executed plan."""
    from amoconnect.testing.stores import sql_session

    if isinstance(store, SQLiteStore):
        from amoconnect.store.sqlite import _CLAIM

        with sql_session(store) as run:
            return [
                row[-1]
                for row in run(f"EXPLAIN QUERY PLAN {_CLAIM.replace('?', str(time.time()), 1).replace('?', '64')}")
            ]
    import psycopg

    from amoconnect.store.postgres import _CLAIM

    with psycopg.connect(store.url) as conn:  # type: ignore[attr-defined]
        rows = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {_CLAIM}", (CLAIM_LIMIT, "bench-plan", 30.0)).fetchall()
        conn.rollback()
    return [row[0] for row in rows]


@contextlib.asynccontextmanager
async def opened(kind: str, work: Path, pg_url: str | None) -> AsyncIterator[Store]:
    if kind == "sqlite":
        store: Store = SQLiteStore(work / f"claims-{time.monotonic_ns()}.sqlite3", synchronous="FULL")
    else:
        from amoconnect.store.postgres import PostgresStore
        from amoconnect.testing.stores import fresh_postgres_schema

        assert pg_url is not None
        store = PostgresStore(fresh_postgres_schema(pg_url))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def bench_claims(
    kind: str, work: Path, pg_url: str | None, levels: Sequence[int], spreads: Sequence[int]
) -> dict[str, Any]:
    rows = []
    plans: dict[str, list[str]] = {}
    fills: dict[str, float] = {}
    for conversations in spreads:
        async with opened(kind, work, pg_url) as store:
            queued = 0
            for level in (0, *levels):
                seconds = await fill(store, conversations, queued, level)
                if level > queued:
                    fills[f"{conversations}x{level}"] = round((level - queued) / seconds)
                queued = level
                row = await measure(store, conversations, level, f"m{level}")
                rows.append(row)
                print(
                    f"   {kind:8} {conversations:>6,} conv. {level:>9,} queued: "
                    f"claim {fmt(row['claim_taking']['median_ms'], 2)} ms"
                    f" (heads running {fmt(row['claim_heads_running']['median_ms'], 2)} ms), next_due_in "
                    f"{fmt(row['next_due_in']['median_ms'], 3)} ms, finish {fmt(row['finish']['median_ms'], 2)} ms",
                    flush=True,
                )
            plans[f"{conversations} conversations, {queued:,} queued"] = claim_plan(store)
    return {"rows": rows, "plans": plans, "fill_jobs_per_s": fills}


# -- 2 and 3. draining one conversation, and acks meanwhile -----------------------------------------------


async def sequential_limit(amojo: Amojo, transport: str, n: int = 1000) -> float:
    """Messages/s of ``send_message`` to the fake amojo one after the other: one conversation's limit."""
    client = AmojoClient(CHANNEL_ID, CHANNEL_SECRET, base_url=f"http://{HOST}:{amojo.port}", transport=transport)
    tag = f"seq{time.time_ns()}"
    try:
        started = 0.0
        for i in range(n + 100):
            if i == 100:  # warmed up
                started = time.perf_counter()
            now = time.time()
            payload = wire.MessagePayload(
                timestamp=int(now),
                msec_timestamp=int(now * 1000),
                msgid=f"{tag}-{i}",
                conversation_id=f"{INSTANCE}:sequential",
                source=wire.Source(external_id=INSTANCE),
                sender=wire.Participant(id=f"{INSTANCE}:sequential-client", name="Client"),
                message=wire.MessageContent(type="text", text=f"{tag} {i}: добрый день, когда будет доставка?"),
            )
            await client.send_message(SCOPE_ID, payload)
        return n / (time.perf_counter() - started)
    finally:
        await client.aclose()


TURNS = 5
DRAIN_TURN = 2.0
"""How many times the limit and the drain are measured in turns, and how long each drain turn lasts."""


class Arrivals:
    """The backlog's messages amojo received so far, read incrementally from its records."""

    def __init__(self, amojo: Amojo, tag: str) -> None:
        self.amojo = amojo
        self.tag = tag
        self.seen = 0
        self.read = 0

    def poll(self) -> int:
        fresh = self.amojo.records(self.read)["records"]
        self.read += len(fresh)
        self.seen += sum(1 for record in fresh if record[1].startswith(f"{INSTANCE}:c0:{self.tag}"))
        return self.seen


async def drain_and_limit(process: Process, amojo: Amojo, arrivals: Arrivals, transport: str) -> dict[str, Any]:
    """The drain's rate and the chat's limit, measured in :data:`TURNS` turns: the limit while the
    connector is stopped (SIGSTOP: neither competes with the other for the two cores), then the drain
    for :data:`DRAIN_TURN` seconds; per turn the drain's share of the limit, and the medians."""
    turns: list[dict[str, float]] = []
    cpu = drained = 0.0
    for _ in range(TURNS):
        os.kill(process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.05)  # amojo answers what the connector had in flight
            limit = await sequential_limit(amojo, transport, n=600)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await asyncio.sleep(0.3)  # back in its stride
        cpu_before, count_before, started = process.cpu_seconds(), arrivals.poll(), time.perf_counter()
        await asyncio.sleep(DRAIN_TURN)
        count, elapsed = arrivals.poll() - count_before, time.perf_counter() - started
        cpu += process.cpu_seconds() - cpu_before
        drained += count
        turns.append(
            {"limit": round(limit, 1), "drain": round(count / elapsed, 1), "share": round(count / elapsed / limit, 3)}
        )
    return {
        "limit": statistics.median(t["limit"] for t in turns),
        "drain": statistics.median(t["drain"] for t in turns),
        "share": statistics.median(t["share"] for t in turns),
        "cpu_ms": cpu * 1000 / max(drained, 1),
        "turns": turns,
    }


async def fill_backlog(port: int, backlog: int, tag: str) -> dict[str, Any]:
    """Send ``backlog`` client messages of one chat (``c0``), 32 at a time; how it went."""
    plan = fakechat_plan(port, backlog, 1, tag)
    pool = RawPool(HOST, port, 32)
    statuses: dict[str, int] = {}
    lanes = iter(plan)
    started = time.perf_counter()

    async def lane() -> None:
        for item in lanes:
            status, _ = await pool.request(item.request)
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    await asyncio.gather(*(lane() for _ in range(32)))
    await pool.close()
    return {"statuses": statuses, "seconds": round(time.perf_counter() - started, 1)}


async def acks_at(port: int, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Ack latency of an open loop of client messages from 1,000 chats other than the backlog's (``c0``)."""
    plan = [p for p in fakechat_plan(port, int(rate * seconds * 1.1), 1001, tag) if p.conv != 0]
    pool = RawPool(HOST, port, 64)
    try:
        outcomes, meta = await open_loop(
            pool, [p.request for p in plan[: int(rate * seconds)]], rate, budget=seconds + 1
        )
    finally:
        await pool.close()
    errors = sum(1 for o in outcomes if o.scheduled and o.status != 200)
    acks = latency_summary([o.done - o.scheduled for o in outcomes if o.status == 200])
    return {"offered_per_s": rate, "errors": errors, **acks, "launch_lag_max_ms": meta["launch_lag_max_ms"]}


def acks_line(acks: dict[str, Any]) -> str:
    return (
        f"p50 {fmt(acks['p50_ms'], 2)} ms, p99 {fmt(acks['p99_ms'], 2)} ms, p99.9 {fmt(acks['p99_9_ms'], 2)} ms, "
        f"{acks['errors']} errors"
    )


async def bench_drain(
    kind: str, work: Path, logs: Path, pg_url: str | None, backlog: int, transport: str
) -> dict[str, Any]:
    directory = work / f"drain-{kind}"
    store_url = ""
    if kind == "postgres":
        assert pg_url is not None
        store_url = fresh_postgres_schema(pg_url)
    # Ingest the backlog while amojo is a socket that never answers: the chat's first job waits,
    # the rest queue behind it. Stopping the connector leaves that job to run again.
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind((HOST, 0))
    hole.listen(64)
    hole_url = f"http://{HOST}:{hole.getsockname()[1]}"
    settings: dict[str, Any] = {"store_url": store_url, "transport": transport}
    idle_settings = dict(settings, store_url=fresh_postgres_schema(pg_url) if pg_url and store_url else "")
    filler = connector(f"fill-{kind}", directory, logs, amojo_url=hole_url, messenger_url=hole_url, **settings)
    filler.start()
    tag = f"b{time.time_ns() % 10**9}"
    try:
        filled = await fill_backlog(filler.port, backlog, tag)
    finally:
        filler.stop()
        hole.close()
    print(f"   {backlog:,} messages of one chat queued in {filled['seconds']} s {filled['statuses']}", flush=True)
    amojo = start_amojo(logs)
    amojo_url = f"http://{HOST}:{amojo.port}"
    idle = connector(
        f"idle-{kind}", work / f"idle-{kind}", logs, amojo_url=amojo_url, messenger_url=amojo_url, **idle_settings
    )
    try:
        idle.start()
        await acks_at(idle.port, RATE, 3.0, tag + "w")  # warm-up
        acks_idle = await acks_at(idle.port, RATE, SECONDS, tag + "i")
    finally:
        idle.stop()
    print(f"   acks at {RATE:g}/s, no backlog: {acks_line(acks_idle)}", flush=True)
    server = connector(f"drain-{kind}", directory, logs, amojo_url=amojo_url, messenger_url=amojo_url, **settings)
    try:
        arrivals = Arrivals(amojo, tag)
        server.start()
        await asyncio.sleep(2.0)  # started and draining
        assert server.process is not None
        measured = await drain_and_limit(server.process, amojo, arrivals, transport)
        limit, alone, share, cpu_ms = measured["limit"], measured["drain"], measured["share"], measured["cpu_ms"]
        print(
            f"   drains {alone:,.0f} msg/s alone ({cpu_ms:.2f} ms of the connector's CPU a message); the chat's "
            f"limit (sequential send_message) {limit:,.0f} msg/s: {share:.0%} (medians of {TURNS} turns: "
            + ", ".join(f"{t['share']:.0%}" for t in measured["turns"])
            + ")",
            flush=True,
        )
        before, started = arrivals.poll(), time.perf_counter()
        acks = await acks_at(server.port, RATE, SECONDS, tag + "l")
        during = (arrivals.poll() - before) / (time.perf_counter() - started)
        drained = arrivals.poll()
        print(
            f"   acks at {RATE:g}/s while it drains: {acks_line(acks)}; it drained {during:,.0f} msg/s meanwhile",
            flush=True,
        )
    finally:
        server.stop()
        amojo.stop()
    return {
        "backlog": backlog,
        "fill": filled,
        "transport": transport,
        "sequential_limit_msg_per_s": round(limit, 1),
        "drain_alone_msg_per_s": round(alone, 1),
        "drain_share_of_limit": round(share, 3),
        "drain_turns": measured["turns"],
        "drain_cpu_ms_per_message": round(cpu_ms, 3),
        "acks_no_backlog": acks_idle,
        "acks_while_draining": acks,
        "drain_during_acks_msg_per_s": round(during, 1),
        "backlog_delivered_by_the_end": drained,
    }


# -- the run ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(f"Machine: {machine_line(info)}", flush=True)
    stores = args.stores.split(",")
    parts = args.only.split(",")
    top = 100_000 if args.quick else args.max_backlog
    levels = [n for n in (10_000, 100_000, 1_000_000) if n <= top]
    output: dict[str, Any] = {"machine": info, "quick": args.quick, "claims": {}, "drain": {}}
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-backlog-"))
    logs = work / "logs"
    logs.mkdir()
    # A durable ack waits for an fsync: its latency here is the floor of the acks' (SQLite's, at least).
    info["store_filesystem"], info["fsync_4k"] = filesystem(work), fsync_probe(work)
    print(f"store on {info['store_filesystem']}; fsync of 4 KiB: {info['fsync_4k']}", flush=True)
    server = None
    try:
        with children():
            pg_url = None
            if "postgres" in stores:
                from amoconnect.testing.pgserver import TemporaryPostgres

                server = TemporaryPostgres(durable=True)
                pg_url = server.start()
            for kind in stores:
                if "claims" in parts:
                    print(f"1. claim cost against the backlog ({kind})", flush=True)
                    output["claims"][kind] = await bench_claims(
                        kind, work, pg_url, levels, [int(n) for n in args.conversations.split(",")]
                    )
                if "drain" in parts:
                    print(f"2–3. draining one conversation, acks meanwhile ({kind})", flush=True)
                    output["drain"][kind] = await bench_drain(
                        kind, work, logs, pg_url, 30_000 if args.quick else args.drain_backlog, args.transport
                    )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return output


def claims_table(output: dict[str, Any]) -> str:
    rows = []
    for kind, result in output["claims"].items():
        for row in result["rows"]:
            rows.append(
                [
                    kind,
                    fmt(row["conversations"]),
                    fmt(row["backlog"]),
                    fmt(row["claim_taking"]["median_ms"], 2),
                    fmt(row["claim_heads_running"]["median_ms"], 2),
                    fmt(row["next_due_in"]["median_ms"], 3),
                    fmt(row["finish"]["median_ms"], 2),
                ]
            )
    headers = ["store", "conv.", "queued", "claim ms", "claim, heads running ms", "next_due_in ms", "finish ms"]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="up to 100,000 jobs, a 30,000-job drain")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--only", default="claims,drain", help="comma-separated parts: claims, drain")
    parser.add_argument("--conversations", default="1,10,10000", help="part 1: the backlog spread over these")
    parser.add_argument("--max-backlog", type=int, default=1_000_000, help="largest queue of part 1")
    parser.add_argument("--drain-backlog", type=int, default=100_000, help="the one conversation's backlog")
    parser.add_argument("--transport", default="aiohttp", choices=["aiohttp", "httpx"])
    add_save_option(parser)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    output = asyncio.run(run(args))
    print()
    if output["claims"]:
        print(claims_table(output))
    name = "backlog-quick" if args.quick else "backlog"
    if args.only != "claims,drain" or args.stores != "sqlite,postgres":
        name += "-" + "-".join(args.only.split(",") + args.stores.split(","))
    print(f"\nwritten to {write_results(name, output, save=args.save)}")


if __name__ == "__main__":
    sys.exit(main())
