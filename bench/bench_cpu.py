"""CPU per relayed message: amoconnect next to the two inline baselines, measured in one run.

Each system relays signed fakechat webhooks (client messages from 200 conversations) to amojo
(``FakeAmojo`` in its own process); what is counted is the CPU time (user + system, every
thread, from ``/proc``) of the relay's own process from the first webhook of a cell until amojo
has received the cell's last message, divided by the messages delivered. The systems:

- ``amoconnect``: the connector (``bench/connector.py``) on SQLite (``synchronous=FULL``) and on
  PostgreSQL (a throwaway durable server; its own CPU is not counted), transport ``aiohttp``,
  at the default log level ``info`` (``--log-level`` to change it);
- ``aiohttp inline`` and ``naive sync`` (Flask + requests): ``bench/baselines.py``.

Cells: open loop at 100 msg/s and 400 msg/s (one message in flight per conversation), and
saturation (closed loop, each conversation sending its next message once the previous one is
acknowledged), all with a short text (~80 bytes, a 1 KB webhook); then saturation with a
100 KB text next to a 1 KB one.

    python bench/bench_cpu.py                    # both stores, every cell   (~5 min)
    python bench/bench_cpu.py --quick            # shorter cells             (~3 min)
    python bench/bench_cpu.py --stores sqlite    # amoconnect on one store only

Results are printed and written to bench/out/cpu.json (or cpu-quick.json); ``--save`` writes
them to bench/results/ instead, over the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _support import RawPool, add_save_option, children, fmt, machine, machine_line, post_bytes, table, write_results
from bench_relay import (
    HOST,
    INSTANCE,
    RELAY_CONVERSATIONS,
    WEBHOOK_SECRET,
    Amojo,
    Planned,
    Server,
    _encode,
    _update_ids,
    baseline,
    check_delivery,
    closed_lanes,
    connector,
    open_loop,
    start_amojo,
    wait_records,
)

from amoconnect.testing.fakechat_api import SIGNATURE_HEADER, signature_of

SHORT_TEXT = "добрый день, когда будет доставка? " * 2
"""About 130 bytes of UTF-8: with the update around it, a webhook of under 1 KB."""


def plan(port: int, n: int, tag: str, *, text_bytes: int = 0) -> list[Planned]:
    """``n`` signed fakechat webhooks over :data:`RELAY_CONVERSATIONS` chats; a text of ``text_bytes`` if given."""
    items = []
    seqs: dict[int, int] = defaultdict(int)
    now = int(time.time())
    filler = "x" * text_bytes if text_bytes else ""
    for i in range(n):
        k = i % RELAY_CONVERSATIONS
        seq = seqs[k]
        seqs[k] += 1
        message_id = f"{tag}-{i}"
        text = f"{tag} conv {k} seq {seq}: " + (filler or SHORT_TEXT)
        update = {
            "update_id": next(_update_ids),
            "message": {
                "message_id": message_id,
                "chat": {"id": f"c{k}"},
                "from": {"id": f"u{k}", "name": f"Client {k}"},
                "date": now,
                "text": text,
            },
        }
        body = _encode(update)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature_of(body, WEBHOOK_SECRET)}
        request = post_bytes(HOST, port, f"/hooks/fake/{INSTANCE}", body, headers)
        items.append(Planned(i, k, seq, f"{INSTANCE}:c{k}:{message_id}", request))
    return items


class Cells:
    """The cells of one system: each sends its plan, waits until amojo has every message, reads the CPU."""

    def __init__(self, server: Server, amojo: Amojo, pool: RawPool, tag: str) -> None:
        self.server, self.amojo, self.pool, self.tag = server, amojo, pool, tag
        self.base = 0
        self.count = 0

    def cpu(self) -> float:
        assert self.server.process is not None
        return self.server.process.cpu_seconds()

    async def run(
        self, name: str, n: int, send: Callable[[list[Planned]], Any], *, text_bytes: int = 0
    ) -> dict[str, Any]:
        self.count += 1
        items = plan(self.server.port, n, f"{self.tag}{self.count}", text_bytes=text_bytes)
        load = _load()
        before = self.cpu()
        started = time.time()
        outcomes = await send(items)
        records = await wait_records(self.amojo, self.base, {p.msgid for p in items}, budget=120)
        spent = self.cpu() - before
        self.base += len(records)
        check = check_delivery(items, outcomes, records)
        arrival = check.pop("_arrival")
        last = max(arrival.values()) if arrival else time.time()
        delivered = check["delivered"]
        return {
            "cell": name,
            "messages": n,
            "webhook_bytes": len(items[0].request),
            "cpu_ms_per_message": round(1000 * spent / delivered, 3) if delivered else None,
            "messages_per_s": round(delivered / (last - started), 1) if last > started else None,
            "load_at_start": load,
            **check,
        }


def _load() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


async def measure(name: str, make: Callable[[Amojo], Server], logs: Path, quick: bool) -> dict[str, Any]:
    amojo = start_amojo(logs)
    server = make(amojo)
    try:
        server.start()
        pool = RawPool(HOST, server.port, 64)
        cells = Cells(server, amojo, pool, f"{name[:3]}{int(time.time()) % 100000}-")
        await cells.run("warm-up", 400, lambda items: closed_lanes(pool, items, budget=30))

        def at(rate: float) -> Callable[[list[Planned]], Any]:
            async def send(items: list[Planned]) -> Any:
                outcomes, _ = await open_loop(
                    pool,
                    [p.request for p in items],
                    rate,
                    budget=len(items) / rate + 2,
                    conversations=[p.conv for p in items],
                )
                return outcomes

            return send

        def saturate(items: list[Planned]) -> Any:
            return closed_lanes(pool, items, budget=90)

        seconds = 5 if quick else 10
        saturated = 2000 if quick else 6000
        big = 500 if quick else 1000
        results = [
            await cells.run("100/s", 100 * seconds, at(100)),
            await cells.run("400/s", 400 * seconds, at(400)),
            await cells.run("saturation", saturated, saturate),
            await cells.run("saturation 1 KB", big, saturate, text_bytes=1000),
            await cells.run("saturation 100 KB", big, saturate, text_bytes=100_000),
        ]
        await pool.close()
    finally:
        server.stop()
        amojo.stop()
    by_cell = {r["cell"]: r for r in results}
    print(
        f"   {name:24} CPU ms/msg: "
        + ", ".join(f"{c} {fmt(r['cpu_ms_per_message'], 3)}" for c, r in by_cell.items())
        + f"; lost {sum(r['lost_after_ack'] for r in results)}, dup {sum(r['duplicates'] for r in results)}",
        flush=True,
    )
    return {"system": name, "cells": by_cell}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(f"machine: {machine_line(info)}")
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-cpu-"))
    logs = work / "logs"
    logs.mkdir()
    stores = args.stores.split(",")
    output: dict[str, Any] = {
        "benchmark": "cpu",
        "quick": args.quick,
        "machine": info,
        "log_level": args.log_level,
        "command": " ".join(["python", "bench/bench_cpu.py", *sys.argv[1:]]),
    }
    systems: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"messenger_url": "", "transport": args.transport, "log_level": args.log_level}
    with children():
        print("CPU per relayed message (relay process only)")
        if "sqlite" in stores:

            def on_sqlite(amojo: Amojo) -> Server:
                url = f"http://{HOST}:{amojo.port}"
                return connector("amoconnect-sqlite", work / "sqlite", logs, amojo_url=url, **settings)

            systems.append(await measure("amoconnect (SQLite)", on_sqlite, logs, args.quick))
        if "postgres" in stores:
            from amoconnect.testing.pgserver import TemporaryPostgres
            from amoconnect.testing.stores import fresh_postgres_schema

            with TemporaryPostgres(durable=True) as pg:

                def on_postgres(amojo: Amojo) -> Server:
                    url = f"http://{HOST}:{amojo.port}"
                    store_url = fresh_postgres_schema(pg.url)
                    return connector(
                        "amoconnect-postgres", work / "pg", logs, amojo_url=url, store_url=store_url, **settings
                    )

                systems.append(await measure("amoconnect (PostgreSQL)", on_postgres, logs, args.quick))
        for name, kind in (("aiohttp inline", "aiohttp"), ("naive sync (Flask)", "naive")):
            systems.append(await measure(name, lambda amojo, kind=kind: baseline(kind, amojo, logs), logs, args.quick))
    output["systems"] = systems
    shutil.rmtree(work, ignore_errors=True)
    return output


def summary(systems: Sequence[dict[str, Any]]) -> str:
    inline = next(s for s in systems if s["system"] == "aiohttp inline")["cells"]
    naive = next(s for s in systems if s["system"].startswith("naive"))["cells"]
    cells = ["100/s", "400/s", "saturation"]
    rows = []
    for system in systems:
        row = [system["system"]]
        for cell in cells:
            mine = system["cells"][cell]["cpu_ms_per_message"]
            ratio_inline = mine / inline[cell]["cpu_ms_per_message"] if mine else None
            ratio_naive = mine / naive[cell]["cpu_ms_per_message"] if mine else None
            row.append(f"{fmt(mine, 3)} ({fmt(ratio_inline, 2)}× / {fmt(ratio_naive, 2)}×)")
        small = system["cells"]["saturation 1 KB"]["cpu_ms_per_message"]
        large = system["cells"]["saturation 100 KB"]["cpu_ms_per_message"]
        row.append(f"{fmt(large, 3)} / {fmt(small, 3)} = {fmt(large / small if small else None, 2)}×")
        row.append(" / ".join(fmt(system["cells"][c]["messages_per_s"], 0) for c in ("100/s", "400/s", "saturation")))
        rows.append(row)
    headers = [
        "system",
        "100/s ms (÷inline / ÷naive)",
        "400/s",
        "saturation",
        "100 KB / 1 KB",
        "msg/s 100/400/sat",
    ]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per relayed message against the inline baselines")
    parser.add_argument("--quick", action="store_true", help="shorter cells")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--log-level", default="info", help="the connector's log level (default: info, its default)")
    parser.add_argument("--transport", default="aiohttp", help="the connector's HTTP transport")
    add_save_option(parser)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        output = asyncio.run(run(args))
    else:
        output = uvloop.run(run(args))
    print()
    print(summary(output["systems"]))
    path = write_results("cpu-quick" if args.quick else "cpu", output, save=args.save)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
