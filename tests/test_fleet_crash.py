"""Crash proof under load: connectors are killed with SIGKILL at every crash point and at random
moments, restarted, and traffic keeps flowing both ways through a load balancer.

Three ``amoconnect run`` processes share one PostgreSQL schema; the same run with one process
on the test store (SQLite, or PostgreSQL under ``--postgres``). At the end nothing acknowledged
is lost, nothing reaches amoCRM twice, order holds in every conversation both ways, and the
messenger got no more duplicates than there were sends in flight at the kills.
"""

from __future__ import annotations

import itertools
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import tomli_w
from anyio.abc import Process
from processes import Slow, free_port, start_connector, stop_connector
from rig import ACCOUNT, CHANNEL, SCOPE, SECRET, base_config, eventually

from amoconnect.core import AMOCRM
from amoconnect.crashpoints import ENV as CRASH_AT
from amoconnect.testing.fake_amojo import FakeAmojo
from amoconnect.testing.fakechat_api import FakeChat
from amoconnect.testing.servers import serve_app
from amoconnect.testing.stores import fresh_postgres_schema, store_settings, table_rows

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CONVERSATIONS = 100
N_MESSAGES = 1000
"""Acknowledged messages in each direction, at least."""
BOTS = 10
"""fakechat bots (sources): each delivers its clients' updates one at a time, in order."""
MANAGERS = 10
"""Manager webhooks in flight at once; each manager keeps to its own conversations, in order."""
CONCURRENCY = 8
"""``relay.concurrency`` of every process: at most this many sends in flight per process."""
LEASE = 3.0
BACKLOG = 1000
"""The traffic waits while the queue holds this many jobs: it runs until every crash point fired, which
may take minutes on a slow machine, and a relay that lagged all along would leave a backlog after it
stops that grows with that time (thousands of jobs, more than a minute to drain), not with what the
test checks."""
STALL = 30.0
"""Once the traffic stopped, the test fails if the queue does not shrink for this many seconds."""
POINTS = (
    "store.enqueue:150",  # an ingest decoded, its commit not done
    "amojo.answer:80",  # amojo answered, the answer not read
    "relay.running.amocrm:50",  # a manager message claimed, its conversation's lease held
    "relay.done.amocrm:60",  # the messenger answered a send, the job not finished
    "relay.done.inbound:60",  # amojo answered a send, the job not finished
    "relay.ahead.inbound:20",  # likewise, while the finishes of the jobs before it may not be committed
)
ONE_PROCESS_ONLY = ("relay.ahead.inbound:20",)
"""Points only the one-process run reaches: a job starts ahead of earlier finishes only in a conversation
that has several jobs queued, and each bot delivers its chats' updates one at a time, so only a process
that was down a while finds such backlogs (in a fleet the others serve them meanwhile). test_crash.py
kills at ``relay.ahead`` behind a held backlog on each store."""


class Balancer(httpx.AsyncBaseTransport):
    """A round-robin load balancer in front of the connectors listening on the ports in ``up``.

    A connector that refuses the connection is skipped (nothing reached it, so nginx too tries
    the next one); a request cut off after it was sent fails, unacknowledged.
    """

    def __init__(self, up: list[int]) -> None:
        self.up = up
        self._inner = httpx.AsyncHTTPTransport()
        self._turn = itertools.count()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ports, start = list(self.up), next(self._turn)
        for i in range(len(ports)):
            request.url = request.url.copy_with(host="127.0.0.1", port=ports[(start + i) % len(ports)])
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError:
                continue
        raise httpx.ConnectError("no connector is up", request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Kill:
    how: str
    """The crash point, or ``kill -9``."""
    in_flight: int
    """Manager messages the process was sending when it died (its running ``amocrm`` jobs)."""
    at: float = field(default_factory=time.monotonic)
    down: float = 0.0
    """Seconds until the process served again."""


@dataclass
class Fleet:
    """``amoconnect run`` processes, each started again when it dies.

    ``plans[slot]`` are the crash points the slot's process is armed with, one per start, in
    turn; a point is used up once it fired (a ``kill -9`` in between restarts with the same one).
    """

    config: Path
    plans: list[list[str]]
    store: SimpleNamespace
    ports: list[int] = field(init=False)
    up: list[int] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    procs: dict[int, Process] = field(default_factory=dict)
    stopping: bool = False
    _external: set[int] = field(default_factory=set)
    _some_up: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in self.plans]

    @property
    def armed(self) -> int:
        """Crash points that have not fired yet."""
        return sum(len(plan) for plan in self.plans)

    async def keep(self, slot: int) -> None:
        plan, port = self.plans[slot], self.ports[slot]
        died: Kill | None = None
        for start in itertools.count():
            log = self.config.with_name(f"slot{slot}.{start}.log")
            proc = await start_connector(self.config, port, {CRASH_AT: plan[0]} if plan else {}, log=log)
            if died is not None:
                died.down = time.monotonic() - died.at
            self.procs[slot] = proc
            self.up.append(port)
            self._some_up.set()
            if self.stopping:
                await stop_connector(proc)
            await proc.wait()
            self._down(port)
            if self.stopping:
                return
            assert proc.returncode == -signal.SIGKILL, f"connector exited with {proc.returncode}: {log.read_text()}"
            how = "kill -9" if proc.pid in self._external else plan.pop(0)
            died = Kill(how, self._sending(proc.pid))
            self.kills.append(died)

    def describe(self) -> str:
        """What a stall looks like from outside: the queue and its heads by state, the kills, each log's end."""
        queue = table_rows(self.store, "queue GROUP BY state, kind", "state, kind, COUNT(*), MIN(id), MAX(attempts)")
        heads = table_rows(self.store, "heads GROUP BY busy", "busy, COUNT(*), MIN(next_run)")
        logs = sorted(self.config.parent.glob("slot*.log"), key=lambda path: path.stat().st_mtime)[-2:]
        tails = "".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}\n" for path in logs)
        return f"queue {queue}\nheads {heads}\nkills {[(k.how, round(k.down, 1)) for k in self.kills]}\n{tails}"

    def _sending(self, pid: int) -> int:
        # PostgreSQL keeps a dead process's jobs running under its name until the lease runs out.
        mine = f" AND owner LIKE '%:{pid}:%'" if self.store.url else ""
        ((count,),) = table_rows(self.store, f"queue WHERE state = 'running' AND kind = '{AMOCRM}'{mine}")
        return int(count)

    async def kill_one(self) -> None:
        await self.wait_up()
        slot = random.choice([s for s, port in enumerate(self.ports) if port in self.up])
        proc = self.procs[slot]
        self._external.add(proc.pid)
        self._down(self.ports[slot])
        proc.kill()

    def _down(self, port: int) -> None:
        if port in self.up:
            self.up.remove(port)
        if not self.up and self._some_up.is_set():
            self._some_up = anyio.Event()

    async def wait_up(self) -> None:
        with anyio.fail_after(30):
            while not self.up:
                await self._some_up.wait()

    async def stop(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            await stop_connector(proc)
        await eventually(lambda: not self.up, within=30)


class Bots:
    """Several fakechat bots behind one server, told apart by the token in the path; conversation
    ``c`` is the chat ``c{c}`` of bot ``c % BOTS``. Each bot delivers its updates one at a time."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.chats = [
            FakeChat(f"{40 + b}:token", http=http, delivery_attempts=8, delivery_backoff=0.05) for b in range(BOTS)
        ]
        self._by_token = {chat.token: chat for chat in self.chats}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = scope["path"].split("/")[1].removeprefix("bot")
        await self._by_token[token].app(scope, receive, send)

    def of(self, c: int) -> FakeChat:
        return self.chats[c % BOTS]


@dataclass
class Traffic:
    """Clients write in fakechat, managers answer from amoCRM; what each side acknowledged."""

    fleet: Fleet
    amojo: FakeAmojo
    bots: Bots
    slow: Slow
    plain_kills: tuple[float, ...]
    """``kill -9`` of a random process when these shares of the manager messages are acknowledged."""
    client_acked: set[str] = field(default_factory=set)
    manager_acked: set[str] = field(default_factory=set)
    backlog: int = 0
    """Jobs queued when the traffic stopped."""
    drained: float = 0.0
    """Seconds they took to be delivered."""
    _queued: tuple[float, int] = (0.0, 0)

    def enough(self, acked: set[str]) -> bool:
        return len(acked) >= N_MESSAGES and not self.fleet.armed

    def jobs(self) -> int:
        return int(table_rows(self.fleet.store, "queue")[0][0])

    async def room(self) -> None:
        """Wait while the queue holds :data:`BACKLOG` jobs (counted at most ten times a second); fail if it
        stays that full for :data:`STALL` seconds."""
        since = time.monotonic()
        while True:
            at, queued = self._queued
            if time.monotonic() - at >= 0.1:
                self._queued = at, queued = time.monotonic(), self.jobs()
            if queued < BACKLOG:
                return
            if time.monotonic() - since > STALL:
                raise AssertionError(f"{queued} jobs queued for {STALL} s during the traffic\n{self.fleet.describe()}")
            await anyio.sleep(0.1)

    async def client_writes(self, c: int, k: int) -> bool:
        await self.fleet.wait_up()
        await self.room()
        text = f"c{c}:{k}"
        if await self.bots.of(c).client_writes(f"c{c}", text) == 200:
            self.client_acked.add(text)
            return True
        return False

    async def clients(self, bot: int, first: int = 1) -> None:
        """The clients of one bot write in turn, each in order."""
        for k in itertools.count(first):
            for c in range(bot, N_CONVERSATIONS, BOTS):
                if self.enough(self.client_acked):
                    return
                await self.client_writes(c, k)

    async def manager(self, first: int) -> None:
        """One manager answers in a share of the conversations, one webhook at a time."""
        for k in itertools.count():
            for c in range(first, N_CONVERSATIONS, MANAGERS):
                if self.enough(self.manager_acked):
                    return
                await self.fleet.wait_up()
                await self.room()
                text = f"m{c}:{k}"
                if (await self.amojo.emit_text(SCOPE, f"bot{c % BOTS}:c{c}", text)).status == 200:
                    self.manager_acked.add(text)

    async def killer(self) -> None:
        for share in self.plain_kills:
            await eventually(
                lambda share=share: len(self.manager_acked) >= share * N_MESSAGES and self.slow.in_flight, within=60
            )
            await self.fleet.kill_one()

    def delivered(self) -> tuple[list[str], dict[int, list[str]]]:
        """Client texts amoCRM has, and per conversation the texts the client got, each in arrival order."""
        to_amojo = [m.text or "" for m in self.amojo.messages if m.from_client]
        to_chat = {c: [m.text for m in self.bots.of(c).sent_to(f"c{c}")] for c in range(N_CONVERSATIONS)}
        return to_amojo, to_chat

    def unsettled(self) -> str:
        """What has not arrived yet (empty once everything acknowledged has and the queue is empty)."""
        to_amojo, to_chat = self.delivered()
        got = {text for texts in to_chat.values() for text in texts}
        waiting = {
            "client messages": len(self.client_acked - set(to_amojo)),
            "manager messages": len(self.manager_acked - got),
            "jobs": table_rows(self.fleet.store, "queue")[0][0],
        }
        return ", ".join(f"{count} {what}" for what, count in waiting.items() if count)

    async def run(self) -> None:
        async with anyio.create_task_group() as flows:
            for c in range(N_CONVERSATIONS):  # every conversation starts with its client
                flows.start_soon(self.first_words, c)
        await eventually(lambda: table_rows(self.fleet.store, "conversations")[0][0] == N_CONVERSATIONS, 30)
        async with anyio.create_task_group() as flows:
            flows.start_soon(self.killer)
            for bot in range(BOTS):
                flows.start_soon(self.clients, bot)
            for first in range(MANAGERS):
                flows.start_soon(self.manager, first)
        await self.settle()

    async def settle(self) -> None:
        """Wait until everything acknowledged arrived and the queue is empty; fail once the queue has not
        shrunk for :data:`STALL` seconds (a stall, not a slow drain), saying what it held meanwhile."""
        stopped = time.monotonic()
        self.backlog = least = self.jobs()
        shrunk, samples = stopped, [least]
        while self.unsettled():
            await anyio.sleep(0.5)
            samples.append(self.jobs())
            if samples[-1] < least:
                least, shrunk = samples[-1], time.monotonic()
            elif time.monotonic() - shrunk > STALL:
                raise AssertionError(
                    f"not delivered after the traffic stopped: {self.unsettled()}; jobs queued every 5 s since "
                    f"the stop {samples[::10]}\n{self.fleet.describe()}"
                )
        self.drained = time.monotonic() - stopped

    async def first_words(self, c: int) -> None:
        while not await self.client_writes(c, 0):
            pass


async def crash_run(
    tmp_path: Path, store: dict[str, Any], plans: list[list[str]], plain_kills: tuple[float, ...]
) -> None:
    """Drive traffic both ways through ``plans`` of crash points and ``plain_kills``, then check what arrived."""
    up: list[int] = []
    async with httpx.AsyncClient(transport=Balancer(up)) as hooks:
        amojo = FakeAmojo(CHANNEL, SECRET, webhook_client=hooks)
        amojo.connect(ACCOUNT, webhook_url="http://connectors.lb/amocrm/:scope_id")
        bots = Bots(hooks)
        slow = Slow(amojo.app, 0.003, hold_answer=True)
        async with serve_app(slow) as amojo_url, serve_app(bots) as bots_url:
            data = base_config(
                tmp_path,
                channel={"amojo_url": amojo_url},
                relay={"concurrency": CONCURRENCY, "backoff": 0.05, "max_backoff": 0.5, "max_attempts": 50},
                log_level="warning",
            )
            data["store"] = store
            data["server"]["public_url"] = "http://connectors.lb"
            data["sources"] = [
                {
                    "name": f"bot{b}",
                    "plugin": "fakefast",
                    "account": "main",
                    "settings": chat.sandbox_settings(bots_url),
                }
                for b, chat in enumerate(bots.chats)
            ]
            config = tmp_path / "amoconnect.toml"
            config.write_text(tomli_w.dumps(data))
            fleet = Fleet(config, plans, SimpleNamespace(url=store.get("url"), path=store["path"]), up=up)
            traffic = Traffic(fleet, amojo, bots, slow, plain_kills)
            async with anyio.create_task_group() as tg:
                for slot in range(len(plans)):
                    tg.start_soon(fleet.keep, slot)
                try:
                    await traffic.run()
                finally:
                    with anyio.CancelScope(shield=True):
                        await fleet.stop()
                tg.cancel_scope.cancel()
    check(traffic, {point for plan in plans for point in plan})


def check(traffic: Traffic, points: set[str]) -> None:
    to_amojo, to_chat = traffic.delivered()
    kills = traffic.fleet.kills
    duplicates = sum(len(texts) - len(set(texts)) for texts in to_chat.values())
    sending = sum(kill.in_flight for kill in kills)
    print(
        f"\n{len(traffic.client_acked)} client and {len(traffic.manager_acked)} manager messages acknowledged; "
        f"{len(kills)} kills {dict(Counter(k.how for k in kills))}; duplicates toward the messenger "
        f"{duplicates}, bound {sending} (kills x concurrency {len(kills) * CONCURRENCY}); "
        f"back up after {max(k.down for k in kills):.1f} s at most; {traffic.backlog} jobs queued when the "
        f"traffic stopped, delivered in {traffic.drained:.1f} s"
    )
    assert not traffic.client_acked - set(to_amojo), "every acknowledged client message reached amoCRM"
    assert len(to_amojo) == len(set(to_amojo)), "no client message reached amoCRM twice"
    msgids = [m.msgid for m in traffic.amojo.messages if m.from_client]
    assert len(msgids) == len(set(msgids))
    got = {text for texts in to_chat.values() for text in texts}
    assert not traffic.manager_acked - got, "every acknowledged manager message reached the client"
    # A send to the messenger can only be repeated if it was in flight when its process died: the
    # job of a manager message is running from before the send until after it. So the duplicates
    # are at most the amocrm jobs running in the victims at their deaths, counted from the store
    # right after each one, and never more than relay.concurrency per kill.
    assert duplicates <= sending <= len(kills) * CONCURRENCY
    for c in range(N_CONVERSATIONS):
        inbound = [int(t.split(":")[1]) for t in to_amojo if t.startswith(f"c{c}:")]
        assert inbound == sorted(inbound), f"order of conversation c{c} toward amoCRM"
        outbound = [int(t.split(":")[1]) for t in to_chat[c]]
        assert outbound == sorted(outbound), f"order of conversation c{c} toward the client"
    assert {k.how for k in kills} >= {*points, "kill -9"}, "every crash point fired"


def spread(slots: int) -> list[list[str]]:
    """The crash points dealt to ``slots`` processes in turn."""
    points = POINTS if slots == 1 else tuple(p for p in POINTS if p not in ONE_PROCESS_ONLY)
    return [list(points[slot::slots]) for slot in range(slots)]


@pytest.mark.timeout(240)
async def test_a_fleet_on_postgres_survives_kills_at_every_crash_point(tmp_path: Path, postgres: str) -> None:
    store = {"url": fresh_postgres_schema(postgres), "lease": LEASE, "path": str(tmp_path / "unused.sqlite3")}
    await crash_run(tmp_path, {**store, "media_dir": str(tmp_path / "media")}, spread(3), (0.25, 0.6))


@pytest.mark.timeout(240)
async def test_one_process_survives_kills_at_every_crash_point(tmp_path: Path) -> None:
    await crash_run(tmp_path, store_settings(tmp_path, lease=LEASE), spread(1), (0.4,))
