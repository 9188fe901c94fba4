"""The two baselines of the relay benchmark: relays that call amojo inside the webhook request.

They take the same fakechat webhook the connector takes (``POST /hooks/fake/main``, signed with
``X-Fakechat-Signature``), send the message to amojo (same msgid, conversation and sender ids
as amoconnect derives) and answer 200 only once amojo has answered. Nothing is stored: a
process killed mid-request loses what it was forwarding.

- ``naive``: the way hand-written integrations work. Flask (its threaded server) when
  installed, else ``http.server.ThreadingHTTPServer``; ``requests`` with a session per thread;
  signing written out by hand.
- ``aiohttp``: a minimal asynchronous inline relay, an aiohttp server forwarding with a shared
  aiohttp client session.

    python bench/baselines.py naive --port 18002 --amojo-url http://127.0.0.1:18001 ...
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOOK_PATH = "/hooks/fake/main"
INSTANCE = "main"


class Relay:
    """What both baselines do with one webhook, minus the HTTP."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.amojo_url = args.amojo_url.rstrip("/")
        self.path = f"/v2/origin/custom/{args.scope_id}"
        self.secret = args.secret
        self.webhook_secret = args.webhook_secret.encode()

    def verified_update(self, body: bytes, signature: str | None) -> dict[str, Any] | None:
        expected = "sha256=" + hmac.new(self.webhook_secret, body, hashlib.sha256).hexdigest()
        if not signature or not hmac.compare_digest(expected, signature):
            return None
        update: dict[str, Any] = json.loads(body)
        return update

    def amojo_request(self, update: dict[str, Any]) -> tuple[str, bytes, dict[str, str]]:
        message = update["message"]
        chat, user = message["chat"]["id"], message["from"]["id"]
        payload = {
            "event_type": "new_message",
            "payload": {
                "timestamp": message["date"],
                "msec_timestamp": message["date"] * 1000,
                "msgid": f"{INSTANCE}:{chat}:{message['message_id']}",
                "conversation_id": f"{INSTANCE}:{chat}",
                "source": {"external_id": INSTANCE},
                "sender": {"id": f"{INSTANCE}:{user}", "name": message["from"].get("name") or user},
                "message": {"type": "text", "text": message.get("text", "")},
            },
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        content_md5 = hashlib.md5(body).hexdigest()
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        to_sign = "\n".join(("POST", content_md5, "application/json", date, self.path))
        headers = {
            "Date": date,
            "Content-Type": "application/json",
            "Content-MD5": content_md5,
            "X-Signature": hmac.new(self.secret.encode(), to_sign.encode(), hashlib.sha1).hexdigest(),
        }
        return self.amojo_url + self.path, body, headers


def run_naive(args: argparse.Namespace) -> None:
    import requests

    relay = Relay(args)
    local = threading.local()

    def forward(body: bytes, signature: str | None) -> tuple[int, bytes]:
        update = relay.verified_update(body, signature)
        if update is None:
            return 401, b'{"error":"bad signature"}'
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        url, data, headers = relay.amojo_request(update)
        response = session.post(url, data=data, headers=headers, timeout=10)
        if response.status_code == 200 or b"duplicate_msgid" in response.content:
            return 200, b'{"ok":true}'
        return 502, b'{"error":"amojo refused"}'

    try:
        from flask import Flask, request
    except ImportError:
        Flask = None

    if Flask is not None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = Flask("naive")

        @app.post(HOOK_PATH)
        def hook() -> Any:
            status, body = forward(request.get_data(), request.headers.get("X-Fakechat-Signature"))
            return body, status, {"Content-Type": "application/json"}

        @app.get("/healthz")
        def healthz() -> Any:
            return b'{"ok":true}', 200, {"Content-Type": "application/json"}

        app.run(host="127.0.0.1", port=args.port, threaded=True)
        return

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *items: Any) -> None:
            return

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/healthz" else 404, b'{"ok":true}')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != HOOK_PATH:
                self._answer(404, b"{}")
                return
            self._answer(*forward(body, self.headers.get("X-Fakechat-Signature")))

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


def run_aiohttp(args: argparse.Namespace) -> None:
    import aiohttp
    from _calls import install as count_calls
    from aiohttp import web

    count_calls()  # bench_cpu.py --calls: the event loop is this process's main thread
    relay = Relay(args)
    sessions: list[aiohttp.ClientSession] = []

    async def on_startup(app: web.Application) -> None:
        sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)))

    async def on_cleanup(app: web.Application) -> None:
        await sessions[0].close()

    async def hook(request: web.Request) -> web.Response:
        update = relay.verified_update(await request.read(), request.headers.get("X-Fakechat-Signature"))
        if update is None:
            return web.json_response({"error": "bad signature"}, status=401)
        url, data, headers = relay.amojo_request(update)
        async with sessions[0].post(url, data=data, headers=headers) as response:
            answer = await response.read()
        if response.status == 200 or b"duplicate_msgid" in answer:
            return web.json_response({"ok": True})
        return web.json_response({"error": "amojo refused"}, status=502)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(HOOK_PATH, hook)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("naive", "aiohttp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amojo-url", required=True)
    parser.add_argument("--scope-id", required=True)
    parser.add_argument("--secret", required=True, help="the channel secret")
    parser.add_argument("--webhook-secret", required=True, help="the messenger's webhook secret")
    args = parser.parse_args()
    (run_naive if args.kind == "naive" else run_aiohttp)(args)


if __name__ == "__main__":
    main()
