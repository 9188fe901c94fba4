"""The registry of accounts and sources with many tenants: load time, memory, and the lookups the ack path makes.

For 1 account and for 10,000 accounts with 5 sources each (50,000 sources), on SQLite: the
rows are written once, then a fresh registry loads them (what a process does at start), its
memory is measured (tracemalloc), and the two lookups an ack makes — the account by scope id for
an amoCRM webhook, the source by instance name for a messenger's — are timed over 200,000 calls
each (p50, p99 of batches of 1,000). The lookups must not get slower with the number of tenants.

    python bench/bench_registry.py [--accounts 10000] [--save]
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

from _support import add_save_option, fmt, machine, machine_line, table, write_results

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
    async def put(i: int) -> None:
        name = f"acc{i}"
        await store.put_account(
            AccountRecord(name=name, amojo_id=f"amojo-{i}", scope_id=f"{CHANNEL}_amojo-{i}", token="t" * 40)
        )
        for j in range(SOURCES_PER_ACCOUNT):
            await store.put_source(
                SourceRecord(
                    name=f"{name}-s{j}", plugin="telegram", account=name, external_id=f"s{j}", settings={"token": "x"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
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
    print("written to", write_results("registry", {"machine": info, "runs": runs}, save=args.save))


if __name__ == "__main__":
    main()
