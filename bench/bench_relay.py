"""Relay benchmark: durable ingest, end-to-end relay and crash loss, against two inline baselines.

Everything runs on loopback with fakes, each server in its own process:

- the connector (``bench/connector.py``: the real runtime behind uvicorn, SQLite with
  ``synchronous=FULL``, one account, one instance of the reference messenger ``fake``);
- amojo (``bench/amojo_server.py``: FakeAmojo plus a records route and an outage switch);
- the baselines (``bench/baselines.py``): a naive synchronous relay (Flask + requests) and a
  minimal aiohttp inline relay, both calling amojo inside the webhook request.

The load generator is this process (uvloop, raw HTTP/1.1 over keep-alive connections,
requests built and signed before each run). Open-loop runs schedule each request on a clock
and measure latency from its scheduled time, so a slow server cannot hide behind a slow sender.

1. Durable ingest: signed amoCRM message webhooks to ``POST /amocrm/{scope_id}`` (a manager's
   reply in one of 1,000 conversations, each with a new message id). Ack latency at 500/s, then
   the offered rate steps up until a step is not sustained; rows in SQLite are counted against
   the acks. The relay is kept from draining (see README).
2. End-to-end relay: fakechat webhooks from 200 conversations to ``/hooks/fake/main``, relayed to
   amojo; throughput (closed loop, one message in flight per conversation) and latency (open
   loop), checked on amojo's records for loss, duplicates and per-conversation order.
3. kill -9 at 50 %: the sender (never retrying, like amoCRM) sends N messages; when half are
   acknowledged the server is killed, restarted, and the rest are sent. Counted: messages that
   never reached amojo, and the connector's first redelivery after the restart.
4. amojo outage: amojo answers 503 to everything for 2 s while the sender goes on; counted as 3.

    python bench/bench_relay.py            # about 4 minutes
    python bench/bench_relay.py --quick    # about 3 minutes

Results are printed and written to bench/out/relay.json (or relay-quick.json); ``--save`` writes
them to bench/results/ instead, over the committed figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _support import (
    ACCOUNT_ID,
    BENCH_DIR,
    CHANNEL_ID,
    CHANNEL_SECRET,
    PYTHON,
    SCOPE_ID,
    Process,
    RawPool,
    add_save_option,
    children,
    fmt,
    free_port,
    http_get,
    latency_summary,
    machine,
    machine_line,
    post_bytes,
    table,
    wait_ready,
    write_results,
)

from amoconnect.amojo import wire
from amoconnect.store.base import ConversationRecord, Store
from amoconnect.store.sqlite import SQLiteStore
from amoconnect.testing.fakechat_api import SIGNATURE_HEADER, signature_of

HOST = "127.0.0.1"
INSTANCE = "main"
BOT_TOKEN = "1000:bench-token"
WEBHOOK_SECRET = "bench-webhook-secret"
INGEST_CONVERSATIONS = 1000
RELAY_CONVERSATIONS = 200
ALL_PARTS = "ingest,e2e,kill,outage"
SUSTAINED_P99_MS = 100.0
"""A step is sustained when no request failed, acks kept up (>= 97 % of offered) and p99 stayed under this."""

_encode = msgspec.json.Encoder().encode
_hook_empty: dict[str, Any] = dict(media="", thumbnail="", file_name="", file_size=0, tag="")


# -- the systems under test -----------------------------------------------------------------------


@dataclass
class Server:
    """A server process that can be killed and started again on the same port with the same state."""

    name: str
    args: list[str]
    port: int
    ready_path: str
    log: Path
    process: Process | None = None

    def start(self) -> float:
        """Start and wait until ready; returns the wall time it became ready."""
        self.process = Process(self.args, self.log)
        return wait_ready(f"http://{HOST}:{self.port}{self.ready_path}", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill9()


class Amojo(Server):
    def records(self, since: int = 0) -> dict[str, Any]:
        status, body = http_get(f"http://{HOST}:{self.port}/_bench/records?since={since}", timeout=30)
        if status != 200:
            raise RuntimeError(f"amojo records answered {status}")
        data: dict[str, Any] = json.loads(body)
        return data


def start_amojo(logs: Path, *, delay_ms: float = 0.0) -> Amojo:
    port = free_port()
    args = [PYTHON, str(BENCH_DIR / "amojo_server.py"), "--mode", "fake", "--port", str(port)]
    args += ["--channel-id", CHANNEL_ID, "--secret", CHANNEL_SECRET, "--account-id", ACCOUNT_ID]
    args += ["--delay-ms", str(delay_ms)]
    amojo = Amojo("amojo", args, port, "/_bench/health", logs / f"amojo-{port}.log")
    amojo.start()
    return amojo


def connector_config(
    directory: Path,
    port: int,
    *,
    amojo_url: str,
    messenger_url: str,
    transport: str = "httpx",
    concurrency: int = 64,
    http_timeout: float = 10.0,
    store_url: str = "",
    log_level: str = "warning",
) -> Path:
    """One account, one fakechat instance, SQLite with synchronous=FULL in ``directory`` (or ``store_url``)."""
    config = f"""\
log_level = "{log_level}"

[channel]
id = "{CHANNEL_ID}"
secret = "{CHANNEL_SECRET}"
amojo_url = "{amojo_url}"

[[accounts]]
name = "bench"
amojo_id = "{ACCOUNT_ID}"

[[sources]]
name = "{INSTANCE}"
plugin = "fake"
account = "bench"
default = true
settings = {{ token = "{BOT_TOKEN}", secret = "{WEBHOOK_SECRET}", api_url = "{messenger_url}" }}

[server]
host = "{HOST}"
port = {port}

[store]
url = "{store_url}"
path = "{directory / "amoconnect.sqlite3"}"
synchronous = "FULL"
media_dir = "{directory / "media"}"

[relay]
concurrency = {concurrency}
shutdown_timeout = 1.0

[http]
transport = "{transport}"
timeout = {http_timeout}
"""
    path = directory / "amoconnect.toml"
    path.write_text(config, encoding="utf-8")
    return path


def connector(name: str, directory: Path, logs: Path, **settings: Any) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = connector_config(directory, port, **settings)
    args = [PYTHON, str(BENCH_DIR / "connector.py"), "--config", str(config)]
    return Server(name, args, port, "/healthz", logs / f"{name}.log")


def baseline(kind: str, amojo: Amojo, logs: Path) -> Server:
    port = free_port()
    args = [PYTHON, str(BENCH_DIR / "baselines.py"), kind, "--port", str(port)]
    args += ["--amojo-url", f"http://{HOST}:{amojo.port}", "--scope-id", SCOPE_ID]
    args += ["--secret", CHANNEL_SECRET, "--webhook-secret", WEBHOOK_SECRET]
    return Server(kind, args, port, "/healthz", logs / f"baseline-{kind}-{port}.log")


# -- requests -------------------------------------------------------------------------------------


def chat_uuid(k: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-chat-{k}"))


def amocrm_hook(port: int, i: int, tag: str) -> bytes:
    """A signed amoCRM webhook: a manager's text reply in conversation ``i % 1000``."""
    k = i % INGEST_CONVERSATIONS
    now = time.time()
    hook = wire.MessageHook(
        account_id=ACCOUNT_ID,
        time=int(now),
        message=wire.HookMessage(
            conversation=wire.Conversation(id=chat_uuid(k), client_id=f"{INSTANCE}:c{k}"),
            source=wire.Source(external_id=INSTANCE),
            sender=wire.HookSender(id="76fc2bea-93d2-4c2a-8e1b-1a7c0f9d1a11", name="Manager"),
            receiver=wire.HookReceiver(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-user-{k}")),
                client_id=f"{INSTANCE}:u{k}",
                phone="+79990001122",
                name=f"Client {k}",
            ),
            timestamp=int(now),
            msec_timestamp=int(now * 1000),
            message=wire.HookMessageBody(
                id=f"{tag}-{i:08d}-{uuid.uuid4().hex[:12]}",
                type="text",
                text=f"Здравствуйте! Ваш заказ №{i} передан в доставку, номер для отслеживания RB{i:09d}.",
                **_hook_empty,
            ),
        ),
    )
    body = wire.encode(hook)
    signature = hmac.new(CHANNEL_SECRET.encode(), body, hashlib.sha1).hexdigest()  # spec §3: raw body only
    headers = {"Content-Type": "application/json", "X-Signature": signature}
    return post_bytes(HOST, port, f"/amocrm/{SCOPE_ID}", body, headers)


_update_ids = iter(range(1, 10**9))


@dataclass(frozen=True)
class Planned:
    i: int
    conv: int
    seq: int
    msgid: str
    request: bytes


def fakechat_plan(port: int, n: int, conversations: int, tag: str) -> list[Planned]:
    """``n`` client messages over ``conversations`` chats as signed fakechat webhooks."""
    plan = []
    seqs: dict[int, int] = defaultdict(int)
    now = int(time.time())
    for i in range(n):
        k = i % conversations
        seq = seqs[k]
        seqs[k] += 1
        message_id = f"{tag}-{i}"
        update = {
            "update_id": next(_update_ids),
            "message": {
                "message_id": message_id,
                "chat": {"id": f"c{k}"},
                "from": {"id": f"u{k}", "name": f"Client {k}"},
                "date": now,
                "text": f"{tag} conv {k} seq {seq}: добрый день, когда будет доставка?",
            },
        }
        body = _encode(update)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature_of(body, WEBHOOK_SECRET)}
        request = post_bytes(HOST, port, f"/hooks/fake/{INSTANCE}", body, headers)
        plan.append(Planned(i, k, seq, f"{INSTANCE}:c{k}:{message_id}", request))
    return plan


# -- load generation ------------------------------------------------------------------------------


@dataclass
class Outcome:
    scheduled: float = 0.0
    """perf_counter time the request was due."""
    sent_wall: float = 0.0
    """wall time it was written."""
    done: float = 0.0
    """perf_counter time the answer was in."""
    status: int | None = None


@dataclass
class Control:
    """Pausing an open-loop run from inside it (the kill test).

    Set ``pause`` (and clear ``running``) when the server goes down: nothing more is written
    to it; requests already on the wire finish or fail, then ``resume()`` runs (the restart)
    and the held requests go out.
    """

    pause: asyncio.Event = field(default_factory=asyncio.Event)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    resume: Callable[[], Awaitable[None]] | None = None
    on_wire: int = 0
    wire_idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.running.set()
        self.wire_idle.set()

    def sending(self, delta: int) -> None:
        self.on_wire += delta
        if self.on_wire:
            self.wire_idle.clear()
        else:
            self.wire_idle.set()

    def stop(self) -> None:
        self.pause.set()
        self.running.clear()


async def open_loop(
    pool: RawPool,
    requests: Sequence[bytes],
    rate: float,
    *,
    budget: float,
    conversations: Sequence[int] | None = None,
    on_answer: Callable[[int, Outcome], None] | None = None,
    control: Control | None = None,
) -> tuple[list[Outcome], dict[str, float]]:
    """Send ``requests`` at ``rate`` per second on a clock; at most ``budget`` seconds of sending.

    With ``conversations`` (one per request), a request waits for the previous one of its
    conversation to be answered (messengers deliver a chat's updates in order).
    """
    loop = asyncio.get_running_loop()
    outcomes = [Outcome() for _ in requests]
    pending: set[asyncio.Task[None]] = set()
    previous: dict[int, asyncio.Future[None]] = {}
    lag_max = 0.0

    async def one(i: int, due: float, before: asyncio.Future[None] | None, mine: asyncio.Future[None] | None) -> None:
        outcome = outcomes[i]
        outcome.scheduled = due
        try:
            if before is not None and not before.done():
                await before
            if control is not None:
                await control.running.wait()
                control.sending(+1)
            outcome.sent_wall = time.time()
            outcome.status, _ = await pool.request(requests[i])
            outcome.done = time.perf_counter()
            if control is not None:
                control.sending(-1)
            if on_answer is not None:
                on_answer(i, outcome)
        finally:
            if mine is not None:
                mine.set_result(None)

    start = t0 = time.perf_counter() + 0.02
    i = 0
    n = len(requests)
    while i < n:
        now = time.perf_counter()
        if now - start > budget:
            break
        if control is not None and control.pause.is_set():
            paused_at = now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pool.request_timeout + 1):
                    await control.wire_idle.wait()
            assert control.resume is not None
            await control.resume()
            control.pause.clear()
            control.running.set()
            t0 += time.perf_counter() - paused_at
            continue
        while i < n and t0 + i / rate <= now:
            due = t0 + i / rate
            lag_max = max(lag_max, now - due)
            before = mine = None
            if conversations is not None:
                before = previous.get(conversations[i])
                mine = previous[conversations[i]] = loop.create_future()
            task = loop.create_task(one(i, due, before, mine))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if i < n:
            # Timers tick in milliseconds (uvloop): shorter sleeps would spin and steal the server's CPU.
            await asyncio.sleep(max(0.001, t0 + i / rate - time.perf_counter()))
    if pending:
        await asyncio.wait(pending, timeout=pool.request_timeout + 1)
    return outcomes, {"scheduled": i, "launch_lag_max_ms": round(lag_max * 1000, 3), "t0": start}


async def closed_lanes(pool: RawPool, plan: Sequence[Planned], *, budget: float) -> list[Outcome]:
    """One sender per conversation, each sending its messages one after the other."""
    outcomes = [Outcome() for _ in plan]
    lanes: dict[int, list[Planned]] = defaultdict(list)
    for item in plan:
        lanes[item.conv].append(item)
    deadline = time.perf_counter() + budget

    async def lane(items: list[Planned]) -> None:
        for item in items:
            if time.perf_counter() > deadline:
                return
            outcome = outcomes[item.i]
            outcome.scheduled = time.perf_counter()
            outcome.sent_wall = time.time()
            outcome.status, _ = await pool.request(item.request)
            outcome.done = time.perf_counter()

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(budget + pool.request_timeout + 1):
            await asyncio.gather(*(lane(items) for items in lanes.values()))
    return outcomes


# -- 1. durable ingest ----------------------------------------------------------------------------


async def seed_conversations(store: Store) -> None:
    """The conversations the manager replies in, as earlier client messages would have left them."""
    await store.open()
    try:
        for k in range(INGEST_CONVERSATIONS):
            await store.put_conversation(
                ConversationRecord(
                    scope_id=SCOPE_ID,
                    conversation_id=f"{INSTANCE}:c{k}",
                    instance=INSTANCE,
                    chat=f"c{k}",
                    amocrm_chat_id=chat_uuid(k),
                    client_id=f"{INSTANCE}:u{k}",
                    last_client_at=time.time(),
                )
            )
    finally:
        await store.close()


def ingest_step_summary(outcomes: Sequence[Outcome], meta: dict[str, float], rate: float) -> dict[str, Any]:
    sent = [o for o in outcomes if o.scheduled]
    acked = [o for o in sent if o.status == 200]
    errors = len(sent) - len(acked)
    span = (max(o.done for o in acked) - meta["t0"]) if acked else 0.0
    statuses: dict[str, int] = defaultdict(int)
    for o in sent:
        if o.status != 200:
            statuses[str(o.status)] += 1
    summary: dict[str, Any] = {
        "offered_per_s": rate,
        "error_statuses": dict(statuses),
        "sent": len(sent),
        "acked": len(acked),
        "errors": errors,
        "acks_per_s": round(len(acked) / span, 1) if span else 0.0,
        "launch_lag_max_ms": meta["launch_lag_max_ms"],
        **latency_summary([o.done - o.scheduled for o in acked]),
    }
    summary["sustained"] = bool(
        errors == 0
        and summary["acks_per_s"] >= 0.97 * rate
        and summary["p99_ms"] is not None
        and summary["p99_ms"] <= SUSTAINED_P99_MS
    )
    return summary


async def bench_ingest(work: Path, logs: Path, quick: bool) -> dict[str, Any]:
    directory = work / "ingest"
    directory.mkdir()
    # The messenger's API: a socket that accepts connections (kernel backlog) and never answers.
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind((HOST, 0))
    hole.listen(64)
    hole_url = f"http://{HOST}:{hole.getsockname()[1]}"
    await seed_conversations(SQLiteStore(directory / "amoconnect.sqlite3"))
    server = connector(
        "connector-ingest",
        directory,
        logs,
        amojo_url=hole_url,
        messenger_url=hole_url,
        concurrency=1,
        http_timeout=3600.0,
    )
    server.start()
    pool = RawPool(HOST, server.port, 128)
    tag = f"in{int(time.time())}"
    acks = 0
    try:
        # warm-up: connections open, code paths hot
        warm = [amocrm_hook(server.port, i, tag + "w") for i in range(500)]
        outcomes, meta = await open_loop(pool, warm, 1000, budget=5)
        acks += sum(1 for o in outcomes if o.status == 200)

        seconds = 4.0 if quick else 10.0
        n = int(500 * seconds)
        requests = [amocrm_hook(server.port, i, tag + "l") for i in range(n)]
        outcomes, meta = await open_loop(pool, requests, 500, budget=seconds + 1)
        at_500 = ingest_step_summary(outcomes, meta, 500)
        acks += at_500["acked"]
        print(
            f"   ack latency at 500/s: p50 {fmt(at_500['p50_ms'], 2)} ms, p99 {fmt(at_500['p99_ms'], 2)} ms, "
            f"p99.9 {fmt(at_500['p99_9_ms'], 2)} ms ({at_500['acked']:,} acks, {at_500['errors']} errors)",
            flush=True,
        )

        rates = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000]
        step_seconds = 2.0 if quick else 5.0
        steps = []
        for rate in rates:
            await asyncio.sleep(1.0)
            requests = [amocrm_hook(server.port, i, f"{tag}s{rate}") for i in range(int(rate * step_seconds))]
            pool.failures.clear()
            outcomes, meta = await open_loop(pool, requests, rate, budget=step_seconds + 1)
            step = ingest_step_summary(outcomes, meta, rate)
            step["transport_failures"] = dict(pool.failures)
            acks += step["acked"]
            steps.append(step)
            print(
                f"   offered {rate:>6,}/s: {fmt(step['acks_per_s'], 0):>7} acks/s, p50 {fmt(step['p50_ms'], 2)} ms, "
                f"p99 {fmt(step['p99_ms'], 2)} ms, errors {step['errors']} {step['transport_failures'] or ''}, "
                f"{'sustained' if step['sustained'] else 'NOT sustained'}",
                flush=True,
            )
            if not step["sustained"]:
                break
        _, health = http_get(f"http://{HOST}:{server.port}/healthz")
    finally:
        await pool.close()
        server.stop()
        hole.close()
    conn = sqlite3.connect(directory / "amoconnect.sqlite3")
    try:
        rows = conn.execute("SELECT COUNT(*) FROM queue WHERE kind = 'amocrm'").fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM dead").fetchone()[0]
        dedup = conn.execute("SELECT COUNT(*) FROM dedup WHERE key LIKE 'amocrm:%'").fetchone()[0]
    finally:
        conn.close()
    sustained = [s for s in steps if s["sustained"]]
    return {
        "at_500_per_s": at_500,
        "steps": steps,
        "max_sustained_acks_per_s": max((s["acks_per_s"] for s in sustained), default=0.0),
        "sustained_rule": f"no errors, acks >= 97 % of offered, p99 <= {SUSTAINED_P99_MS:g} ms",
        "acks_total": acks,
        "rows_committed": rows,
        "dedup_keys": dedup,
        "dead_letters": dead,
        "rows_equal_acks": rows == acks == dedup,
        "healthz_at_end": json.loads(health) if health else None,
        "relay": "held: relay.concurrency = 1 and the messenger API never answers, so one job waits "
        "and nothing else is claimed while webhooks are ingested",
    }


# -- 2. end-to-end relay --------------------------------------------------------------------------


def check_delivery(
    plan: Sequence[Planned], outcomes: Sequence[Outcome], records: Sequence[Sequence[Any]]
) -> dict[str, Any]:
    """Loss, duplicates and per-conversation order, from amojo's records of this plan's msgids."""
    by_msgid = {item.msgid: item for item in plan}
    seen: dict[str, int] = defaultdict(int)
    last_seq: dict[int, int] = {}
    order_violations = 0
    arrival: dict[str, float] = {}
    for received_at, msgid, _conversation, _text in records:
        item = by_msgid.get(msgid)
        if item is None:
            continue
        seen[msgid] += 1
        arrival.setdefault(msgid, received_at)
        if last_seq.get(item.conv, -1) > item.seq:
            order_violations += 1
        last_seq[item.conv] = max(last_seq.get(item.conv, -1), item.seq)
    acked = [item for item, o in zip(plan, outcomes, strict=True) if o.status == 200]
    unacked = [item for item, o in zip(plan, outcomes, strict=True) if o.sent_wall and o.status != 200]
    return {
        "sent": sum(1 for o in outcomes if o.sent_wall),
        "acked": len(acked),
        "delivered": len(seen),
        "lost_after_ack": sum(1 for item in acked if item.msgid not in seen),
        "lost_unacked": sum(1 for item in unacked if item.msgid not in seen),
        "delivered_without_ack": sum(1 for item in unacked if item.msgid in seen),
        "duplicates": sum(count - 1 for count in seen.values()),
        "order_violations": order_violations,
        "_arrival": arrival,
    }


async def wait_records(
    amojo: Amojo, since: int, expected: set[str], *, budget: float, quiet: float = 3.0
) -> list[Sequence[Any]]:
    """amojo's records from ``since`` on, once every ``expected`` msgid is in or nothing new came for ``quiet`` s."""
    deadline = time.monotonic() + budget
    records: list[Sequence[Any]] = []
    got: set[str] = set()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        fresh = amojo.records(since + len(records))["records"]
        if fresh:
            records.extend(fresh)
            got.update(r[1] for r in fresh)
            quiet_since = time.monotonic()
        if expected <= got or time.monotonic() - quiet_since > quiet:
            break
        await asyncio.sleep(0.05)
    return records


def cpu_readings(server: Server, amojo: Amojo) -> dict[str, float]:
    """CPU seconds used so far by the relay under test, the amojo fake and this load generator."""
    assert server.process is not None
    assert amojo.process is not None
    return {"relay": server.process.cpu_seconds(), "amojo": amojo.process.cpu_seconds(), "load": time.process_time()}


async def e2e_system(
    name: str, make: Callable[[Amojo], Server], logs: Path, quick: bool, transport: str | None
) -> dict[str, Any]:
    amojo = start_amojo(logs)
    server = make(amojo)
    try:
        server.start()
        pool = RawPool(HOST, server.port, 64)
        tag = f"{name}{int(time.time()) % 100000}"
        # warm-up (not measured)
        warm = fakechat_plan(server.port, 400, RELAY_CONVERSATIONS, tag + "w")
        await closed_lanes(pool, warm, budget=20)
        await wait_records(amojo, 0, {p.msgid for p in warm}, budget=20)
        base = amojo.records(0)["total"]

        # throughput: one message in flight per conversation, as fast as acks come
        n = 4000 if quick else 12000
        plan = fakechat_plan(server.port, n, RELAY_CONVERSATIONS, tag + "t")
        cpu_before = cpu_readings(server, amojo)
        started = time.time()
        outcomes = await closed_lanes(pool, plan, budget=60)
        acked_at = time.time()
        records = await wait_records(amojo, base, {p.msgid for p in plan}, budget=60)
        cpu = {
            who: round(1000 * (after - before) / n, 3)
            for (who, before), after in zip(cpu_before.items(), cpu_readings(server, amojo).values(), strict=True)
        }
        check = check_delivery(plan, outcomes, records)
        arrival = check.pop("_arrival")
        last = max(arrival.values()) if arrival else acked_at
        throughput = {
            "messages": n,
            "conversations": RELAY_CONVERSATIONS,
            "messages_per_s": round(check["delivered"] / (last - started), 1) if last > started else None,
            "acks_per_s": round(check["acked"] / (acked_at - started), 1),
            "cpu_ms_per_message": cpu,
            **check,
        }
        base += len(records)

        # latency: open loop at a moderate rate
        rate = 200.0
        seconds = 4.0 if quick else 10.0
        plan = fakechat_plan(server.port, int(rate * seconds), RELAY_CONVERSATIONS, tag + "l")
        outcomes, meta = await open_loop(
            pool, [p.request for p in plan], rate, budget=seconds + 1, conversations=[p.conv for p in plan]
        )
        records = await wait_records(amojo, base, {p.msgid for p in plan}, budget=30)
        check = check_delivery(plan, outcomes, records)
        arrival = check.pop("_arrival")
        e2e = [arrival[p.msgid] - o.sent_wall for p, o in zip(plan, outcomes, strict=True) if p.msgid in arrival]
        acks = [o.done - o.scheduled for o in outcomes if o.status == 200]
        latency = {
            "offered_per_s": rate,
            "webhook_to_amojo": latency_summary(e2e),
            "ack": latency_summary(acks),
            "launch_lag_max_ms": meta["launch_lag_max_ms"],
            **check,
        }
        refused = amojo.records(0)["refused"]
        await pool.close()
    finally:
        server.stop()
        amojo.stop()
    result = {"system": name, "transport": transport, "throughput": throughput, "latency": latency}
    result["amojo_refusals"] = refused
    t, lat = throughput, latency["webhook_to_amojo"]
    lost = t["lost_after_ack"] + latency["lost_after_ack"]
    dup = t["duplicates"] + latency["duplicates"]
    order = t["order_violations"] + latency["order_violations"]
    cpu = t["cpu_ms_per_message"]
    print(
        f"   {name:28} {fmt(t['messages_per_s'], 0):>7} msg/s (CPU ms/msg: relay {cpu['relay']:.2f}, amojo "
        f"{cpu['amojo']:.2f}, load {cpu['load']:.2f}); webhook→amojo at {rate:g}/s p50 "
        f"{fmt(lat['p50_ms'], 2)} ms p99 {fmt(lat['p99_ms'], 2)} ms; lost {lost}, dup {dup}, order violations {order}",
        flush=True,
    )
    return result


# -- 3. kill -9 at 50 % ---------------------------------------------------------------------------


async def kill_system(
    name: str, make: Callable[[Amojo], Server], logs: Path, quick: bool, amojo_delay_ms: float
) -> dict[str, Any]:
    amojo = start_amojo(logs, delay_ms=amojo_delay_ms)
    server = make(amojo)
    timings: dict[str, float] = {}
    try:
        server.start()
        pool = RawPool(HOST, server.port, 128, request_timeout=10.0)
        tag = f"k{name}{int(time.time()) % 100000}"
        n = 1500 if quick else 3000
        rate = 300.0
        plan = fakechat_plan(server.port, n, RELAY_CONVERSATIONS, tag)
        control = Control()
        acked = 0
        acked_before_kill: set[str] = set()

        def on_answer(i: int, outcome: Outcome) -> None:
            nonlocal acked
            if outcome.status != 200 or "kill" in timings:
                return
            acked += 1
            acked_before_kill.add(plan[i].msgid)
            if acked >= n // 2:
                control.stop()  # nothing more is written to the server from now on
                server.kill9()  # SIGKILL now, while requests are in flight
                timings["kill"] = time.time()

        async def restart() -> None:
            timings["spawn"] = time.time()
            timings["ready"] = server.start()

        control.resume = restart
        outcomes, _ = await open_loop(
            pool,
            [p.request for p in plan],
            rate,
            budget=n / rate + 30,
            conversations=[p.conv for p in plan],
            on_answer=on_answer,
            control=control,
        )
        expected = {p.msgid for p, o in zip(plan, outcomes, strict=True) if o.sent_wall}
        records = await wait_records(amojo, 0, expected, budget=60)
        refused = amojo.records(0)["refused"]
        await pool.close()
    finally:
        server.stop()
        amojo.stop()
    check = check_delivery(plan, outcomes, records)
    arrival = check.pop("_arrival")
    result: dict[str, Any] = {
        "system": name,
        "messages": n,
        "offered_per_s": rate,
        "amojo_delay_ms": amojo_delay_ms,
        **check,
        "lost": check["lost_after_ack"] + check["lost_unacked"],
        "amojo_refusals": refused,
    }
    if "spawn" in timings:
        redelivered = [
            t for msgid, t in arrival.items() if msgid in acked_before_kill and t > timings["kill"]
        ]  # acked before the kill, reached amojo only after it
        result["redelivered_after_restart"] = len(redelivered)
        result["restart_to_ready_s"] = round(timings["ready"] - timings["spawn"], 3)
        if redelivered:
            first = min(redelivered)
            result["first_redelivery_after_spawn_s"] = round(first - timings["spawn"], 3)
            result["first_redelivery_after_ready_s"] = round(first - timings["ready"], 3)
    print(
        f"   {name:28} sent {result['sent']:,}, acked {result['acked']:,}, lost after ack "
        f"{result['lost_after_ack']}, lost unacked {result['lost_unacked']}, duplicates {result['duplicates']}, "
        f"order violations {result['order_violations']}"
        + (
            f", first redelivery {result['first_redelivery_after_spawn_s']} s after spawn "
            f"({result['first_redelivery_after_ready_s']} s after ready)"
            if "first_redelivery_after_spawn_s" in result
            else ""
        ),
        flush=True,
    )
    return result


async def outage_system(name: str, make: Callable[[Amojo], Server], logs: Path, quick: bool) -> dict[str, Any]:
    """amojo answers 503 to everything for a while; the sender (like amoCRM) never retries."""
    amojo = start_amojo(logs)
    server = make(amojo)
    outage_s = 2.0
    try:
        server.start()
        pool = RawPool(HOST, server.port, 128)
        tag = f"o{name[:6]}{int(time.time()) % 100000}"
        rate = 200.0
        n = 600 if quick else 1200
        plan = fakechat_plan(server.port, n, RELAY_CONVERSATIONS, tag)
        loop = asyncio.get_running_loop()
        down: dict[str, float] = {}

        def go_down() -> None:
            down["at"] = time.time()
            http_get(f"http://{HOST}:{amojo.port}/_bench/outage?seconds={outage_s}")

        timer = loop.call_later(1.0, go_down)
        outcomes, _ = await open_loop(
            pool, [p.request for p in plan], rate, budget=n / rate + 10, conversations=[p.conv for p in plan]
        )
        timer.cancel()
        expected = {p.msgid for p, o in zip(plan, outcomes, strict=True) if o.status == 200}
        records = await wait_records(amojo, 0, expected, budget=60, quiet=8.0)
        refused = amojo.records(0)["refused"]
        await pool.close()
    finally:
        server.stop()
        amojo.stop()
    check = check_delivery(plan, outcomes, records)
    arrival = check.pop("_arrival")
    result: dict[str, Any] = {
        "system": name,
        "messages": n,
        "offered_per_s": rate,
        "outage_s": outage_s,
        **check,
        "lost": check["lost_after_ack"] + check["lost_unacked"],
        "amojo_refusals": refused,
    }
    if arrival and "at" in down:
        result["last_delivery_after_outage_end_s"] = round(max(arrival.values()) - (down["at"] + outage_s), 3)
    print(
        f"   {name:28} sent {result['sent']:,}, acked {result['acked']:,}, lost {result['lost']} "
        f"({result['lost_after_ack']} after ack), duplicates {result['duplicates']}, "
        f"order violations {result['order_violations']}",
        flush=True,
    )
    return result


# -- the run --------------------------------------------------------------------------------------


def fsync_probe(directory: Path, count: int = 200) -> dict[str, float | None]:
    import os

    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    samples = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    summary = latency_summary(samples)
    return {"p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"]}


def filesystem(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    print(f"machine: {machine_line(info)}")
    work = Path(tempfile.mkdtemp(prefix="amoconnect-bench-relay-", dir=args.workdir))
    logs = work / "logs"
    logs.mkdir()
    info["store_filesystem"] = filesystem(work)
    info["fsync_4k"] = fsync_probe(work)
    print(f"store on {info['store_filesystem']}; fsync of 4 KiB: {info['fsync_4k']}")
    output: dict[str, Any] = {"benchmark": "relay", "quick": args.quick, "machine": info, "workdir": str(work)}
    parts = set(args.only.split(","))

    def amoconnect_maker(transport: str) -> Callable[[Amojo], Server]:
        def make(amojo: Amojo) -> Server:
            name = f"connector-{transport}-{amojo.port}"
            return connector(
                name, work / name, logs, amojo_url=f"http://{HOST}:{amojo.port}", messenger_url="", transport=transport
            )

        return make

    systems: dict[str, tuple[Callable[[Amojo], Server], str | None]] = {
        "amoconnect (httpx)": (amoconnect_maker("httpx"), "httpx"),
        "amoconnect (aiohttp)": (amoconnect_maker("aiohttp"), "aiohttp"),
        "naive sync (flask+requests)": (lambda amojo: baseline("naive", amojo, logs), None),
        "aiohttp inline": (lambda amojo: baseline("aiohttp", amojo, logs), None),
    }
    with children():
        if "ingest" in parts:
            print("\n1. durable ingest (amoCRM webhooks, SQLite synchronous=FULL, open loop)")
            output["ingest"] = await bench_ingest(work, logs, args.quick)
        if "e2e" in parts:
            print(f"\n2. end-to-end relay (fakechat webhooks from {RELAY_CONVERSATIONS} conversations → amojo)")
            output["relay"] = [
                await e2e_system(name, make, logs, args.quick, transport) for name, (make, transport) in systems.items()
            ]
        if "kill" in parts:
            print(f"\n3. kill -9 at 50 % (amojo answers after {args.amojo_delay_ms:g} ms; the sender never retries)")
            output["kill"] = [
                await kill_system(name, make, logs, args.quick, args.amojo_delay_ms)
                for name, (make, _) in systems.items()
                if name != "amoconnect (aiohttp)"
            ]
        if "outage" in parts:
            print("\n4. a 2 s amojo outage (503 to everything; the sender never retries)")
            output["outage"] = [
                await outage_system(name, make, logs, args.quick)
                for name, (make, _) in systems.items()
                if name != "amoconnect (aiohttp)"
            ]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return output


def summary_table(output: dict[str, Any]) -> str:
    ingest = output.get("ingest")
    kills = {k["system"]: k for k in output.get("kill", [])}
    outages = {k["system"]: k for k in output.get("outage", [])}
    headers = ["system", "ingest acks/s", "ack p99 @500/s", "relay msg/s", "relay CPU/msg", "e2e p50", "e2e p99"]
    headers += ["lost/dup/order"]
    headers += ["lost after kill -9 @50%", "lost in 2 s amojo outage"]
    rows = []
    for entry in output.get("relay", []):
        name = entry["system"]
        t, lat = entry["throughput"], entry["latency"]
        is_connector = name.startswith("amoconnect")
        kill = kills.get(name) or (kills.get("amoconnect (httpx)") if is_connector else None)
        outage = outages.get(name) or (outages.get("amoconnect (httpx)") if is_connector else None)
        lost = t["lost_after_ack"] + lat["lost_after_ack"]
        dup = t["duplicates"] + lat["duplicates"]
        order = t["order_violations"] + lat["order_violations"]
        rows.append(
            [
                name,
                fmt(ingest["max_sustained_acks_per_s"], 0) if ingest and is_connector else "-",
                f"{fmt(ingest['at_500_per_s']['p99_ms'], 2)} ms" if ingest and is_connector else "-",
                fmt(t["messages_per_s"], 0),
                f"{t['cpu_ms_per_message']['relay']:.2f} ms",
                f"{fmt(lat['webhook_to_amojo']['p50_ms'], 2)} ms",
                f"{fmt(lat['webhook_to_amojo']['p99_ms'], 2)} ms",
                f"{lost}/{dup}/{order}",
                f"{kill['lost']} ({kill['lost_after_ack']} after ack)" if kill else "-",
                f"{outage['lost']} of {outage['sent']}" if outage else "-",
            ]
        )
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="relay benchmark (ingest, end-to-end, kill -9)")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--only", default=ALL_PARTS, help="comma-separated parts: ingest, e2e, kill, outage")
    parser.add_argument("--amojo-delay-ms", type=float, default=50.0, help="amojo's answer time in the kill test")
    parser.add_argument("--workdir", default=None, help="where the SQLite files go (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stores and logs)")
    add_save_option(parser)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        output = asyncio.run(run(args))
    else:
        output = uvloop.run(run(args))
    if output.get("relay"):
        print("\n" + summary_table(output))
    name = "relay-quick" if args.quick else "relay"
    if set(args.only.split(",")) != set(ALL_PARTS.split(",")):
        name += "-" + "-".join(sorted(args.only.split(",")))  # a partial run keeps the full results
    path = write_results(name, output, save=args.save)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
