"""The operator's overview with 10,000 accounts and 50,000 sources, and the webhook acks while it is polled.

For each store (SQLite, PostgreSQL on a throwaway server) a connector process (``bench/connector.py``,
the reference messenger ``fake``) runs on a store of ``--accounts`` accounts (one of them the
file's) with five sources each; a tenth of the accounts need re-authorisation, one in 25 is
disconnected and one source in 100 is failing, so every part of the page has rows. The benchmark
signs in as the operator (the token form, as a browser does) and then:

1. **The page.** ``--requests`` GETs of ``/console/operator/accounts``, one at a time, cycling over
   the first, second, middle and last page and the first and last page of two state filters;
   p50 / p95 / p99 of the answer time (target: p95 under 200 ms).
2. **The acks.** Signed amoCRM webhooks at ``--rate`` per second for ``--seconds``, open loop
   (latency from each request's scheduled time), the relay held as in ``bench_relay.py``'s ingest
   (so only the ack path runs): alone, with a client polling the overview once a second, and
   ``--fast-poll`` times a second, after 5 s of warm-up, in ``--rounds`` interleaved rounds (the
   machine's swings hit every setting alike); p50 / p99 of each setting's acks pooled over the
   rounds. The console is not on the ack path; what a poll can cost the acks is the page's render
   time on the same event loop.

Every process is started by this script and stopped when it ends (SIGTERM, then SIGKILL after
15 s), whatever happens; each phase has a time budget, and ``--budget`` bounds the whole run.

    python bench/bench_console.py [--stores sqlite,postgres] [--accounts 10000] [--requests 200] [--rounds 3] [--save]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _support import (
    CHANNEL_ID,
    Process,
    RawPool,
    add_save_option,
    children,
    fmt,
    latency_summary,
    machine,
    machine_line,
    percentile,
    table,
    wait_ready,
    write_results,
)
from bench_relay import HOST, Server, amocrm_hook, connector, open_loop, seed_conversations

from amoconnect.store.base import Store
from amoconnect.store.registry import AccountRecord, SourceRecord

TOKEN = "bench-operator-token-0123456789abcdef0123"
SOURCES_PER_ACCOUNT = 5
PAGE_TARGET_MS = 200.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


# -- the store ----------------------------------------------------------------------------------


def _account(i: int) -> AccountRecord:
    state = "disconnected" if i % 25 == 0 else "needs_reauth" if i % 10 == 0 else "active"
    return AccountRecord(
        name=f"acc{i:05d}",
        amojo_id=f"amojo-{i}",
        scope_id=f"{CHANNEL_ID}_amojo-{i}",
        subdomain=f"shop{i}",
        domain="kommo.com" if i % 3 == 0 else "amocrm.ru",
        token="t" * 40,
        state=state,  # type: ignore[arg-type]
        state_reason=None if state == "active" else "refresh token refused (invalid_grant)",
        installed_at=1_700_000_000.0 + i * 60,
    )


def _source(i: int, j: int) -> SourceRecord:
    failing = (i * SOURCES_PER_ACCOUNT + j) % 100 == 7
    return SourceRecord(
        name=f"acc{i:05d}-s{j}",
        plugin="fake",
        account=f"acc{i:05d}",
        external_id=f"s{j}",
        settings={"token": f"{i}:{j}", "secret": "s" * 20},
        state="failing" if failing else "active",
        last_error="the messenger refused the token (401 Unauthorized)" if failing else None,
    )


async def fill(store: Store, accounts: int) -> float:
    """``accounts`` stored accounts with their sources; seconds it took."""
    began = time.perf_counter()
    await store.open()
    try:
        registry: Any = store

        async def put(i: int) -> None:
            await registry.put_account(_account(i))
            for j in range(SOURCES_PER_ACCOUNT):
                await registry.put_source(_source(i, j))

        for start in range(1, accounts + 1, 200):  # concurrent writes share commits
            await asyncio.gather(*(put(i) for i in range(start, min(start + 200, accounts + 1))))
    finally:
        await store.close()
    return time.perf_counter() - began


# -- a browser's requests -----------------------------------------------------------------------


class Browser:
    """Plain HTTP/1.1 on one keep-alive connection, keeping the console's cookie (a browser's tab)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.cookie = ""

    def request(self, method: str, path: str, body: str = "") -> tuple[int, bytes]:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if method == "POST":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.conn.request(method, path, body=body or None, headers=headers)
        answer = self.conn.getresponse()
        data = answer.read()
        for name, value in answer.getheaders():
            if name.lower() == "set-cookie":
                self.cookie = value.split(";", 1)[0]
        return answer.status, data

    def sign_in(self) -> None:
        status, form = self.request("GET", "/console/sign-in")
        found = _CSRF.search(form.decode())
        if status != 200 or found is None:
            raise RuntimeError(f"sign-in form answered {status}")
        body = urllib.parse.urlencode({"csrf": found.group(1), "token": TOKEN})
        status, _ = self.request("POST", "/console/sign-in", body)
        if status != 303:
            raise RuntimeError(f"sign-in answered {status}, not 303")

    def close(self) -> None:
        self.conn.close()


def page_paths(accounts: int, page_size: int = 50) -> list[str]:
    """The overview pages a run cycles over: first, second, middle, last; two filters' first and last."""
    last = -(-accounts // page_size)
    reauth = -(-(accounts // 10 - accounts // 50) // page_size)
    gone = -(-(accounts // 25) // page_size)
    base = "/console/operator/accounts"
    return [
        base,
        f"{base}?page=2",
        f"{base}?page={last // 2}",
        f"{base}?page={last}",
        f"{base}?state=needs_reauth",
        f"{base}?state=needs_reauth&page={reauth}",
        f"{base}?state=disconnected&page={gone}",
    ]


def time_pages(browser: Browser, paths: list[str], count: int, budget: float) -> dict[str, Any]:
    """``count`` GETs cycling over ``paths``, one at a time; answer times in ms."""
    times: list[float] = []
    sizes: list[int] = []
    deadline = time.monotonic() + budget
    for n in range(count):
        if time.monotonic() > deadline:
            break
        began = time.perf_counter()
        status, body = browser.request("GET", paths[n % len(paths)])
        times.append((time.perf_counter() - began) * 1000)
        if status != 200 or b"acc0" not in body:
            raise RuntimeError(f"{paths[n % len(paths)]} answered {status}")
        sizes.append(len(body))
    ordered = sorted(times)
    return {
        "requests": len(times),
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else None,
        "bytes_median": int(statistics.median(sizes)) if sizes else None,
        "paths": paths,
    }


async def poll(port: int, cookie: str, every: float, stop: asyncio.Event, times: list[float]) -> None:
    """GET the overview every ``every`` seconds until ``stop``; answer times (ms) into ``times``."""
    request = (
        f"GET /console/operator/accounts?page=2 HTTP/1.1\r\nHost: {HOST}:{port}\r\nCookie: {cookie}\r\n\r\n"
    ).encode()
    pool = RawPool(HOST, port, 1)
    try:
        while not stop.is_set():
            began = time.perf_counter()
            status, _ = await pool.request(request)
            if status != 200:
                raise RuntimeError(f"the overview answered {status} while polled")
            times.append((time.perf_counter() - began) * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every - (time.perf_counter() - began)))
    finally:
        await pool.close()


async def acks(
    port: int, cookie: str, rate: int, seconds: float, every: float | None, tag: str
) -> tuple[dict[str, Any], list[float]]:
    """amoCRM webhooks at ``rate``/s for ``seconds``, with a poller of the overview every ``every`` s (or none):
    the summary, and the acks' latencies (s)."""
    requests = [amocrm_hook(port, i, tag) for i in range(int(rate * seconds))]
    pool = RawPool(HOST, port, 64)
    stop = asyncio.Event()
    polls: list[float] = []
    poller = None if every is None else asyncio.create_task(poll(port, cookie, every, stop, polls))
    try:
        outcomes, _ = await open_loop(pool, requests, rate, budget=seconds + 1)
    finally:
        stop.set()
        if poller is not None:
            async with asyncio.timeout(35):
                await poller
        await pool.close()
    acked = [o.done - o.scheduled for o in outcomes if o.status == 200]
    ordered = sorted(polls)
    return {
        "poll_every_s": every,
        "offered_per_s": rate,
        "sent": sum(1 for o in outcomes if o.scheduled),
        "errors": sum(1 for o in outcomes if o.scheduled and o.status != 200),
        **latency_summary(acked),
        "polls": len(polls),
        "poll_p50_ms": percentile(ordered, 50),
        "poll_p99_ms": percentile(ordered, 99),
    }, acked


# -- one store ----------------------------------------------------------------------------------


@contextlib.contextmanager
def silent_socket() -> Iterator[str]:
    """A socket that accepts connections and never answers: the relay's calls wait, so it stays held."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind((HOST, 0))
    hole.listen(64)
    try:
        yield f"http://{HOST}:{hole.getsockname()[1]}"
    finally:
        hole.close()


async def one_store(kind: str, store_url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from amoconnect.store.postgres import PostgresStore
    from amoconnect.store.sqlite import SQLiteStore

    directory = work / kind
    directory.mkdir()
    logs = work / "logs"

    def store() -> Store:
        if store_url:
            return PostgresStore(store_url)
        return SQLiteStore(directory / "amoconnect.sqlite3", synchronous="NORMAL")

    with silent_socket() as hole:
        server: Server = connector(
            f"console-{kind}",
            directory,
            logs,
            amojo_url=hole,
            messenger_url=hole,
            concurrency=1,
            http_timeout=3600.0,
            store_url=store_url,
        )
        config = directory / "amoconnect.toml"
        config.write_text(config.read_text(encoding="utf-8") + f'\n[admin]\ntoken = "{TOKEN}"\n', encoding="utf-8")
        print(
            f"   filling {args.accounts - 1:,} accounts, {(args.accounts - 1) * SOURCES_PER_ACCOUNT:,} sources",
            flush=True,
        )
        filled = await fill(store(), args.accounts - 1)
        await seed_conversations(store())
        began = time.time()
        server.process = Process(server.args, server.log)
        started = wait_ready(f"http://{HOST}:{server.port}/healthz", server.process, timeout=600) - began
        print(
            f"   filled in {fmt(filled)} s; the connector answered /healthz {fmt(started)} s after its start",
            flush=True,
        )
        browser = Browser(server.port)
        try:
            browser.sign_in()
            status, first = browser.request("GET", "/console/operator/accounts")
            if status != 200 or f"({args.accounts})".encode() not in first:
                raise RuntimeError(f"the overview answered {status} without the {args.accounts} accounts")
            paths = page_paths(args.accounts)
            time_pages(browser, paths, 20, budget=120)  # warm-up
            pages = await asyncio.to_thread(time_pages, browser, paths, args.requests, 300)
            print(
                f"   overview page: p50 {fmt(pages['p50_ms'])} ms, p95 {fmt(pages['p95_ms'])} ms, "
                f"p99 {fmt(pages['p99_ms'])} ms over {pages['requests']} requests ({pages['bytes_median']:,} bytes)",
                flush=True,
            )
            await acks(server.port, browser.cookie, args.rate, 5.0, None, f"{kind}warm")  # connections, caches
            settings: list[float | None] = [None, 1.0, 1.0 / args.fast_poll]
            pooled: dict[float | None, list[float]] = {every: [] for every in settings}
            rounds = []
            for round_ in range(args.rounds):  # interleaved: the machine's own swings hit every setting alike
                for every in settings:
                    run, latencies = await acks(
                        server.port, browser.cookie, args.rate, args.seconds, every, f"{kind}{round_}{every}"
                    )
                    rounds.append(run)
                    pooled[every] += latencies
                    print(
                        f"   round {round_ + 1}, acks at {args.rate}/s, "
                        f"{'no poller' if every is None else f'polled every {every:g} s'}: "
                        f"p50 {fmt(run['p50_ms'], 2)} ms, p99 {fmt(run['p99_ms'], 2)} ms, errors {run['errors']}"
                        + (f"; poll p50 {fmt(run['poll_p50_ms'])} ms ({run['polls']} polls)" if every else ""),
                        flush=True,
                    )
            runs = [{"poll_every_s": every, **latency_summary(pooled[every])} for every in settings]
        finally:
            browser.close()
            server.stop()
    return {
        "store": kind,
        "accounts": args.accounts,
        "sources": 1 + (args.accounts - 1) * SOURCES_PER_ACCOUNT,
        "fill_s": filled,
        "start_s": started,
        "page": pages,
        "acks": runs,
        "ack_rounds": rounds,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from amoconnect.testing.pgserver import TemporaryPostgres
    from amoconnect.testing.stores import fresh_postgres_schema

    info = machine()
    print(f"machine: {machine_line(info)}", flush=True)
    output: dict[str, Any] = {"benchmark": "console", "machine": info, "stores": []}
    with tempfile.TemporaryDirectory(prefix="amoconnect-bench-console-") as workdir:
        work = Path(workdir)
        (work / "logs").mkdir()
        for kind in args.stores.split(","):
            print(f"\n{kind}", flush=True)
            if kind == "postgres":
                with TemporaryPostgres(durable=True) as pg:
                    output["stores"].append(await one_store(kind, fresh_postgres_schema(pg.url), work, args))
            else:
                output["stores"].append(await one_store(kind, "", work, args))
    return output


class OutOfTime(BaseException):
    """The run took longer than ``--budget`` (a BaseException: no ``suppress(TimeoutError)`` swallows it)."""


def _out_of_time(signum: int, frame: object) -> None:
    raise OutOfTime("the benchmark ran past --budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="overview GETs timed")
    parser.add_argument("--rate", type=int, default=200, help="amoCRM webhooks per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of webhooks per poller setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three poller settings")
    parser.add_argument("--fast-poll", type=float, default=10.0, help="polls per second of the fast poller")
    parser.add_argument("--budget", type=int, default=1800, help="seconds the whole run may take")
    add_save_option(parser)
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(args.budget)
    with children():
        output = asyncio.run(run(args))
    signal.alarm(0)
    rows = []
    for s in output["stores"]:
        page = s["page"]
        alone, slow, fast = s["acks"]
        rows.append(
            [
                s["store"],
                f"{fmt(page['p50_ms'])} / {fmt(page['p95_ms'])} / {fmt(page['p99_ms'])}",
                "yes" if (page["p95_ms"] or 1e9) < PAGE_TARGET_MS else "NO",
                f"{fmt(alone['p50_ms'], 2)} / {fmt(alone['p99_ms'], 2)}",
                f"{fmt(slow['p50_ms'], 2)} / {fmt(slow['p99_ms'], 2)}",
                f"{fmt(fast['p50_ms'], 2)} / {fmt(fast['p99_ms'], 2)}",
            ]
        )
    print()
    print(
        table(
            [
                "store",
                "page ms p50/p95/p99",
                "p95 < 200 ms",
                "acks ms p50/p99, alone",
                "polled 1/s",
                f"polled {args.fast_poll:g}/s",
            ],
            rows,
        )
    )
    print("written to", write_results("console", output, save=args.save))


if __name__ == "__main__":
    main()
