"""The registry of accounts and sources with many tenants: load time, memory, and the lookups the ack path makes.

For 1 account and for 10,000 accounts with 5 sources each (50,000 sources), on SQLite: the
rows are written once, then a fresh registry loads them (what a process does at start), its
memory is measured (tracemalloc), and the two lookups an ack makes — the account by scope id for
an amoCRM webhook, the source by instance name for a messenger's — are timed over 200,000 calls
each (p50, p99 of batches of 1,000). The lookups must not get slower with the number of tenants.

Then the same two stores under a whole ``amoconnect run`` process (``bench/connector.py``, the
reference messenger ``fake``, every stored source an adapter it builds and starts): the time from
its start to its first ``/healthz`` answer, its resident memory, and the webhook ack path — signed
messenger webhooks to one source, 8 in flight, relayed to the benchmark's amojo — p50 / p99.

    python bench/bench_registry.py [--accounts 10000] [--acks 4000] [--save]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _support import (
    Process,
    RawPool,
    add_save_option,
    children,
    fmt,
    machine,
    machine_line,
    table,
    wait_ready,
    write_results,
)
from bench_relay import HOST, closed_lanes, connector, fakechat_plan, start_amojo

from amoconnect.config import parse_config
from amoconnect.registry import Registry
from amoconnect.store.registry import AccountRecord, SourceRecord
from amoconnect.store.sqlite import SQLiteStore

CHANNEL = "11111111-2222-3333-4444-555555555555"
SOURCES_PER_ACCOUNT = 5
LOOKUPS = 200_000


def _config(path: Path) -> Any:
    return parse_config({"channel": {"id": CHANNEL, "secret": "s" * 40}, "store": {"path": str(path)}})


async def _fill(store: SQLiteStore, accounts: int) -> None:
    """``accounts`` stored accounts with :data:`SOURCES_PER_ACCOUNT` sources of the messenger ``fake`` each."""

    async def put(i: int) -> None:
        name = f"acc{i}"
        await store.put_account(
            AccountRecord(name=name, amojo_id=f"amojo-{i}", scope_id=f"{CHANNEL}_amojo-{i}", token="t" * 40)
        )
        for j in range(SOURCES_PER_ACCOUNT):
            await store.put_source(
                SourceRecord(
                    name=f"{name}-s{j}",
                    plugin="fake",
                    account=name,
                    external_id=f"s{j}",
                    settings={"token": f"{i}:{j}", "secret": "s" * 20},
                )
            )

    for start in range(0, accounts, 500):  # concurrent writes share one commit
        await asyncio.gather(*(put(i) for i in range(start, min(start + 500, accounts))))


def _lookup_p(fn: Any, keys: list[str]) -> tuple[float, float]:
    batches = []
    for start in range(0, LOOKUPS, 1000):
        began = time.perf_counter()
        for k in range(start, start + 1000):
            fn(keys[k % len(keys)])
        batches.append((time.perf_counter() - began) / 1000 * 1e9)
    batches.sort()
    return statistics.median(batches), batches[int(len(batches) * 0.99) - 1]


async def _measure(accounts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "store.sqlite3"
        async with SQLiteStore(path, synchronous="NORMAL") as store:
            began = time.perf_counter()
            await _fill(store, accounts)
            filled = time.perf_counter() - began
        async with SQLiteStore(path) as store:
            tracemalloc.start()
            began = time.perf_counter()
            registry = Registry(_config(path), store)
            await registry.load()
            load = time.perf_counter() - began
            memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            scopes = [f"{CHANNEL}_amojo-{i}" for i in range(accounts)]
            names = [f"acc{i}-s{j}" for i in range(accounts) for j in range(SOURCES_PER_ACCOUNT)]
            scope_p50, scope_p99 = _lookup_p(registry.account_by_scope, scopes)
            source_p50, source_p99 = _lookup_p(registry.source, names)
            began = time.perf_counter()
            await registry.refresh()
            check = time.perf_counter() - began
    return {
        "accounts": accounts,
        "sources": accounts * SOURCES_PER_ACCOUNT,
        "fill_s": filled,
        "load_s": load,
        "memory_mib": memory / 2**20,
        "check_ms": check * 1000,
        "scope_lookup_ns": {"p50": scope_p50, "p99": scope_p99},
        "source_lookup_ns": {"p50": source_p50, "p99": source_p99},
    }


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _process(accounts: int, acks: int, work: Path, logs: Path, amojo_url: str) -> dict[str, Any]:
    """A whole connector process on a store of ``accounts`` (one of them the file's): start, memory, ack p99."""
    directory = work / f"tenants-{accounts}"
    server = connector(f"tenants-{accounts}", directory, logs, amojo_url=amojo_url, messenger_url="")
    if accounts > 1:
        async with SQLiteStore(directory / "amoconnect.sqlite3", synchronous="NORMAL") as store:
            await _fill(store, accounts - 1)
    began = time.time()
    server.process = Process(server.args, server.log)
    ready = wait_ready(f"http://{HOST}:{server.port}/healthz", server.process, timeout=600)
    start_s = ready - began
    rss_start = _rss_mib(server.process.pid)
    pool = RawPool(HOST, server.port, 8)
    try:
        warm = fakechat_plan(server.port, 400, 8, f"w{accounts}")
        await closed_lanes(pool, warm, budget=60)  # type: ignore[arg-type]
        plan = fakechat_plan(server.port, acks, 8, f"t{accounts}")
        outcomes = await closed_lanes(pool, plan, budget=120)  # type: ignore[arg-type]
        rss_after = _rss_mib(server.process.pid)
    finally:
        await pool.close()
        server.stop()
    latencies = sorted((o.done - o.scheduled) * 1000 for o in outcomes if o.status == 200)
    return {
        "accounts": accounts,
        "sources": 1 + (accounts - 1) * SOURCES_PER_ACCOUNT,
        "start_s": start_s,
        "rss_mib_started": rss_start,
        "rss_mib_after_acks": rss_after,
        "acks": len(latencies),
        "refused": len(outcomes) - len(latencies),
        "ack_ms": {
            "p50": statistics.median(latencies) if latencies else None,
            "p99": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        },
    }


async def _processes(accounts: int, acks: int) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-tenants-"))
    logs = work / "logs"
    logs.mkdir()
    amojo = start_amojo(logs)
    try:
        return [await _process(n, acks, work, logs, f"http://{HOST}:{amojo.port}") for n in (1, accounts)]
    finally:
        amojo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--acks", type=int, default=4000, help="webhooks timed per process")
    add_save_option(parser)
    args = parser.parse_args()
    info = machine()
    print(machine_line(info))
    runs = [asyncio.run(_measure(n)) for n in (1, args.accounts)]
    rows = [
        [
            str(r["accounts"]),
            str(r["sources"]),
            fmt(r["load_s"] * 1000),
            fmt(r["memory_mib"]),
            fmt(r["check_ms"], 2),
            f"{fmt(r['scope_lookup_ns']['p50'])} / {fmt(r['scope_lookup_ns']['p99'])}",
            f"{fmt(r['source_lookup_ns']['p50'])} / {fmt(r['source_lookup_ns']['p99'])}",
        ]
        for r in runs
    ]
    print(
        table(
            [
                "accounts",
                "sources",
                "load ms",
                "memory MiB",
                "idle check ms",
                "scope lookup ns p50/p99",
                "source lookup ns p50/p99",
            ],
            rows,
        )
    )
    with children():
        processes = asyncio.run(_processes(args.accounts, args.acks))
    print(
        table(
            ["accounts", "sources", "process start s", "RSS MiB started / after", "acks", "ack ms p50 / p99"],
            [
                [
                    str(p["accounts"]),
                    str(p["sources"]),
                    fmt(p["start_s"], 2),
                    f"{fmt(p['rss_mib_started'], 0)} / {fmt(p['rss_mib_after_acks'], 0)}",
                    str(p["acks"]),
                    f"{fmt(p['ack_ms']['p50'], 2)} / {fmt(p['ack_ms']['p99'], 2)}",
                ]
                for p in processes
            ],
        )
    )
    output = {"machine": info, "runs": runs, "processes": processes}
    print("written to", write_results("registry", output, save=args.save))


if __name__ == "__main__":
    main()
