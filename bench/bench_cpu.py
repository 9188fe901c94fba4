"""CPU per relayed message: amoconnect next to the two inline baselines, measured in one run.

Each system relays signed fakechat webhooks (client messages from 200 conversations) to amojo
(``FakeAmojo`` in its own process); what is counted is the CPU time (user + system, every
thread, from ``/proc``) of the relay's own process from the first webhook of a cell until amojo
has received the cell's last message, divided by the messages delivered; and how it splits between
the event loop's thread and the others, with the context switches of each. The systems:

- ``amoconnect``: the connector (``bench/connector.py``) on SQLite (``synchronous=FULL``) and on
  PostgreSQL (a throwaway durable server; its own CPU, every backend's, is shown beside the
  connector's as ``+ server``, not in it), transport ``aiohttp``, at the default log level
  ``info`` (``--log-level`` to change it);
- ``aiohttp inline`` and ``naive sync`` (Flask + requests): ``bench/baselines.py``.

Cells: open loop at 100 msg/s and 400 msg/s (one message in flight per conversation), and
saturation (closed loop, each conversation sending its next message once the previous one is
acknowledged), all with a short text (~80 bytes, a 1 KB webhook); then saturation with a
100 KB text next to a 1 KB one.

The systems run side by side for the whole benchmark. Every cell runs ``--rounds`` times, the
systems one after the other within a cell, so that each meets the same spells of a shared
machine; a cell's figure is the median of its rounds (every round is kept in the JSON).

    python bench/bench_cpu.py                    # both stores, every cell, 3 rounds   (~10 min)
    python bench/bench_cpu.py --quick            # shorter cells, 1 round              (~2 min)
    python bench/bench_cpu.py --stores sqlite    # amoconnect on one store only
    python bench/bench_cpu.py --quick --rounds 4 --stores sqlite --compare ../before
                                                 # and the code of another checkout beside it (A/B),
                                                 # on each store named
    python bench/bench_cpu.py --cells 5/s,100/s  # only these cells (5 msg/s is run only when asked)
    python bench/bench_cpu.py --quick --calls --stores sqlite --cells 100/s,saturation
                                                 # Python calls per message instead of CPU (_calls.py)

Results are printed and written to bench/out/cpu.json (or cpu-quick.json; ``-cells`` and ``-calls``
are added for a run of some cells or of counts); ``--save`` writes them to bench/results/ instead,
over the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import _calls
from _support import (
    RawPool,
    add_save_option,
    children,
    fmt,
    machine,
    machine_line,
    post_bytes,
    table,
    tree_cpu_seconds,
    write_results,
)
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
from amoconnect.testing.pgserver import TemporaryPostgres
from amoconnect.testing.stores import fresh_postgres_schema

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

    def __init__(
        self,
        server: Server,
        amojo: Amojo,
        pool: RawPool,
        tag: str,
        calls: str | None = None,
        database: Callable[[], int | None] | None = None,
    ) -> None:
        self.server, self.amojo, self.pool, self.tag = server, amojo, pool, tag
        self.base = 0
        self.count = 0
        self.calls = calls
        """Count the server's Python calls (:mod:`_calls`; the file template) instead of timing it."""
        self.database = database
        """The process id of the database server, whose CPU a message is read too (None: no server)."""

    def database_cpu(self) -> float | None:
        pid = self.database() if self.database is not None else None
        return tree_cpu_seconds(pid) if pid is not None else None

    def cpu(self) -> float:
        assert self.server.process is not None
        return self.server.process.cpu_seconds()

    async def run(
        self, name: str, n: int, send: Callable[[list[Planned]], Any], *, text_bytes: int = 0
    ) -> dict[str, Any]:
        self.count += 1
        items = plan(self.server.port, n, f"{self.tag}{self.count}", text_bytes=text_bytes)
        load = _load()
        assert self.server.process is not None
        count = _calls.Count(self.server.process.pid, self.calls) if self.calls else None
        if count is not None:
            count.start()
        before = self.cpu()
        database_before = self.database_cpu()
        threads_before = self.server.process.threads()
        started = time.time()
        outcomes = await send(items)
        records = await wait_records(self.amojo, self.base, {p.msgid for p in items}, budget=120)
        spent = self.cpu() - before
        database_after = self.database_cpu()
        database = None if database_after is None or database_before is None else database_after - database_before
        threads = {k: v - threads_before[k] for k, v in self.server.process.threads().items()}
        self.base += len(records)
        check = check_delivery(items, outcomes, records)
        arrival = check.pop("_arrival")
        last = max(arrival.values()) if arrival else time.time()
        delivered = check["delivered"]
        result = {
            "cell": name,
            "messages": n,
            "webhook_bytes": len(items[0].request),
            "cpu_ms_per_message": round(1000 * spent / delivered, 3) if delivered and count is None else None,
            "messages_per_s": round(delivered / (last - started), 1) if last > started else None,
            "database_cpu_ms_per_message": round(1000 * database / delivered, 3)
            if database is not None and delivered and count is None
            else None,
            "load_at_start": load,
            "by_thread_per_message": {
                key.replace("cpu_s", "cpu_ms"): round((1000 if key.endswith("cpu_s") else 1) * value / delivered, 3)
                for key, value in threads.items()
            }
            if delivered
            else None,
            **check,
        }
        if count is not None:
            result["calls"] = await count.stop(delivered)
        return result


def _load() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


CELLS = ("100/s", "400/s", "saturation", "saturation 1 KB", "saturation 100 KB")
RATES = ("5/s", "100/s", "400/s")
"""The open-loop cells ``--cells`` may name; 5 msg/s (a small account's traffic) is not run by default."""


class System:
    """One system under test, running beside the others for the whole benchmark: its own amojo, its
    server, a warmed-up connection pool; :meth:`cell` runs one cell of it."""

    def __init__(
        self,
        name: str,
        make: Callable[[Amojo], Server],
        logs: Path,
        quick: bool,
        cells: Sequence[str] = CELLS,
        calls: str | None = None,
        database: Callable[[], int | None] | None = None,
    ) -> None:
        self.name, self.make, self.logs, self.quick, self.calls = name, make, logs, quick, calls
        self.database = database
        """The process id of the database server the system uses, whose CPU a message is read too."""
        self.results: dict[str, list[dict[str, Any]]] = {cell: [] for cell in cells}

    async def start(self) -> None:
        self.amojo = start_amojo(self.logs)
        self.server = self.make(self.amojo)
        self.server.start()
        self.pool = RawPool(HOST, self.server.port, 64)
        tag = f"{self.name[:3]}{int(time.time()) % 100000}-"
        self.cells = Cells(self.server, self.amojo, self.pool, tag, database=self.database)
        await self.cells.run("warm-up", 400, self._saturate)
        self.cells.calls = self.calls  # counted from the first cell on

    async def stop(self) -> None:
        await self.pool.close()
        self.server.stop()
        self.amojo.stop()

    def _saturate(self, items: list[Planned]) -> Any:
        return closed_lanes(self.pool, items, budget=90)

    def _at(self, rate: float) -> Callable[[list[Planned]], Any]:
        async def send(items: list[Planned]) -> Any:
            outcomes, _ = await open_loop(
                self.pool,
                [p.request for p in items],
                rate,
                budget=len(items) / rate + 2,
                conversations=[p.conv for p in items],
            )
            return outcomes

        return send

    async def cell(self, name: str) -> dict[str, Any]:
        seconds = 5 if self.quick else 10
        big = 500 if self.quick else 1000
        if name in RATES:
            rate = int(name.removesuffix("/s"))
            result = await self.cells.run(name, max(rate * seconds, 100), self._at(rate))
        elif name == "saturation":
            result = await self.cells.run(name, 2000 if self.quick else 6000, self._saturate)
        else:
            text_bytes = 1000 if name == "saturation 1 KB" else 100_000
            result = await self.cells.run(name, big, self._saturate, text_bytes=text_bytes)
        self.results[name].append(result)
        return result

    def summary(self) -> dict[str, Any]:
        """Per cell: the median of its rounds' CPU a message (and of their msg/s), every round kept."""
        cells = {}
        for name, rounds in self.results.items():
            counted = sorted((r["calls"] for r in rounds if r.get("calls")), key=lambda c: c["calls_per_message"])
            cells[name] = {
                "cell": name,
                "cpu_ms_per_message": _median(r["cpu_ms_per_message"] for r in rounds),
                "calls": counted[len(counted) // 2] if counted else None,
                "messages_per_s": _median((r["messages_per_s"] for r in rounds), digits=1),
                "by_thread_per_message": _medians([r["by_thread_per_message"] for r in rounds]),
                "database_cpu_ms_per_message": _median(r.get("database_cpu_ms_per_message") for r in rounds),
                "lost_after_ack": sum(r["lost_after_ack"] for r in rounds),
                "duplicates": sum(r["duplicates"] for r in rounds),
                "rounds": rounds,
            }
        return {"system": self.name, "cells": cells}


def _median(figures: Iterable[float | None], digits: int = 3) -> float | None:
    """The median of the figures the rounds have (None: none has one)."""
    present = [f for f in figures if f is not None]
    return round(statistics.median(present), digits) if present else None


def _medians(figures: Sequence[dict[str, float] | None]) -> dict[str, float] | None:
    """Each figure's median over the rounds that have them."""
    present = [f for f in figures if f]
    return {key: round(statistics.median(f[key] for f in present), 3) for key in present[0]} if present else None


async def measure(systems: Sequence[System], rounds: int) -> list[dict[str, Any]]:
    """Every cell ``rounds`` times, the systems one after the other within each cell, so that each
    system meets the same spells of the shared machine; the medians per system and cell."""
    counting = systems[0].calls is not None  # every system counts calls, or none does
    for system in systems:
        await system.start()
    try:
        for round_ in range(1, rounds + 1):
            for cell in systems[0].results:
                line = []
                for system in systems:
                    result = await system.cell(cell)
                    if counting:
                        line.append(f"{system.name} {fmt((result.get('calls') or {}).get('calls_per_message'), 0)}")
                    else:
                        line.append(f"{system.name} {fmt(result['cpu_ms_per_message'], 3)}")
                what = "Python calls/msg" if counting else "CPU ms/msg"
                print(f"   round {round_}, {cell:17} {what}: " + ", ".join(line), flush=True)
    finally:
        for system in systems:
            await system.stop()
    summaries = [system.summary() for system in systems]
    for summary_ in summaries:
        cells = summary_["cells"].values()
        if counting:
            continue  # calls_summary() tells them
        print(
            f"   {summary_['system']:24} median CPU ms/msg: "
            + ", ".join(f"{c['cell']} {fmt(c['cpu_ms_per_message'], 3)}" for c in cells)
            + f"; lost {sum(c['lost_after_ack'] for c in cells)}, dup {sum(c['duplicates'] for c in cells)}",
            flush=True,
        )
    return summaries


def _fresh_schema(url: str, tree: str) -> str:
    """A fresh schema on the PostgreSQL server at ``url``, migrated by the code of ``tree`` when given (the
    other checkout may be at an older schema version, and refuses a newer one)."""
    if not tree:
        return fresh_postgres_schema(url)
    migrate = "import sys; from amoconnect.testing.stores import fresh_postgres_schema as f; print(f(sys.argv[1]))"
    command = ["env", f"PYTHONPATH={tree}", sys.executable, "-c", migrate, url]
    done = subprocess.run(command, cwd=tree, check=True, capture_output=True, text=True)  # cwd: first on its path
    return done.stdout.strip()


def _connector(
    work: Path, logs: Path, settings: dict[str, Any], store: str, pg: Any, tree: str, amojo: Amojo
) -> Server:
    """amoconnect on ``store`` (``pg``: the PostgreSQL server, a fresh schema of it), relaying to
    ``amojo``; with ``tree``, the code of that checkout (its package and its bench/connector.py)."""
    options: dict[str, Any] = {"store_url": _fresh_schema(pg.url, tree)} if pg is not None else {}
    name = f"amoconnect-{store}" + ("-compared" if tree else "")
    server = connector(name, work / name, logs, amojo_url=f"http://{HOST}:{amojo.port}", **options, **settings)
    if tree:
        python, _, *rest = server.args
        server.args = ["env", f"PYTHONPATH={tree}", python, str(Path(tree) / "bench" / "connector.py"), *rest]
    return server


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(f"machine: {machine_line(info)}")
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-cpu-"))
    logs = work / "logs"
    logs.mkdir()
    stores = args.stores.split(",")
    rounds = args.rounds or (1 if args.quick else 3)
    output: dict[str, Any] = {
        "benchmark": "cpu",
        "quick": args.quick,
        "rounds": rounds,
        "machine": info,
        "log_level": args.log_level,
        "command": " ".join(["python", "bench/bench_cpu.py", *sys.argv[1:]]),
        "counts_calls": args.calls,
    }
    calls = str(work / "calls-{pid}.prof") if args.calls else None
    if calls:
        os.environ[_calls.ENV] = calls  # the servers started from now on count their calls
    settings: dict[str, Any] = {"messenger_url": "", "transport": args.transport, "log_level": args.log_level}
    with children(), contextlib.ExitStack() as stack:
        systems: list[System] = []
        for store in stores:
            label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[store]
            for tree in ("", *([args.compare] if args.compare else [])):  # made absolute by main()
                pg = stack.enter_context(TemporaryPostgres(durable=True)) if store == "postgres" else None
                name = f"amoconnect ({label})" + (f" at {tree.rsplit('/', 1)[-1]}" if tree else "")
                make = functools.partial(_connector, work, logs, settings, store, pg, tree)
                database = (lambda pg=pg: pg.pid) if pg is not None else None
                systems.append(System(name, make, logs, args.quick, args.cells, calls, database))
        for name, kind in (("aiohttp inline", "aiohttp"), ("naive sync (Flask)", "naive")):
            make = functools.partial(baseline, kind, logs=logs)
            systems.append(System(name, make, logs, args.quick, args.cells, calls))
        if calls:
            print(f"Python calls per relayed message on the event loop's thread, {rounds} round(s), medians")
        else:
            print(f"CPU per relayed message (relay process only), {rounds} round(s), medians")
        output["systems"] = await measure(systems, rounds)
    shutil.rmtree(work, ignore_errors=True)
    return output


def summary(systems: Sequence[dict[str, Any]]) -> str:
    inline = next(s for s in systems if s["system"] == "aiohttp inline")["cells"]
    naive = next(s for s in systems if s["system"].startswith("naive"))["cells"]
    names = list(inline)
    cells = [c for c in names if c in (*RATES, "saturation")]
    sizes = "saturation 1 KB" in names and "saturation 100 KB" in names
    rows = []
    for system in systems:
        row = [system["system"]]
        for cell in cells:
            mine = system["cells"][cell]["cpu_ms_per_message"]
            ratio_inline = mine / inline[cell]["cpu_ms_per_message"] if mine else None
            ratio_naive = mine / naive[cell]["cpu_ms_per_message"] if mine else None
            database = system["cells"][cell].get("database_cpu_ms_per_message")
            also = f" + server {fmt(database, 3)}" if database is not None else ""
            row.append(f"{fmt(mine, 3)} ({fmt(ratio_inline, 2)}× / {fmt(ratio_naive, 2)}×){also}")
        if sizes:
            small = system["cells"]["saturation 1 KB"]["cpu_ms_per_message"]
            large = system["cells"]["saturation 100 KB"]["cpu_ms_per_message"]
            row.append(f"{fmt(large, 3)} / {fmt(small, 3)} = {fmt(large / small if small else None, 2)}×")
        row.append(" / ".join(fmt(system["cells"][c]["messages_per_s"], 0) for c in cells))
        rows.append(row)
    headers = ["system", *(f"{c} ms (÷inline / ÷naive)" for c in cells)]
    headers += ["100 KB / 1 KB"] if sizes else []
    headers.append("msg/s " + " / ".join(cells))
    return table(headers, rows)


def threads_summary(systems: Sequence[dict[str, Any]]) -> str:
    """Where a message's CPU goes in each cell: the event loop's thread and the others (the SQLite
    store's commits and fsyncs), and how often each waited (voluntary switches) or was preempted."""
    rows = []
    for system in systems:
        for cell, figures in system["cells"].items():
            f = figures.get("by_thread_per_message")
            if f and f["others_cpu_ms"] + f["main_cpu_ms"] > 0:
                rows.append(
                    [
                        system["system"],
                        cell,
                        fmt(f["main_cpu_ms"], 3),
                        fmt(f["others_cpu_ms"], 3),
                        f"{fmt(f['main_voluntary'], 1)} / {fmt(f['main_involuntary'], 1)}",
                        f"{fmt(f['others_voluntary'], 1)} / {fmt(f['others_involuntary'], 1)}",
                    ]
                )
    headers = ["system", "cell", "loop's thread ms", "other threads ms", "loop waits / preempted", "others"]
    return "per message, by thread (the Flask relay's threads end before they are read):\n" + table(headers, rows)


def calls_summary(systems: Sequence[dict[str, Any]]) -> str:
    """Python calls per message in each cell (and the ratio to the inline relay's), SQLite statements
    on the loop, and the packages the calls of the first cell were made in."""
    inline = next(s for s in systems if s["system"] == "aiohttp inline")["cells"]
    cells = list(inline)
    rows, packages = [], []
    for system in systems:
        counted = {cell: system["cells"][cell]["calls"] for cell in cells}
        if not any(counted.values()):
            continue  # a server that does not count (the Flask relay's threads, another checkout's)
        row = [system["system"]]
        for cell in cells:
            mine, theirs = counted[cell], inline[cell]["calls"]
            ratio = mine["calls_per_message"] / theirs["calls_per_message"] if mine and theirs else None
            row.append(f"{fmt(mine and mine['calls_per_message'], 0)} ({fmt(ratio, 2)}×)")
        first = counted[cells[0]]
        row.append(fmt(first and first["sqlite_statements_per_message"], 1))
        rows.append(row)
        if first:
            top = ", ".join(f"{package} {calls:g}" for package, calls in first["by_package"].items() if calls >= 1)
            packages.append(f"{system['system']}, {cells[0]}: {top}")
    headers = ["system", *(f"{c} calls (÷inline)" for c in cells), f"SQLite statements, {cells[0]}"]
    return table(headers, rows) + "\n\nby package (calls per message):\n" + "\n".join(packages)


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per relayed message against the inline baselines")
    parser.add_argument("--quick", action="store_true", help="shorter cells, one round")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of every cell (default: 3, --quick 1)")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--log-level", default="info", help="the connector's log level (default: info, its default)")
    parser.add_argument("--transport", default="aiohttp", help="the connector's HTTP transport")
    parser.add_argument(
        "--compare",
        default="",
        help="a checkout of other code: its connector runs beside the others, on each of --stores (A/B)",
    )
    parser.add_argument(
        "--cells",
        default=",".join(CELLS),
        help=f"comma-separated cells to run (default: all of {', '.join(CELLS)}; also {RATES[0]})",
    )
    parser.add_argument(
        "--calls",
        action="store_true",
        help="count the Python calls per message on each server's event loop instead of timing it (_calls.py)",
    )
    add_save_option(parser)
    args = parser.parse_args()
    args.compare = str(Path(args.compare).resolve()) if args.compare else ""
    args.cells = [cell.strip() for cell in args.cells.split(",")]
    unknown = sorted(set(args.cells) - {*CELLS, *RATES})
    if unknown:
        parser.error(f"unknown cell(s) {', '.join(unknown)}: choose from {', '.join(dict.fromkeys((*RATES, *CELLS)))}")
    try:
        import uvloop
    except ImportError:
        output = asyncio.run(run(args))
    else:
        output = uvloop.run(run(args))
    print()
    print(calls_summary(output["systems"]) if args.calls else summary(output["systems"]))
    if not args.calls:
        print("\n" + threads_summary(output["systems"]))
    name = "cpu-quick" if args.quick else "cpu"
    if args.cells != list(CELLS):
        name += "-cells"  # some cells only: not over the full run's figures
    if args.calls:
        name += "-calls"
    path = write_results(name, output, save=args.save)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
