"""Fleet benchmark: durable ingest and end-to-end relay with 1, 2 and 4 connector processes on one PostgreSQL.

The same loads as ``bench_relay.py`` (its generators, fakes and checks), spread round robin
over N ``amoconnect run`` processes that share one PostgreSQL database, as a load balancer
would spread them:

1. Durable ingest: signed amoCRM webhooks, open loop; the offered rate steps up until a step is
   not sustained. The relay is held (one job per process waits on a messenger that never
   answers), so only ingest is measured; rows in the database are counted against the acks.
2. End-to-end relay: fakechat webhooks from 200 conversations, relayed to amojo by whichever
   process claims them; throughput (closed loop, one message in flight per conversation),
   checked on amojo's records for loss, duplicates and per-conversation order.
3. A source added at run time: three processes; a source is added through one process's admin API
   (``POST /admin/api/accounts/{account}/sources``, what ``amoconnect sources add`` does) and a
   messenger webhook for it is sent to another process every 5 ms until one is accepted: the time
   from the add to that first acceptance (the registry's ``LISTEN/NOTIFY``), over ``--adds`` sources.

The PostgreSQL server is a throwaway one started here (``initdb`` in a temporary directory)
with durable settings (``fsync=on``, ``synchronous_commit=on``): an ack means the row is on disk.

    python bench/bench_fleet.py                 # about 4 minutes
    python bench/bench_fleet.py --quick         # about 2 minutes
    python bench/bench_fleet.py --processes 1,2
    python bench/bench_fleet.py --only add      # part 3 alone, a few seconds

Results are printed and written to bench/out/fleet.json (or fleet-quick.json); ``--save`` writes
them to bench/results/ instead, over the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import (
    RawPool,
    add_save_option,
    children,
    fmt,
    machine,
    machine_line,
    post_bytes,
    table,
    write_results,
)
from bench_relay import (
    HOST,
    RELAY_CONVERSATIONS,
    WEBHOOK_SECRET,
    Server,
    amocrm_hook,
    check_delivery,
    closed_lanes,
    connector,
    fakechat_plan,
    ingest_step_summary,
    open_loop,
    seed_conversations,
    start_amojo,
    wait_records,
)

from amoconnect.store.postgres import PostgresStore
from amoconnect.testing.fakechat_api import SIGNATURE_HEADER, signature_of
from amoconnect.testing.pgserver import TemporaryPostgres
from amoconnect.testing.stores import fresh_postgres_schema, table_rows


class Spread:
    """Round robin over the connection pools of several servers: a load balancer in the generator."""

    def __init__(self, pools: list[RawPool]) -> None:
        self.pools = pools
        self.request_timeout = pools[0].request_timeout
        self._next = 0

    @property
    def failures(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for pool in self.pools:
            for name, count in pool.failures.items():
                merged[name] = merged.get(name, 0) + count
        return merged

    async def request(self, data: bytes) -> tuple[int | None, bytes]:
        pool = self.pools[self._next % len(self.pools)]
        self._next += 1
        return await pool.request(data)

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()


def fleet(name: str, n: int, url: str, work: Path, logs: Path, **settings: Any) -> list[Server]:
    """``n`` connector processes on the store at ``url``, started."""
    servers = [connector(f"{name}-{i}", work / f"{name}-{i}", logs, store_url=url, **settings) for i in range(n)]
    for server in servers:
        server.start()
    return servers


def spread(servers: list[Server], connections: int) -> Spread:
    return Spread([RawPool(HOST, s.port, max(8, connections // len(servers))) for s in servers])


async def ingest(n: int, base_url: str, work: Path, logs: Path, quick: bool) -> dict[str, Any]:
    url = fresh_postgres_schema(base_url)
    await seed_conversations(PostgresStore(url))
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # a messenger that never answers
    hole.bind((HOST, 0))
    hole.listen(64)
    hole_url = f"http://{HOST}:{hole.getsockname()[1]}"
    servers = fleet(
        f"ingest{n}", n, url, work, logs, amojo_url=hole_url, messenger_url=hole_url, concurrency=1, http_timeout=3600.0
    )
    pool = spread(servers, 128)
    tag = f"f{n}i{int(time.time())}"
    acks = 0
    steps: list[dict[str, Any]] = []
    try:
        warm = [amocrm_hook(servers[0].port, i, tag + "w") for i in range(500)]
        outcomes, _ = await open_loop(pool, warm, 1000, budget=5)  # type: ignore[arg-type]
        acks += sum(1 for o in outcomes if o.status == 200)
        seconds = 4.0 if quick else 8.0
        requests = [amocrm_hook(servers[0].port, i, tag + "l") for i in range(int(500 * seconds))]
        outcomes, meta = await open_loop(pool, requests, 500, budget=seconds + 1)  # type: ignore[arg-type]
        at_500 = ingest_step_summary(outcomes, meta, 500)
        acks += at_500["acked"]
        print(f"   {n} process(es): ack at 500/s p50 {fmt(at_500['p50_ms'], 2)} ms, p99 {fmt(at_500['p99_ms'], 2)} ms")
        step_seconds = 2.0 if quick else 4.0
        for rate in (1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000):
            await asyncio.sleep(1.0)
            requests = [amocrm_hook(servers[0].port, i, f"{tag}s{rate}") for i in range(int(rate * step_seconds))]
            outcomes, meta = await open_loop(pool, requests, rate, budget=step_seconds + 1)  # type: ignore[arg-type]
            step = ingest_step_summary(outcomes, meta, rate)
            acks += step["acked"]
            steps.append(step)
            print(
                f"   {n} process(es): offered {rate:>6,}/s: {fmt(step['acks_per_s'], 0):>7} acks/s, "
                f"p99 {fmt(step['p99_ms'], 2)} ms, errors {step['errors']}, "
                f"{'sustained' if step['sustained'] else 'NOT sustained'}",
                flush=True,
            )
            if not step["sustained"]:
                break
    finally:
        await pool.close()
        for server in servers:
            server.stop()
        hole.close()
    probe = PostgresStore(url)
    rows = table_rows(probe, "queue")[0][0]
    dedup = table_rows(probe, "dedup")[0][0]
    sustained = [s["acks_per_s"] for s in steps if s["sustained"]]
    return {
        "processes": n,
        "at_500_per_s": at_500,
        "steps": steps,
        "max_sustained_acks_per_s": max(sustained, default=0.0),
        "acks_total": acks,
        "rows_committed": rows,
        "dedup_keys": dedup,
        "rows_equal_acks": rows == acks == dedup,
    }


async def relay(n: int, base_url: str, work: Path, logs: Path, quick: bool, transport: str) -> dict[str, Any]:
    url = fresh_postgres_schema(base_url)
    amojo = start_amojo(logs)
    servers = fleet(
        f"relay{n}", n, url, work, logs, amojo_url=f"http://{HOST}:{amojo.port}", messenger_url="", transport=transport
    )
    pool = spread(servers, 64)
    tag = f"f{n}r{int(time.time()) % 100000}"
    try:
        warm = fakechat_plan(servers[0].port, 400, RELAY_CONVERSATIONS, tag + "w")
        await closed_lanes(pool, warm, budget=20)  # type: ignore[arg-type]
        await wait_records(amojo, 0, {p.msgid for p in warm}, budget=30)
        base = amojo.records(0)["total"]
        count = 4000 if quick else 10000
        plan = fakechat_plan(servers[0].port, count, RELAY_CONVERSATIONS, tag + "t")
        started = time.time()
        outcomes = await closed_lanes(pool, plan, budget=90)  # type: ignore[arg-type]
        acked_at = time.time()
        records = await wait_records(amojo, base, {p.msgid for p in plan}, budget=90)
        check = check_delivery(plan, outcomes, records)
        arrival = check.pop("_arrival")
        last = max(arrival.values()) if arrival else acked_at
    finally:
        await pool.close()
        for server in servers:
            server.stop()
        amojo.stop()
    result = {
        "processes": n,
        "transport": transport,
        "messages": count,
        "messages_per_s": round(check["delivered"] / (last - started), 1) if last > started else None,
        "acks_per_s": round(check["acked"] / (acked_at - started), 1),
        **check,
    }
    print(
        f"   {n} process(es): {fmt(result['messages_per_s'], 0)} msg/s; lost {check['lost_after_ack']}, "
        f"dup {check['duplicates']}, order violations {check['order_violations']}",
        flush=True,
    )
    return result


ADMIN_TOKEN = "bench-admin-token-0123456789abcdef0123"


def _webhook(port: int, instance: str, n: int) -> bytes:
    """A signed fakechat webhook: a client's message to ``instance``."""
    body = json.dumps(
        {
            "update_id": n,
            "message": {
                "message_id": f"add-{n}",
                "chat": {"id": f"c{n}"},
                "from": {"id": f"u{n}", "name": "Client"},
                "date": int(time.time()),
                "text": "hello",
            },
        }
    ).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature_of(body, WEBHOOK_SECRET)}
    return post_bytes(HOST, port, f"/hooks/fake/{instance}", body, headers)


async def add_to_first_message(base_url: str, work: Path, logs: Path, adds: int) -> dict[str, Any]:
    """Seconds from a source's add in one process to the first message to it accepted by another."""
    url = fresh_postgres_schema(base_url)
    amojo = start_amojo(logs)
    servers = [
        connector(f"add-{i}", work / f"add-{i}", logs, store_url=url, amojo_url=f"http://{HOST}:{amojo.port}",
                  messenger_url="")
        for i in range(3)
    ]  # fmt: skip
    for server in servers:
        config = work / server.name / "amoconnect.toml"
        config.write_text(config.read_text() + f'\n[admin]\ntoken = "{ADMIN_TOKEN}"\n')
        server.start()
    pools = [RawPool(HOST, s.port, 2) for s in servers]
    added_s: list[float] = []
    first_s: list[float] = []
    tries: list[int] = []
    try:
        for k in range(adds):
            adder, receiver = servers[k % 3], k % 3 + 1
            instance = f"added{k}"
            spec = {"name": instance, "plugin": "fake", "settings": {"token": f"9:{k}", "secret": WEBHOOK_SECRET}}
            body = json.dumps(spec).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"}
            request = post_bytes(HOST, adder.port, "/admin/api/accounts/bench/sources", body, headers)
            began = time.perf_counter()
            status, answer = await pools[k % 3].request(request)
            if status not in (200, 201):
                raise RuntimeError(f"adding {instance} answered {status}: {answer[:300]!r}")
            added_s.append(time.perf_counter() - began)
            pool = pools[receiver % 3]
            for attempt in range(1, 2001):
                status, _ = await pool.request(_webhook(servers[receiver % 3].port, instance, k * 10_000 + attempt))
                if status == 200:
                    first_s.append(time.perf_counter() - began)
                    tries.append(attempt)
                    break
                await asyncio.sleep(0.005)
            else:
                raise RuntimeError(f"{instance} was not accepted by another process within 10 s")
    finally:
        for pool in pools:
            await pool.close()
        for server in servers:
            server.stop()
        amojo.stop()
    first_s.sort()
    result = {
        "processes": 3,
        "adds": adds,
        "add_request_ms_median": statistics.median(added_s) * 1000,
        "add_to_first_accepted_ms": {
            "median": statistics.median(first_s) * 1000,
            "max": first_s[-1] * 1000,
        },
        "refused_before_first_median": statistics.median(tries) - 1,
    }
    first = result["add_to_first_accepted_ms"]
    print(
        f"   add → first message accepted by another process: median {fmt(first['median'], 1)} ms, "
        f"max {fmt(first['max'], 1)} ms (the add request itself {fmt(result['add_request_ms_median'], 1)} ms)",
        flush=True,
    )
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(f"machine: {machine_line(info)}")
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-fleet-"))
    logs = work / "logs"
    logs.mkdir()
    counts = [int(p) for p in args.processes.split(",")]
    output: dict[str, Any] = {"benchmark": "fleet", "quick": args.quick, "machine": info, "processes": counts}
    with TemporaryPostgres(durable=True) as server, children():
        output["postgresql"] = "throwaway server, fsync=on, synchronous_commit=on"
        if args.only in (None, "ingest"):
            print("\n1. durable ingest on PostgreSQL (amoCRM webhooks, open loop, round robin over the processes)")
            output["ingest"] = [await ingest(n, server.url, work, logs, args.quick) for n in counts]
        if args.only in (None, "relay"):
            print(
                f"\n2. end-to-end relay on PostgreSQL ({RELAY_CONVERSATIONS} conversations → amojo, {args.transport})"
            )
            output["relay"] = [await relay(n, server.url, work, logs, args.quick, args.transport) for n in counts]
        if args.only in (None, "add"):
            print("\n3. a source added in one process of three, its first message accepted by another")
            output["add"] = await add_to_first_message(server.url, work, logs, args.adds)
    shutil.rmtree(work, ignore_errors=True)
    return output


def summary_table(output: dict[str, Any]) -> str:
    rows = []
    for ingested, relayed in zip(output["ingest"], output["relay"], strict=True):
        rows.append(
            [
                str(ingested["processes"]),
                fmt(ingested["max_sustained_acks_per_s"], 0),
                f"{fmt(ingested['at_500_per_s']['p50_ms'], 2)} / {fmt(ingested['at_500_per_s']['p99_ms'], 2)} ms",
                "yes" if ingested["rows_equal_acks"] else "NO",
                fmt(relayed["messages_per_s"], 0),
                f"{relayed['lost_after_ack']}/{relayed['duplicates']}/{relayed['order_violations']}",
            ]
        )
    headers = ["processes", "ingest acks/s", "ack p50 / p99 @500/s", "rows = acks", "relay msg/s", "lost/dup/order"]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="fleet benchmark: 1, 2, 4 processes on one PostgreSQL")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--transport", default="aiohttp", choices=["aiohttp", "httpx"])
    parser.add_argument("--only", choices=["ingest", "relay", "add"], help="run one part")
    parser.add_argument("--adds", type=int, default=30, help="sources added in part 3")
    add_save_option(parser)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        output = asyncio.run(run(args))
    else:
        output = uvloop.run(run(args))
    if "ingest" in output and "relay" in output:
        print("\n" + summary_table(output))
    name = "fleet-quick" if args.quick else "fleet"
    path = write_results(f"fleet-{args.only}" if args.only else name, output, save=args.save)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
