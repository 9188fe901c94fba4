"""FakeVK by itself: VK's envelope and rules over HTTP, uploads, execute, the Callback API and Long Poll.

Every event these tests make and every call they get answered is checked with vkbottle-types
at the end of each test (the ``fake`` fixture).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from amoconnect.testing.fakes import ClientMedia
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from amoconnect_vk.fake import FakeVK, link, video
from amoconnect_vk.vkapi import button_payload

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(fake: FakeVK) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fake), base_url="http://api.vk.test", headers=headers
    ) as client:
        yield client


async def call(api: httpx.AsyncClient, method: str, **params: Any) -> dict[str, Any]:
    response = await api.post(f"/method/{method}", data={"v": "5.199", **{k: str(v) for k, v in params.items()}})
    assert response.status_code == 200, "VK answers errors with HTTP 200 too"
    body: dict[str, Any] = response.json()
    return body


def error_code(body: dict[str, Any]) -> int:
    code: int = body["error"]["error_code"]
    return code


# -- the envelope ---------------------------------------------------------------------------------


async def test_errors_come_in_vks_envelope(api: httpx.AsyncClient, fake: FakeVK) -> None:
    body = await call(api, "messages.fly", peer_id=1)
    assert body["error"]["error_code"] == 3
    assert body["error"]["error_msg"] == "Unknown method passed"
    params = {p["key"]: p["value"] for p in body["error"]["request_params"]}
    assert params["method"] == "messages.fly" and params["peer_id"] == "1" and "access_token" not in params
    assert error_code(await call(api, "users.get", user_ids="1", colour="red")) == 100
    no_version = await api.post("/method/users.get", data={"user_ids": "1"})
    assert no_version.json()["error"]["error_code"] == 8


async def test_tokens(fake: FakeVK) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://api.vk.test") as client:
        missing = await client.post("/method/users.get", data={"v": "5.199"})
        wrong = await client.post("/method/users.get", data={"v": "5.199", "access_token": "nope"})
        right = await client.get("/method/users.get", params={"v": "5.199", "access_token": fake.token})
    assert missing.json()["error"]["error_code"] == wrong.json()["error"]["error_code"] == 5
    assert right.json() == {"response": []}


async def test_a_community_token_cannot_read_the_wall(api: httpx.AsyncClient) -> None:
    assert error_code(await call(api, "wall.getById", posts="-1_1")) == 27


# -- messages.send --------------------------------------------------------------------------------


async def test_send_rules(api: httpx.AsyncClient, fake: FakeVK) -> None:
    await fake.client_writes(5, "hi")
    assert error_code(await call(api, "messages.send", peer_id=5, message="x")) == 100, "random_id is required"
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1)) == 100, "empty"
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1, message="x" * 4097)) == 914
    keyboard = json.dumps({"inline": True, "buttons": [[{"action": {"type": "text", "label": ""}}]]})
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1, message="x", keyboard=keyboard)) == 911
    long = {"action": {"type": "text", "label": "a", "payload": button_payload("ы" * 246)}}  # 256 characters
    keyboard = json.dumps({"inline": True, "buttons": [[long]]}, ensure_ascii=False)
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1, message="x", keyboard=keyboard)) == 911
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1, attachment="photo1_2")) == 100
    forward = json.dumps({"peer_id": 5, "conversation_message_ids": [99], "is_reply": True})
    assert error_code(await call(api, "messages.send", peer_id=5, random_id=1, message="x", forward=forward)) == 100
    first = await call(api, "messages.send", peer_ids=5, random_id=77, message="hello")
    again = await call(api, "messages.send", peer_ids=5, random_id=77, message="hello")
    assert first == again == {"response": [{"peer_id": 5, "message_id": 1002, "conversation_message_id": 2}]}
    assert [m.text for m in fake.received(5)] == ["hello"]
    plain = await call(api, "messages.send", peer_id=5, random_id=78, message="plain")
    assert plain == {"response": 1003}, "with peer_id VK answers the message id"


async def test_who_may_be_written_to(api: httpx.AsyncClient, fake: FakeVK) -> None:
    fake.add_user("Silent", user_id=6)
    assert error_code(await call(api, "messages.send", peer_id=6, random_id=1, message="x")) == 901
    per_peer = await call(api, "messages.send", peer_ids=6, random_id=1, message="x")
    assert per_peer["response"][0]["error"]["code"] == 901
    await fake.client_allows(6)
    assert "response" in await call(api, "messages.send", peer_id=6, random_id=2, message="x")
    fake.users[6].closed_privacy = True
    assert error_code(await call(api, "messages.send", peer_id=6, random_id=3, message="x")) == 902
    fake.client_blacklists(6)
    assert error_code(await call(api, "messages.send", peer_id=6, random_id=4, message="x")) == 900
    assert error_code(await call(api, "messages.send", peer_id=12345, random_id=5, message="x")) == 936


async def test_reactions_and_typing_rules(api: httpx.AsyncClient, fake: FakeVK) -> None:
    await fake.client_writes(5, "hi")
    assert error_code(await call(api, "messages.sendReaction", peer_id=5, cmid=1, reaction_id=999)) == 100
    assert error_code(await call(api, "messages.sendReaction", peer_id=5, cmid=42, reaction_id=1)) == 100
    assert (await call(api, "messages.sendReaction", peer_id=5, cmid=1, reaction_id=1))["response"] == 1
    assert error_code(await call(api, "messages.setActivity", peer_id=5, type="dancing")) == 100
    assert [r.emoji for r in fake.received_reactions(5)] == ["❤️"]


# -- uploads, execute, limits ---------------------------------------------------------------------


async def test_photo_and_document_uploads(api: httpx.AsyncClient, fake: FakeVK) -> None:
    await fake.client_writes(5, "hi")
    server = (await call(api, "photos.getMessagesUploadServer", peer_id=5))["response"]
    uploaded = (await api.post(server["upload_url"], files={"photo": ("a.png", b"\x89PNG pic", "image/png")})).json()
    assert error_code(await call(api, "photos.saveMessagesPhoto", photo=uploaded["photo"], server=1, hash="x")) == 100
    (photo,) = (await call(api, "photos.saveMessagesPhoto", **uploaded))["response"]
    server = (await call(api, "photos.getMessagesUploadServer", peer_id=5))["response"]
    not_image = (await api.post(server["upload_url"], files={"photo": ("a.png", b"text", "image/png")})).json()
    assert not_image["photo"] == "[]"
    doc_server = (await call(api, "docs.getMessagesUploadServer", type="doc", peer_id=5))["response"]
    no_file = (await api.post(doc_server["upload_url"], files={"photo": ("a.pdf", b"%PDF", "application/pdf")})).json()
    assert "error" in no_file
    doc_server = (await call(api, "docs.getMessagesUploadServer", type="doc", peer_id=5))["response"]
    file = (await api.post(doc_server["upload_url"], files={"file": ("a.pdf", b"%PDF", "application/pdf")})).json()
    saved = (await call(api, "docs.save", file=file["file"], title="offer.pdf"))["response"]
    attachment = f"photo{photo['owner_id']}_{photo['id']},doc{saved['doc']['owner_id']}_{saved['doc']['id']}"
    assert "response" in await call(api, "messages.send", peer_id=5, random_id=9, attachment=attachment)
    (got,) = fake.received(5)
    assert got.kind == "picture"
    downloaded = await api.get(photo["sizes"][-1]["url"])
    assert downloaded.content == b"\x89PNG pic"


async def test_execute_runs_calls_and_reports_each_failure(api: httpx.AsyncClient, fake: FakeVK) -> None:
    await fake.client_writes(5, "hi")
    code = (
        'return [API.messages.send({"peer_ids": 5, "random_id": 1, "message": "one"}),'
        ' API.messages.send({"peer_ids": 5, "random_id": 2, "message": ""}),'
        ' API.messages.send({"peer_ids": 5, "random_id": 3, "message": "three"})];'
    )
    body = await call(api, "execute", code=code)
    assert body["response"][1] is False
    assert [e["error_code"] for e in body["execute_errors"]] == [100]
    assert [m.text for m in fake.received(5)] == ["one", "three"]
    assert error_code(await call(api, "execute", code="var a = 1; return a;")) == 12
    many = "return [" + ",".join(['API.users.get({"user_ids": "5"})'] * 26) + "];"
    assert error_code(await call(api, "execute", code=many)) == 13


async def test_requests_per_second_and_injected_faults(api: httpx.AsyncClient, fake: FakeVK) -> None:
    fake.max_rps = 3
    results = [await call(api, "users.get", user_ids="1") for _ in range(4)]
    assert [("error" in r) for r in results] == [False, False, False, True]
    assert error_code(results[-1]) == 6
    fake.max_rps = None
    fake.fail_next(1, 9, method="users.get", message="Flood control: too much messages sent to user")
    assert (await call(api, "users.get", user_ids="1"))["error"]["error_msg"].startswith("Flood control")
    assert "response" in await call(api, "users.get", user_ids="1")


# -- the Callback API ----------------------------------------------------------------------------


class Endpoint:
    """A server that answers VK as told, recording what came."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.answers: list[Response] = []
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = json.loads(await Request(scope, receive).body())
        self.bodies.append(body)
        if body["type"] == "confirmation":
            response: Response = PlainTextResponse(self.code)
        else:
            response = self.answers.pop(0) if self.answers else PlainTextResponse("ok")
        await response(scope, receive, send)


async def test_callback_servers_confirm_then_get_their_events(fake: FakeVK) -> None:
    endpoint = Endpoint("wrong code")
    fake.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint))
    server = fake.add_callback_server("http://connector/hook", secret="s", events=["message_new"])
    await fake.client_writes(5, "hi")
    assert server.status == "failed" and fake.pending
    endpoint.code = fake.confirmation_code
    await fake.deliver_pending()
    await fake.client_types(5)  # not switched on: never sent
    assert server.status == "ok" and not fake.pending
    assert [b["type"] for b in endpoint.bodies] == ["confirmation", "confirmation", "message_new"]
    assert endpoint.bodies[-1]["secret"] == "s"


async def test_callback_retries_honour_retry_after(fake: FakeVK) -> None:
    endpoint = Endpoint(fake.confirmation_code)
    endpoint.answers = [Response(status_code=503, headers={"Retry-After": "7"}), PlainTextResponse("not ok")]
    fake.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=endpoint))
    fake.retry_after_cap = 0.01
    fake.add_callback_server("http://connector/hook")
    await fake.client_writes(5, "hi")
    attempts = [d for d in fake.deliveries if d.event_id != "confirmation"]
    assert [(d.status, d.headers.get("X-Retry-Counter")) for d in attempts] == [(503, None), (200, "1"), (200, "2")]
    assert [d.answer for d in attempts] == ["", "not ok", "ok"]


# -- Bots Long Poll -------------------------------------------------------------------------------


async def test_long_poll(api: httpx.AsyncClient, fake: FakeVK) -> None:
    assert error_code(await call(api, "groups.getLongPollServer", group_id=fake.group_id)) == 100
    await call(api, "groups.setLongPollSettings", group_id=fake.group_id, enabled=1, message_new=1)
    server = (await call(api, "groups.getLongPollServer", group_id=fake.group_id))["response"]
    await fake.client_writes(5, "one")
    await fake.client_types(5)  # not switched on
    query = {"act": "a_check", "key": server["key"], "ts": server["ts"], "wait": "1"}
    answer = (await api.get(server["server"], params=query)).json()
    assert [u["object"]["message"]["text"] for u in answer["updates"]] == ["one"] and answer["ts"] == "1"
    assert (await api.get(server["server"], params={**query, "ts": answer["ts"], "wait": "0"})).json()["updates"] == []
    fake.expire_longpoll_key()
    assert (await api.get(server["server"], params=query)).json() == {"failed": 2}
    query["key"] = fake.longpoll_key
    fake.lose_longpoll_history()
    assert (await api.get(server["server"], params=query)).json() == {"failed": 3}
    assert (await api.get(server["server"], params=query)).json() == {"failed": 1, "ts": "1"}


async def test_every_event_the_fake_makes_is_valid_for_vkbottle(fake: FakeVK) -> None:
    fake.longpoll_enabled = True
    fake.longpoll_events = {"message_new"}
    user = fake.add_user("Anna", "K", domain="anna")
    await fake.client_writes(user, "text", media=ClientMedia(kind="picture", content=b"\x89PNG", file_name="a.png"))
    await fake.client_writes(user, media=ClientMedia(kind="file", content=b"%PDF", file_name="a.pdf"))
    await fake.client_writes(user, media=ClientMedia(kind="voice", content=b"OggS"))
    await fake.client_writes(user, media=ClientMedia(kind="sticker", content=b"\x89PNG"))
    await fake.client_writes(user, attachments=[video(user, 1, "clip"), link("https://example.com", "Example")])
    await fake.client_writes(user, location=(1.5, 2.5))
    await fake.client_writes(user, "fwd", forward=["1"], reply_to="2", payload=button_payload("x"))
    await fake.client_edits(user, "1", "edited")
    await fake.client_types(user)
    await fake.client_reacts(user, "1", "🔥")
    await fake.client_reacts(user, "1", "", removed=True)
    await fake.client_allows(user)
    await fake.client_denies(user)
    post = await fake.publish_post("Post", picture=b"\xff\xd8\xff")
    await fake.client_comments(user, post, "first", media=ClientMedia(kind="picture", content=b"\x89PNG"))
    await fake.client_comments(user, post, "in the thread", reply_to_comment=max(fake.comments))
    await fake.client_edits_comment(max(fake.comments), "edited")
    await fake.delete_comment(max(fake.comments))
    await fake.restore_comment(max(fake.comments))
    fake.sent.append(fake.add_message(user, -fake.group_id, text="from the community"))
    await fake.client_reads(user)
    assert len({e["type"] for e in fake.events}) == 12
