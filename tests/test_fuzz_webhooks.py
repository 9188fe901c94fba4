"""Fuzzing the core's webhook routes: never a 5xx, and a refused request stores nothing."""

from __future__ import annotations

import collections
import copy
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
from hypothesis import example, given
from hypothesis import strategies as st
from messengers.loopback import SIGNATURE_HEADER, sign
from rig import ACCOUNT, SCOPE, SECRET, message, rig

from amoconnect.amojo.hooks import not_json
from amoconnect.amojo.wire import parse_webhook
from amoconnect.errors import WebhookError
from amoconnect.testing.fuzz import FUZZ, check_webhook, header_values, running, webhook_bodies
from amoconnect.testing.security import StoreWrites

CONVERSATION = {"id": "8e4d4baa", "client_id": "lb:c1"}
AMOCRM_SAMPLES = [
    {
        "account_id": ACCOUNT,
        "time": 1639572261,
        "message": {
            "conversation": CONVERSATION,
            "sender": {"id": "76fc2bea", "name": "Manager"},
            "receiver": {"id": "2ed64e26", "client_id": "lb:c1", "phone": "+10000000000"},
            "source": {"external_id": "lb"},
            "timestamp": 1639572260,
            "msec_timestamp": 1639572260980,
            "message": {
                "id": "0371a0ff",
                "type": "picture",
                "text": "Hello",
                "media": "http://files.example/a.png",
                "file_name": "a.png",
                "file_size": 10,
                "markup": {"mode": "inline", "buttons": [[{"text": "Yes", "type": "inline"}]]},
            },
        },
    },
    {
        "account_id": ACCOUNT,
        "time": 1639572262,
        "action": {
            "reaction": {
                "message": {"id": "0371a0ff", "client_id": "lb:c1"},
                "conversation": CONVERSATION,
                "user": {"id": "76fc2bea"},
                "type": "react",
                "emoji": "👍",
            }
        },
    },
    {
        "account_id": ACCOUNT,
        "time": 1639572263,
        "action": {"typing": {"conversation": CONVERSATION, "user": {"id": "76fc2bea"}, "expired_at": 1639572299}},
    },
]
MORE_SAMPLES = [
    {  # a Salesbot list with a template and a quote, written first to a phone
        "account_id": ACCOUNT,
        "time": 1639572264,
        "message": {
            "conversation": {"id": "9f5e5cbb"},
            "source": {"external_id": "lb"},
            "sender": {"id": "76fc2bea", "name": "Salesbot"},
            "receiver": {"id": "2ed64e27", "phone": "+10000000001", "email": "a@b.c", "avatar": "http://a/b.png"},
            "timestamp": 1639572263,
            "msec_timestamp": 1639572263000,
            "message": {
                "id": "0371a0fe",
                "type": "text",
                "text": "Pick one",
                "tag": "",
                "media_group_id": "g1",
                "reply_to": {"message": {"id": "0371a0ff", "msgid": "lb:c1:1", "text": "hi", "file_size": 3}},
                "template": {
                    "id": 7,
                    "external_id": "t7",
                    "content": "Hi {{name}}",
                    "params": [{"key": "name", "value": "Ann"}],
                },
                "markup": {
                    "list_message": {
                        "header": "H",
                        "body": "B",
                        "footer": "F",
                        "button": "Open",
                        "sections": [
                            {"title": "S", "rows": [{"callback_data": "r1", "title": "R", "description": "D"}]}
                        ],
                    }
                },
            },
        },
    },
    {  # a reaction in the flat shape
        "account_id": ACCOUNT,
        "time": 1639572265,
        "action": {
            "reaction": {
                "msgid": "0371a0ff",
                "conversation": CONVERSATION,
                "user": {"id": "76fc2bea"},
                "type": "unreact",
            }
        },
    },
]
"""More webhook kinds for the field-by-field test: write first, a list, a template, a quote, a flat reaction."""
HEADERS = st.dictionaries(st.sampled_from(["X-Signature", "Content-Type", "Date", "X-Other"]), header_values())


def signed(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()


def test_amocrm_webhooks_survive_fuzzing(tmp_path: Path) -> None:
    seen: collections.Counter[int] = collections.Counter()
    with running(rig(tmp_path)) as (r, portal):
        r.runtime.relay.concurrency = 0  # park the relay: what ingest stores stays visible

        @FUZZ
        @example(body=json.dumps(AMOCRM_SAMPLES[0]).encode(), sign_it=True, headers={})
        @example(
            body=b'{"account_id": "a", "time": 1, "message": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            sign_it=True,
            headers={},
        )
        @example(body=json.dumps(AMOCRM_SAMPLES[0]).encode().replace(b"Hello", b"He\xffllo"), sign_it=True, headers={})
        @given(body=st.one_of(*(webhook_bodies(s) for s in AMOCRM_SAMPLES)), sign_it=st.booleans(), headers=HEADERS)
        def fuzz(body: bytes, sign_it: bool, headers: dict[str, str]) -> None:
            if sign_it:
                headers = {**headers, "X-Signature": signed(body)}
            response = check_webhook(portal, r.runtime, "POST", f"/amocrm/{SCOPE}", body, headers=headers)
            seen[response.status_code] += 1
            if sign_it and not_json(body) is None:  # amoCRM sends it once: kept, whatever it holds
                assert response.status_code == 200, response.text

        fuzz()
    assert seen[200] and seen[400] and seen[401], seen  # signed garbage got past the signature check


WRONG_VALUES = [42, 1639572260980.5, "42", "twelve", True, None, [1], {"x": 1}]
"""A value of every JSON type (numbers and numeric text included), each the wrong type somewhere."""


def paths(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every field of a sample, nested ones and the objects holding them included."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*path, key)
        yield from paths(child, (*path, key))


def replaced(sample: Any, path: tuple[str | int, ...], value: Any) -> bytes:
    body = copy.deepcopy(sample)
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return json.dumps(body).encode()


def test_a_wrong_type_in_any_field_of_any_amocrm_webhook_is_kept(tmp_path: Path) -> None:
    """For every field of every webhook kind and a value of each JSON type: a signed webhook is
    answered 200 and stored; the worker then either understands it or makes it a dead letter
    (parse_webhook raises WebhookError, the handler's GiveUp), never anything else."""
    outcomes: collections.Counter[str] = collections.Counter()
    with running(rig(tmp_path)) as (r, portal):
        r.runtime.relay.concurrency = 0  # park the relay: what ingest stores stays visible
        for sample in AMOCRM_SAMPLES + MORE_SAMPLES:
            for path in paths(sample):
                for value in WRONG_VALUES:
                    body = replaced(sample, path, value)

                    async def post(body: bytes = body) -> tuple[httpx.Response, StoreWrites]:
                        with StoreWrites(r.runtime.store).watching() as writes:
                            response = await r.runtime.client.post(
                                f"/amocrm/{SCOPE}", content=body, headers={"X-Signature": signed(body)}
                            )
                        return response, writes

                    response, writes = portal.call(post)
                    where = f"{'.'.join(map(str, path))} = {value!r}"
                    assert response.status_code == 200, f"{where}: {response.status_code} {response.text}"
                    answer = response.json()
                    assert [j.payload for j in writes.jobs] == [body] or answer.get("duplicate"), where
                    try:
                        parse_webhook(body)
                    except WebhookError:
                        assert "dead_letter" in answer, where
                        outcomes["dead letter"] += 1
                    else:
                        outcomes["job"] += 1
    assert outcomes["job"] and outcomes["dead letter"], outcomes


def test_messenger_webhooks_survive_fuzzing(tmp_path: Path) -> None:
    sample = json.loads(msgspec.json.encode([message("c1", "1", text="hi")]))
    seen: collections.Counter[int] = collections.Counter()
    with running(rig(tmp_path)) as (r, portal):
        r.runtime.relay.concurrency = 0

        @FUZZ
        @example(body=json.dumps(sample).encode(), sign_it=True, headers={}, method="POST", path="/hooks/loopback/lb")
        @example(body=b"[" * 1000 + b"]" * 1000, sign_it=True, headers={}, method="POST", path="/hooks/loopback/lb")
        @given(
            body=webhook_bodies(sample),
            sign_it=st.booleans(),
            headers=st.dictionaries(st.sampled_from([SIGNATURE_HEADER, "Content-Type"]), header_values()),
            method=st.sampled_from(["POST", "GET"]),
            path=st.sampled_from(["/hooks/loopback/lb", "/hooks/plain/pl", "/hooks/loopback/lb/extra"]),
        )
        def fuzz(body: bytes, sign_it: bool, headers: dict[str, str], method: str, path: str) -> None:
            if sign_it:
                headers = {**headers, SIGNATURE_HEADER: sign(body)}
            seen[check_webhook(portal, r.runtime, method, path, body, headers=headers).status_code] += 1

        fuzz()
    assert seen[200] and seen[400] and seen[401], seen
