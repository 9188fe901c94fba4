"""Benchmark of the amojo protocol core: CPU cost per message and signed requests per second.

1. Encode + sign: a realistic ``new_message`` event is built, encoded once (``wire.encode``) and
   signed (``sign_request``), over >= 100,000 iterations; also each step alone, webhook
   verification and webhook decoding. Best of three rounds, microseconds per message.
2. Throughput: ``AmojoClient.send_message`` (transport ``httpx`` and ``aiohttp``) against amojo
   served by uvicorn in a separate process, at 1, 8 and 64 concurrent senders, each message a
   new msgid; side by side with the synchronous baseline most amojo clients are (a
   ``requests.Session`` per thread, ``json.dumps`` + signing per request) and amojowrapper (the
   other Python amojo client on PyPI; ``pip install amojowrapper``), each with the client's CPU
   time per request (this process's). Two servers: the
   faithful fake (``FakeAmojo``, which checks everything and keeps every message in memory)
   and a sink (checks the signature, answers the documented body, keeps nothing) that shows
   the clients' own ceiling.

    python bench/bench_amojo.py            # about 2 minutes
    python bench/bench_amojo.py --quick    # about 1 minute

Results are printed and written to bench/out/amojo.json (or amojo-quick.json); ``--save`` writes
them to bench/results/ instead, over the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _support import (
    ACCOUNT_ID,
    CHANNEL_ID,
    CHANNEL_SECRET,
    PYTHON,
    Process,
    add_save_option,
    children,
    fmt,
    free_port,
    latency_summary,
    machine,
    machine_line,
    table,
    wait_ready,
    write_results,
)

from amoconnect.amojo import wire
from amoconnect.amojo.client import AmojoClient
from amoconnect.signing import sign_request, verify_signature

SCOPE_ID = f"{CHANNEL_ID}_{ACCOUNT_ID}"
SEND_PATH = f"/v2/origin/custom/{SCOPE_ID}"
TEXT = "Здравствуйте! Подскажите, пожалуйста, заказ №48213 уже отправлен? Hello, is order 48213 on its way?"
# The webhook of spec §3 (a manager's text message), with its known signature.
HOOK_BODY = (
    b'{"account_id":"52e591f7-c98f-4255-8495-827210138c81","time":1639572261,"message":{"conversation":'
    b'{"id":"8e4d4baa","client_id":"tg-100200300"},"sender":{"id":"76fc2bea"},"receiver":{"id":"2ed64e26",'
    b'"client_id":"tg-user-42"},"timestamp":1639572260,"msec_timestamp":1639572260980,"message":{"id":'
    b'"0371a0ff","type":"text","text":"Hello"}}}'
)
HOOK_SIGNATURE = "e4ee2370f5f76496e9a589cee24182cfc99d8373"
CONCURRENCY = (1, 8, 64)
CONVERSATIONS = 64


def make_event(i: int, prefix: str = "tg-main") -> wire.MessageEvent:
    """A client's text message as the relay sends it: sender with profile, source, our ids."""
    chat = f"{100200300 + i % CONVERSATIONS}"
    now_ms = 1_772_443_800_000 + i
    return wire.MessageEvent(
        event_type="new_message",
        payload=wire.MessagePayload(
            timestamp=now_ms // 1000,
            msec_timestamp=now_ms,
            msgid=f"{prefix}:{chat}:{i}",
            conversation_id=f"{prefix}:{chat}",
            source=wire.Source(external_id=prefix),
            sender=wire.Participant(
                id=f"{prefix}:user-{chat}",
                name="Иван Петров",
                avatar="https://example.org/avatars/42.jpg",
                profile=wire.Profile(phone="+79990001122"),
                profile_link="https://t.me/ivan_petrov",
            ),
            message=wire.MessageContent(type="text", text=TEXT),
        ),
    )


# -- 1. CPU cost -------------------------------------------------------------------------------


def _best_of(rounds: int, n: int, loop: Callable[[int], None]) -> float:
    """Microseconds per iteration of ``loop(n)``, best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        loop(n)
        best = min(best, (time.perf_counter_ns() - started) / n / 1000)
    return best


def micro(iterations: int) -> dict[str, Any]:
    event = make_event(0)
    body = wire.encode(event)
    date = "Mon, 02 Mar 2026 09:30:00 +0000"

    def full(n: int) -> None:
        for i in range(n):
            sign_request(CHANNEL_SECRET, "POST", SEND_PATH, wire.encode(make_event(i)))

    def encode_sign(n: int) -> None:
        for _ in range(n):
            sign_request(CHANNEL_SECRET, "POST", SEND_PATH, wire.encode(event))

    def build(n: int) -> None:
        for i in range(n):
            make_event(i)

    def encode(n: int) -> None:
        for _ in range(n):
            wire.encode(event)

    def sign(n: int) -> None:
        for _ in range(n):
            sign_request(CHANNEL_SECRET, "POST", SEND_PATH, body)

    def sign_fixed_date(n: int) -> None:
        for _ in range(n):
            sign_request(CHANNEL_SECRET, "POST", SEND_PATH, body, date=date)

    def verify(n: int) -> None:
        for _ in range(n):
            verify_signature(CHANNEL_SECRET, HOOK_BODY, HOOK_SIGNATURE)

    def parse(n: int) -> None:
        for _ in range(n):
            wire.parse_webhook(HOOK_BODY)

    assert verify_signature(CHANNEL_SECRET, HOOK_BODY, HOOK_SIGNATURE)
    cases = {
        "build_encode_sign_us": full,
        "encode_sign_us": encode_sign,
        "build_us": build,
        "encode_us": encode,
        "sign_us": sign,
        "sign_fixed_date_us": sign_fixed_date,
        "verify_webhook_us": verify,
        "parse_webhook_us": parse,
    }
    result: dict[str, Any] = {"iterations": iterations, "body_bytes": len(body)}
    for name, loop in cases.items():
        result[name] = round(_best_of(3, iterations, loop), 3)
    return result


# -- 2. throughput -----------------------------------------------------------------------------


class Cell:
    """One measured cell: bounded by a request count and a duration."""

    def __init__(self, duration: float, max_requests: int) -> None:
        self.duration = duration
        self.max_requests = max_requests
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.elapsed = 0.0
        self.cpu = 0.0
        """CPU seconds this process (the client) spent on the cell."""

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies)
        stats = latency_summary(self.latencies)
        return {
            "requests": done,
            "errors": self.errors,
            "first_error": self.first_error or None,
            "seconds": round(self.elapsed, 3),
            "rps": round(done / self.elapsed, 1) if self.elapsed else None,
            "cpu_us_per_request": round(1e6 * self.cpu / done, 1) if done else None,
            "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"],
        }


_ids = itertools.count()


async def _async_cell(client: AmojoClient, concurrency: int, cell: Cell, tag: str) -> None:
    counter = itertools.count()
    deadline = time.perf_counter() + cell.duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= cell.max_requests:
                return
            payload = make_event(next(_ids), tag).payload
            started = time.perf_counter()
            try:
                await client.send_message(SCOPE_ID, payload)
            except Exception as exc:
                cell.errors += 1
                cell.first_error = cell.first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            cell.latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cell.elapsed, cell.cpu = time.perf_counter() - started, time.process_time() - cpu


async def run_async(kind: str, base_url: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    async with AmojoClient(CHANNEL_ID, CHANNEL_SECRET, base_url=base_url, transport=kind) as client:  # type: ignore[arg-type]
        await _async_cell(client, concurrency, Cell(warmup, 100_000), f"warm-{kind}")
        cell = Cell(duration, 500_000)
        await _async_cell(client, concurrency, cell, f"{kind}-{concurrency}")
    return cell.summary()


def run_requests(base_url: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """The synchronous baseline: a requests.Session per thread, json.dumps and signing per request."""
    import requests

    url = base_url + SEND_PATH
    lock = threading.Lock()

    def cell_run(cell: Cell, tag: str) -> None:
        counter = itertools.count()
        deadline = time.perf_counter() + cell.duration

        def worker() -> None:
            session = requests.Session()
            latencies: list[float] = []
            errors = 0
            first = ""
            try:
                while time.perf_counter() < deadline:
                    if next(counter) >= cell.max_requests:
                        break
                    data = json.loads(wire.encode(make_event(next(_ids), tag)))  # the dict a hand-written client has
                    started = time.perf_counter()
                    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
                    headers = sign_request(CHANNEL_SECRET, "POST", SEND_PATH, body)
                    try:
                        response = session.post(url, data=body, headers=headers, timeout=10)
                        if response.status_code != 200:
                            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                        response.json()
                    except Exception as exc:
                        errors += 1
                        first = first or f"{type(exc).__name__}: {exc}"[:300]
                        continue
                    latencies.append(time.perf_counter() - started)
            finally:
                session.close()
                with lock:
                    cell.latencies.extend(latencies)
                    cell.errors += errors
                    cell.first_error = cell.first_error or first

        _threads(worker, concurrency, cell)

    cell_run(Cell(warmup, 100_000), "warm-requests")
    cell = Cell(duration, 500_000)
    cell_run(cell, f"requests-{concurrency}")
    return cell.summary()


def _threads(worker: Callable[[], None], concurrency: int, cell: Cell) -> None:
    """Run ``worker`` in ``concurrency`` threads; the cell's wall time and this process's CPU time."""
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=cell.duration + 30)
    cell.elapsed, cell.cpu = time.perf_counter() - started, time.process_time() - cpu


def run_amojowrapper(base_url: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """amojowrapper, the other Python amojo client on PyPI, as its README uses it: a client per thread."""
    from amojowrapper.client import AmojoClient as WrapperClient

    lock = threading.Lock()

    def cell_run(cell: Cell, tag: str) -> None:
        counter = itertools.count()
        deadline = time.perf_counter() + cell.duration

        def worker() -> None:
            client = WrapperClient(CHANNEL_SECRET, CHANNEL_ID, referer="bench.amocrm.ru", amojo_account_token="")
            client.amojo_base_url = base_url  # it derives https://amojo.<referer's domain>; the bench's amojo is local
            latencies: list[float] = []
            errors = 0
            first = ""
            while time.perf_counter() < deadline:
                if next(counter) >= cell.max_requests:
                    break
                data = json.loads(wire.encode(make_event(next(_ids), tag)))
                started = time.perf_counter()
                try:
                    client.custom_request("POST", SEND_PATH, data=data).json()
                except Exception as exc:
                    errors += 1
                    first = first or f"{type(exc).__name__}: {exc}"[:300]
                    continue
                latencies.append(time.perf_counter() - started)
            with lock:
                cell.latencies.extend(latencies)
                cell.errors += errors
                cell.first_error = cell.first_error or first

        _threads(worker, concurrency, cell)

    cell_run(Cell(warmup, 100_000), "warm-amojowrapper")
    cell = Cell(duration, 500_000)
    cell_run(cell, f"amojowrapper-{concurrency}")
    return cell.summary()


def start_amojo(mode: str, logs: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        [
            PYTHON,
            "bench/amojo_server.py",
            "--mode",
            mode,
            "--port",
            str(port),
            "--channel-id",
            CHANNEL_ID,
            "--secret",
            CHANNEL_SECRET,
        ],
        logs / f"amojo-{mode}.log",
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(base_url + "/_bench/health", process)
    asyncio.run(_connect(base_url))
    return process, base_url


async def _connect(base_url: str) -> None:
    """Connect the account over HTTP, so that the scope exists before any client sends."""
    async with AmojoClient(CHANNEL_ID, CHANNEL_SECRET, base_url=base_url) as client:
        await client.connect(ACCOUNT_ID)


def main() -> None:
    parser = argparse.ArgumentParser(description="amojo protocol core benchmark")
    parser.add_argument("--quick", action="store_true", help="shorter cells (same iterations for the CPU part)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per throughput cell")
    parser.add_argument("--servers", default="fake,sink", help="comma-separated: fake, sink")
    parser.add_argument(
        "--clients",
        default="requests,amojowrapper,httpx,aiohttp",
        help="comma-separated: requests, amojowrapper, httpx, aiohttp",
    )
    add_save_option(parser)
    args = parser.parse_args()
    duration = args.duration or (1.5 if args.quick else 4.0)
    warmup = 0.3 if args.quick else 0.5
    info = machine()
    print(f"machine: {machine_line(info)}")

    iterations = 100_000 if args.quick else 200_000
    print(f"\n1. CPU per message ({iterations:,} iterations, best of 3)")
    cpu = micro(iterations)
    rows = [[name.removesuffix("_us"), fmt(value, 2)] for name, value in cpu.items() if name.endswith("_us")]
    print(table(["step", "µs"], rows))

    results: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="amoconnect-bench-amojo-"))
    with children():
        for mode in args.servers.split(","):
            process, base_url = start_amojo(mode, logs)
            print(f"\n2. signed sends/s against the {mode} amojo (uvicorn, own process), {duration:g} s per cell")
            rows = []
            for client in args.clients.split(","):
                for concurrency in CONCURRENCY:
                    if client == "requests":
                        summary = run_requests(base_url, concurrency, duration, warmup)
                    elif client == "amojowrapper":
                        summary = run_amojowrapper(base_url, concurrency, duration, warmup)
                    else:
                        summary = asyncio.run(run_async(client, base_url, concurrency, duration, warmup))
                    entry = {"server": mode, "client": client, "concurrency": concurrency, **summary}
                    results.append(entry)
                    rows.append(
                        [
                            client,
                            str(concurrency),
                            fmt(entry["rps"], 0),
                            fmt(entry["p50_ms"], 2),
                            fmt(entry["p99_ms"], 2),
                            fmt(entry["cpu_us_per_request"], 0),
                            str(entry["errors"]),
                        ]
                    )
                    print(
                        f"   {client:12} c={concurrency:<3} {fmt(entry['rps'], 0):>7} req/s, "
                        f"{fmt(entry['cpu_us_per_request'], 0)} µs of client CPU per request",
                        flush=True,
                    )
                    if entry["first_error"]:
                        print(f"   first error: {entry['first_error']}")
            process.stop()
            print(table(["client", "conc", "req/s", "p50 ms", "p99 ms", "client CPU µs/req", "errors"], rows))

    output = {
        "benchmark": "amojo",
        "quick": args.quick,
        "machine": info,
        "cpu_per_message": cpu,
        "throughput": results,
        "setup": {
            "server": "uvicorn (uvloop, httptools) in its own process on 127.0.0.1",
            "cell_seconds": duration,
            "amojo_client": "AmojoClient defaults (max_in_flight_per_host=32, retries on)",
            "baseline": "requests.Session per thread; json.dumps + sign_request per request",
            "amojowrapper": "amojowrapper's AmojoClient.custom_request, a client per thread (requests, no session)",
            "client_cpu": "CPU time of the benchmark process (the client) over the cell, per request",
        },
        "targets": {"build_encode_sign_us": "<= 10", "amojoclient_rps_at_8": ">= 2000", "at_64": "no collapse"},
    }
    path = write_results("amojo-quick" if args.quick else "amojo", output, save=args.save)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
