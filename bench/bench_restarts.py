"""Restarts under traffic: ``amoconnect run`` stopped again and again while messages flow both ways.

A real connector process (``bench/connector.py``, on SQLite or on a throwaway PostgreSQL) between
the fake amojo and fakechat, all on loopback. fakechat's API acts on each send at once and answers
``--send-ms`` later, so sends are in flight when the signal comes. Each round: traffic for
``--interval`` seconds (managers' messages as amoCRM webhooks and clients' messages as fakechat
webhooks, over ``--chats`` chats), then SIGTERM (a rolling upgrade) or SIGKILL (a crash), then a
restart on the same store. amoCRM never retries a webhook and fakechat gives up after 3 tries,
so what was sent while the connector was down is simply not acknowledged. At the end every
acknowledged message is looked for on its other side:

- **lost**: acknowledged (200), never received;
- **twice**: received more than once. A send to the messenger that was under way when the
  process died runs again after the restart (messengers have no idempotency key); amoCRM refuses
  a msgid twice, so its side never counts one.

    python bench/bench_restarts.py                                  # SIGTERM on SQLite (~1 min)
    python bench/bench_restarts.py --signal KILL --store postgres   # kill -9 on PostgreSQL

Results are printed and written to bench/out/restarts-<store>-<signal>.json (``--save``: bench/results/).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import tomli_w
from _support import add_save_option, machine, machine_line, table, write_results

from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.fakechat_api import FakeChat
from amoconnect.testing.kit import eventually
from amoconnect.testing.pgserver import TemporaryPostgres
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import fresh_postgres_schema

CHANNEL = "11111111-2222-3333-4444-555555555555"
SECRET = "0123456789abcdef0123456789abcdef01234567"
ACCOUNT = "66666666-7777-8888-9999-000000000000"
SCOPE = f"{CHANNEL}_{ACCOUNT}"
HERE = Path(__file__).parent


class HeldAnswers:
    """An ASGI app wrapper: each request is handled at once, its answer held ``delay`` seconds."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app, self.delay = app, delay
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def held(message: Any) -> None:
            if message["type"] == "http.response.start":
                await anyio.sleep(self.delay)
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, held)
        finally:
            self.in_flight -= 1


async def healthy(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        try:
            return (await client.get(f"{url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False


def _append_to(log: Path) -> int:
    return os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


async def start(config: Path, log: Path, url: str) -> anyio.abc.Process:
    out = _append_to(log)
    try:
        proc = await anyio.open_process(
            [sys.executable, str(HERE / "connector.py"), "--config", str(config), "--log-level", "warning"],
            stdout=out,
            stderr=out,
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + 60
    while not await healthy(url):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the connector did not start; see {log}")
        await anyio.sleep(0.05)
    return proc


async def run(args: argparse.Namespace, work: Path, store: dict[str, Any]) -> dict[str, Any]:
    counter = itertools.count()
    acked_out: list[str] = []  # managers' messages acknowledged by the connector
    acked_in: list[str] = []  # clients' messages acknowledged
    refused = Counter[str]()
    rounds: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        amojo = FakeAmojo(CHANNEL, SECRET, webhook_client=http)
        chat = FakeChat("42:token", http=http, delivery_backoff=0.05)
        api = HeldAnswers(chat.app, args.send_ms / 1000)
        sock_port = _free_port()
        public = f"http://127.0.0.1:{sock_port}"
        amojo.connect(ACCOUNT, webhook_url=f"{public}/amocrm/:scope_id")
        async with serve_app(amojo.app) as amojo_url, serve_app(api) as chat_url:
            config = work / "amoconnect.toml"
            settings = {
                "channel": {"id": CHANNEL, "secret": SECRET, "amojo_url": amojo_url},
                "accounts": [{"name": "main", "amojo_id": ACCOUNT}],
                "sources": [
                    {
                        "name": "bot",
                        "plugin": "fake",
                        "account": "main",
                        "default": True,
                        "settings": chat.sandbox_settings(chat_url),
                    }
                ],
                "server": {"public_url": public, "host": "127.0.0.1", "port": sock_port},
                "store": store,
                "relay": {"backoff": 0.1, "max_backoff": 2.0, "shutdown_timeout": args.shutdown_timeout},
            }
            config.write_text(tomli_w.dumps(settings))
            log = work / "connector.log"
            chats = [f"c{i}" for i in range(args.chats)]
            proc = await start(config, log, public)
            for c in chats:
                await chat.client_writes(c, "hello")
            await eventually(lambda: all(amojo.find_chat(f"bot:{c}") for c in chats), within=60)

            done = anyio.Event()

            async def traffic(lane: int) -> None:
                for c in itertools.cycle(chats[lane :: args.lanes]):
                    if done.is_set():
                        return
                    n = next(counter)
                    text = f"out {n}"
                    emitted = await amojo.emit_text(SCOPE, f"bot:{c}", text)
                    (acked_out.append(text) if emitted.status == 200 else refused.update(["out"]))
                    text = f"in {n}"
                    status = await chat.client_writes(c, text)
                    (acked_in.append(text) if status == 200 else refused.update(["in"]))
                    if emitted.status != 200 or status != 200:
                        await anyio.sleep(0.05)  # the connector is down: no tight loop meanwhile

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for lane in range(args.lanes):
                    tg.start_soon(traffic, lane)
                for number in range(args.rounds):
                    await anyio.sleep(args.interval)
                    in_flight = api.in_flight
                    signalled = time.monotonic()
                    proc.send_signal(signal.SIGTERM if args.signal == "TERM" else signal.SIGKILL)
                    with anyio.fail_after(args.shutdown_timeout + 30):
                        await proc.wait()
                    code, stop_s = proc.returncode, round(time.monotonic() - signalled, 2)
                    proc = await start(config, log, public)
                    rounds.append(
                        {
                            "round": number + 1,
                            "sends_in_flight_at_signal": in_flight,
                            "exit_code": code,
                            "stop_s": stop_s,
                            "down_s": round(time.monotonic() - signalled, 2),
                        }
                    )
                await anyio.sleep(args.interval)  # traffic after the last restart too
                done.set()
            try:
                with anyio.move_on_after(120):
                    while True:
                        got_out = {m.text for c in chats for m in chat.sent_to(c)}
                        got_in = {m.text for m in amojo.messages if m.from_client}
                        if set(acked_out) <= got_out and set(acked_in) <= got_in:
                            break
                        await anyio.sleep(0.2)
            finally:
                proc.send_signal(signal.SIGTERM)
                with anyio.move_on_after(30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
            elapsed = time.monotonic() - started
    to_client = Counter(m.text for c in chats for m in chat.sent_to(c) if m.text.startswith("out "))
    to_amocrm = Counter(m.text for m in amojo.messages if m.from_client and m.text.startswith("in "))
    return {
        "store": args.store,
        "signal": args.signal,
        "rounds": args.rounds,
        "interval_s": args.interval,
        "send_ms": args.send_ms,
        "shutdown_timeout_s": args.shutdown_timeout,
        "elapsed_s": round(elapsed, 1),
        "manager_to_client": _counts(acked_out, to_client, refused["out"]),
        "client_to_amocrm": _counts(acked_in, to_amocrm, refused["in"]),
        "per_round": rounds,
    }


def _counts(acked: list[str], received: Counter[str], refused: int) -> dict[str, int]:
    return {
        "acknowledged": len(acked),
        "not_acknowledged": refused,
        "lost": sum(1 for text in acked if received[text] == 0),
        "twice": sum(1 for count in received.values() if count > 1),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=["TERM", "KILL"], default="TERM")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds of traffic before each signal")
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--lanes", type=int, default=4, help="concurrent senders (each over its share of chats)")
    parser.add_argument("--send-ms", type=float, default=200.0, help="how long the messenger takes to answer a send")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    add_save_option(parser)
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="amoconnect-restarts-") as tmp:
        work = Path(tmp)
        if args.store == "postgres":
            with TemporaryPostgres(durable=True) as server:
                store = {"url": fresh_postgres_schema(server.url), "lease": 3.0}
                result = anyio.run(run, args, work, store)
        else:
            result = anyio.run(run, args, work, {"path": str(work / "store.sqlite3")})
    result["machine"] = info
    print(machine_line(info))
    headers = ["direction", "acknowledged", "not acknowledged", "lost", "twice"]
    rows = [
        [name, *(f"{result[key][k]:,}" for k in ("acknowledged", "not_acknowledged", "lost", "twice"))]
        for name, key in (("manager → client", "manager_to_client"), ("client → amoCRM", "client_to_amocrm"))
    ]
    print(
        f"{args.rounds} × SIG{args.signal} on {args.store}, {args.interval:g} s of traffic each, "
        f"sends {args.send_ms:g} ms"
    )
    print(table(headers, rows))
    in_flight = [r["sends_in_flight_at_signal"] for r in result["per_round"]]
    print(f"sends in flight at each signal: {in_flight}; exit codes: {[r['exit_code'] for r in result['per_round']]}")
    print(f"seconds from the signal to the exit: {[r['stop_s'] for r in result['per_round']]}")
    path = write_results(f"restarts-{args.store}-{args.signal.lower()}", result, save=args.save)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
