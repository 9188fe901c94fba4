"""Attack benchmark: what a well-behaved sender gets through while the connector is under a connection flood.

Everything runs on loopback, each part in its own process: the connector (``bench/connector.py``,
its ``[server]`` guards at their defaults: 1,000 connections, 10 s for a request's head, 10 s for
a body, 64 MiB of body memory), amojo (``bench/amojo_server.py``) and the attacker (this script
with ``--attacker``). The well-behaved sender is this process: 8 lanes posting signed amoCRM
webhooks (closed loop, 5 s timeout), once over keep-alive connections and once with a new
connection per webhook (``Connection: close``), as amoCRM's own sender may.

1. Slowloris: 10,000 connections (``--connections``) that send a request line and a header, then
   one more header byte every 2 s, reconnecting whenever the connector closes one. Webhooks
   acknowledged per second by the sender, before and during the flood.
2. Slow bodies: 1,000 connections (``--bodies``) to the fake messenger's webhook, each announcing a
   4 MiB body and sending 1 MiB of it, then stalling: once without the signature header (refused
   at the headers) and once with a signature of the right form but wrong (its body must be read
   to be checked). The connector's RSS before and with them, and the sender's acks meanwhile.

    python bench/bench_attack.py            # about 2 minutes
    python bench/bench_attack.py --quick    # 2,000 flood connections, shorter runs

Results are printed and written to bench/out/attack.json (``--save``: bench/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import (
    BENCH_DIR,
    PYTHON,
    Process,
    RawPool,
    add_save_option,
    children,
    fmt,
    http_get,
    latency_summary,
    machine,
    machine_line,
    table,
    write_results,
)
from bench_relay import HOST, amocrm_hook, connector, start_amojo

from amoconnect.testing.fakechat_api import SIGNATURE_HEADER

LANES = 8


# -- the attacker (a process of its own) ----------------------------------------------------------


async def slowloris(port: int, connections: int, seconds: float) -> dict[str, int]:
    """Hold ``connections`` slow-header connections for ``seconds``, reopening each one the server closes."""
    counts = {"opened": 0, "closed_by_server": 0, "connect_failed": 0}
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                counts["connect_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            counts["opened"] += 1
            try:
                writer.write(b"POST /hooks/fake/main HTTP/1.1\r\nHost: x\r\nX-A: ")
                while time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2.0):
                            if not await reader.read(1024):  # the server closed (or answered 503 and closed)
                                counts["closed_by_server"] += 1
                                break
                    writer.write(b"a")
            except OSError:
                counts["closed_by_server"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts


async def slow_bodies(port: int, connections: int, signed: bool, seconds: float) -> dict[str, int]:
    """``connections`` webhooks announcing 4 MiB, sending 1 MiB, then stalling for ``seconds``."""
    counts: dict[str, int] = {}
    signature = f"{SIGNATURE_HEADER}: sha256={'0' * 64}\r\n" if signed else ""
    head = (f"POST /hooks/fake/main HTTP/1.1\r\nHost: x\r\n{signature}Content-Length: {4 * 2**20}\r\n\r\n").encode()
    chunk = b"[" * 65536

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            counts["connect_failed"] = counts.get("connect_failed", 0) + 1
            return
        answer = b""
        try:
            writer.write(head)
            for _ in range(16):
                writer.write(chunk)
                await writer.drain()
            async with asyncio.timeout(seconds):
                answer = await reader.read(12)
        except (OSError, TimeoutError):
            pass
        finally:
            status = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
            counts[status] = counts.get(status, 0) + 1
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return counts


def attacker_main(args: argparse.Namespace) -> None:
    import uvloop

    if args.attacker == "slowloris":
        result = uvloop.run(slowloris(args.port, args.connections, args.seconds))
    else:
        result = uvloop.run(slow_bodies(args.port, args.bodies, args.attacker == "signed-bodies", args.seconds))
    print(json.dumps(result), flush=True)


# -- the well-behaved sender ------------------------------------------------------------------------


async def send_for(port: int, seconds: float, *, fresh: bool, tag: str) -> dict[str, Any]:
    """Signed amoCRM webhooks from ``LANES`` lanes for ``seconds``; acks/s, failures and latency."""
    pool = RawPool(HOST, port, LANES, request_timeout=5.0)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def lane() -> None:
        while time.monotonic() < deadline:
            request = amocrm_hook(port, next(counter), tag)
            if fresh:
                request = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            started = time.perf_counter()
            status, _ = await pool.request(request)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(LANES)))
    elapsed = time.monotonic() - began
    await pool.close()
    return {
        "acked_per_s": len(latencies) / elapsed,
        "statuses": statuses,
        "transport_failures": pool.failures,
        "latency": latency_summary(latencies),
    }


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


def refusals(port: int) -> dict[str, float]:
    _, body = http_get(f"http://{HOST}:{port}/metrics")
    text = body.decode()
    found = re.findall(r'amoconnect_(connections|webhooks)_refused_total\{(?:reason="(\w+)")?[^}]*\} (\S+)', text)
    totals: dict[str, float] = {}
    for kind, reason, count in found:
        key = f"{kind}:{reason}"
        totals[key] = totals.get(key, 0.0) + float(count)
    return totals


def attacker(kind: str, port: int, logs: Path, **options: Any) -> Process:
    args = [PYTHON, str(Path(__file__).resolve()), "--attacker", kind, "--port", str(port)]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    return Process(args, logs / f"attacker-{kind}-{time.monotonic_ns()}.log")


def attacker_result(process: Process) -> dict[str, int]:
    process.popen.wait(timeout=120)
    lines = [line for line in process.log_path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the attacker left no result:\n{process.tail()}")
    result: dict[str, int] = json.loads(lines[-1])
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="amoconnect-attack-"))
    logs = work / "logs"
    logs.mkdir()
    flood = 2000 if args.quick else args.connections
    seconds = 6.0 if args.quick else 10.0
    output: dict[str, Any] = {"machine": machine(), "flood_connections": flood, "slow_bodies": args.bodies}
    try:
        amojo = start_amojo(logs)
        server = connector(
            "connector",
            work / "store",
            logs,
            amojo_url=f"http://{HOST}:{amojo.port}",
            messenger_url="http://127.0.0.1:9",
            concurrency=1,
        )
        server.start()
        assert server.process is not None
        port, pid = server.port, server.process.pid
        # -- slowloris
        for fresh in (False, True):
            mode = "new connection each" if fresh else "keep-alive"
            quiet = await send_for(port, seconds / 2, fresh=fresh, tag=f"q{int(fresh)}")
            flooding = attacker("slowloris", port, logs, connections=flood, seconds=seconds + 8)
            await asyncio.sleep(6)  # the flood fills the connection slots
            during = await send_for(port, seconds, fresh=fresh, tag=f"s{int(fresh)}")
            rss = rss_mib(pid)
            output[f"slowloris, {mode}"] = {
                "quiet": quiet,
                "during": during,
                "rss_mib": rss,
                "attacker": attacker_result(flooding),
            }
            await asyncio.sleep(11)  # the flood's last connections time out
        output["refusals_after_slowloris"] = refusals(port)
        # -- slow bodies
        for kind in ("unsigned-bodies", "signed-bodies"):
            before = rss_mib(pid)
            stalling = attacker(kind, port, logs, bodies=args.bodies, seconds=seconds + 6)
            await asyncio.sleep(5)
            during = await send_for(port, seconds / 2, fresh=True, tag=kind[:2])
            output[kind] = {
                "rss_before_mib": before,
                "rss_with_mib": rss_mib(pid),
                "sender": during,
                "attacker": attacker_result(stalling),
            }
        output["refusals"] = refusals(port)
    except BaseException:
        print(f"failed; logs kept in {logs}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        Process.stop_all()
    return output


def summary(output: dict[str, Any]) -> str:
    rows = []
    for mode in ("keep-alive", "new connection each"):
        part = output[f"slowloris, {mode}"]
        rows.append(
            [
                f"slowloris × {output['flood_connections']:,}, {mode}",
                fmt(part["quiet"]["acked_per_s"], 0),
                fmt(part["during"]["acked_per_s"], 0),
                fmt(part["during"]["latency"]["p99_ms"], 1),
                str({k: v for k, v in part["during"]["statuses"].items() if k != "200"} or "-"),
                fmt(part["rss_mib"], 0),
            ]
        )
    for kind in ("unsigned-bodies", "signed-bodies"):
        part = output[kind]
        rows.append(
            [
                f"{output['slow_bodies']:,} slow 4 MiB bodies, {kind.split('-')[0]}",
                "",
                fmt(part["sender"]["acked_per_s"], 0),
                fmt(part["sender"]["latency"]["p99_ms"], 1),
                str({k: v for k, v in part["sender"]["statuses"].items() if k != "200"} or "-"),
                f"{fmt(part['rss_before_mib'], 0)} → {fmt(part['rss_with_mib'], 0)}",
            ]
        )
    headers = ["attack", "acks/s quiet", "acks/s under attack", "p99 ms", "other answers", "connector RSS MiB"]
    return table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--connections", type=int, default=10_000, help="slowloris connections")
    parser.add_argument("--bodies", type=int, default=1_000, help="slow-body connections")
    parser.add_argument("--attacker", choices=["slowloris", "unsigned-bodies", "signed-bodies"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    add_save_option(parser)
    args = parser.parse_args()
    if args.attacker:
        attacker_main(args)
        return
    with children():
        output = asyncio.run(run(args))
    print(machine_line(output["machine"]))
    print(summary(output))
    print("refusals:", output["refusals"])
    path = write_results("attack-quick" if args.quick else "attack", output, save=args.save)
    print(f"written to {path}")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH_DIR))
    main()
