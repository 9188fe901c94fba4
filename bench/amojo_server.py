"""The amojo side of the benchmarks, served by uvicorn in its own process.

``--mode fake``: amoconnect's :class:`~amoconnect.testing.fake_amojo.FakeAmojo` (every check of
the real API, records kept in memory) behind a thin wrapper that adds, for the benchmark only:

- ``GET /_bench/health``;
- ``GET /_bench/records?since=N``: the accepted ``new_message`` sends from index N on, each
  ``[arrived_at (unix s, before any delay), msgid, conversation_id, text]``, plus counters of refusals
  (``duplicate_msgid`` and any other status);
- ``GET /_bench/outage?seconds=S``: every amojo call is answered 503 for the next S seconds;
- ``--delay-ms``: every amojo call is read in full, then answered this much later (amojo's
  answer time); a request that arrived is kept even if its sender has gone meanwhile.

``--mode sink``: a minimal ASGI app for raw client throughput. It checks what amojo checks on
every request (Content-MD5 of the body, the HMAC-SHA1 ``X-Signature`` over method, MD5,
Content-Type, Date and path, a Date within 15 minutes) and answers the documented success body,
keeping nothing.

    python bench/amojo_server.py --mode fake --port 18001
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec
import uvicorn

from amoconnect.amojo import wire
from amoconnect.signing import CONTENT_TYPE, signature_for
from amoconnect.testing.fake_amojo import FakeAmojo

_json = msgspec.json.Encoder()
_PREFIX = "/v2/origin/custom/"


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes = b"") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BenchFake:
    """FakeAmojo plus a records route, an outage switch and an optional answer delay."""

    def __init__(self, fake: FakeAmojo, delay: float) -> None:
        self.fake = fake
        self.delay = delay
        self.records: list[tuple[float, str, str, str]] = []
        self.refused: dict[str, int] = {}
        self.down_until = 0.0
        self._event = msgspec.json.Decoder(wire.MessageEvent)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        arrived = time.time()
        path = scope["path"]
        if path.startswith("/_bench/"):
            await self._bench(scope, send)
            return
        # Read the whole request first: a request that arrived is kept even if its sender goes
        # away during the delay, as a server that has read it would.
        body = await _read_body(receive)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if self.delay:
            await asyncio.sleep(self.delay)
        if time.time() < self.down_until:
            self.refused["503 outage"] = self.refused.get("503 outage", 0) + 1
            await _answer(send, 503, b'{"error":"service unavailable","code":"outage"}')
            return
        status = 0
        answer = b""

        async def watch(message: Any) -> None:
            nonlocal status, answer
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status != 200:
                answer += message.get("body", b"")
            await send(message)

        await self.fake(scope, replay, watch)
        record = scope.get("state", {}).get("fake_amojo_record")
        rest = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
        if scope["method"] != "POST" or record is None or not rest or "/" in rest:
            return  # only the send-message method, POST /v2/origin/custom/{scope_id}, is recorded
        if status == 200:
            payload = self._event.decode(record.body).payload
            self.records.append((arrived, payload.msgid, payload.conversation_id, payload.message.text or ""))
            return
        try:
            code = f"{status} {msgspec.json.decode(answer).get('code', '')}"
        except (msgspec.DecodeError, AttributeError):
            code = str(status)
        self.refused[code] = self.refused.get(code, 0) + 1

    async def _bench(self, scope: Any, send: Any) -> None:
        if scope["path"] == "/_bench/health":
            await _answer(send, 200, b'{"ok":true}')
            return
        query = scope.get("query_string", b"").decode()
        if scope["path"] == "/_bench/outage":
            seconds = float(query.split("seconds=", 1)[1].split("&", 1)[0])
            self.down_until = time.time() + seconds
            await _answer(send, 200, b'{"ok":true}')
            return
        if scope["path"] == "/_bench/records":
            since = int(query.split("since=", 1)[1].split("&", 1)[0]) if "since=" in query else 0
            body = _json.encode(
                {
                    "records": self.records[since:],
                    "total": len(self.records),
                    "refused": self.refused,
                }
            )
            await _answer(send, 200, body)
            return
        await _answer(send, 404, b'{"error":"not found"}')


class Sink:
    """Verifies each request as amojo does and answers the documented success body; keeps nothing."""

    def __init__(self, channel_id: str, secret: str) -> None:
        self.channel_id = channel_id
        self.secret = secret
        self._event = msgspec.json.Decoder(wire.MessageEvent)
        self._connect = msgspec.json.Decoder(wire.ConnectRequest)

    def _verified(self, scope: Any, body: bytes) -> bool:
        headers = dict(scope["headers"])
        signature = headers.get(b"x-signature", b"").decode()
        content_md5 = headers.get(b"content-md5", b"").decode()
        content_type = headers.get(b"content-type", b"").decode()
        date = headers.get(b"date", b"").decode()
        if content_type != CONTENT_TYPE or content_md5 != hashlib.md5(body).hexdigest():
            return False
        try:
            if abs(time.time() - parsedate_to_datetime(date).timestamp()) > 900:
                return False
        except (TypeError, ValueError, IndexError):
            return False
        path = scope["raw_path"].decode("latin-1")  # as the request line carried it, as amojo signs
        expected = signature_for(self.secret, scope["method"], content_md5, content_type, date, path)
        return hmac.compare_digest(expected, signature)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/_bench/health":
            await _answer(send, 200, b'{"ok":true}')
            return
        body = await _read_body(receive)
        if not self._verified(scope, body):
            await _answer(send, 403, b'{"error":"bad signature","code":"bad_signature"}')
            return
        if path.endswith("/connect"):
            request = self._connect.decode(body)
            answer = wire.ConnectResponse(
                account_id=request.account_id,
                scope_id=f"{self.channel_id}_{request.account_id}",
                hook_api_version=request.hook_api_version,
                title=request.title,
            )
            await _answer(send, 200, _json.encode(answer))
            return
        try:
            payload = self._event.decode(body).payload
        except msgspec.DecodeError:
            await _answer(send, 400, b'{"error":"invalid body","code":"invalid_body"}')
            return
        sent = wire.SentMessage(
            msgid=str(uuid.uuid4()),
            conversation_id=payload.conversation_id,
            sender_id=payload.sender.id,
            ref_id=payload.msgid,
        )
        await _answer(send, 200, _json.encode(wire.SendMessageResponse(new_message=sent)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fake", "sink"), default="fake")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--account-id", default=None, help="connect this account at start (fake mode)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    app: Any
    if args.mode == "fake":
        fake = FakeAmojo(args.channel_id, args.secret)
        if args.account_id:
            fake.connect(args.account_id)
        app = BenchFake(fake, args.delay_ms / 1000)
    else:
        app = Sink(args.channel_id, args.secret)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off", ws="none")


if __name__ == "__main__":
    main()
