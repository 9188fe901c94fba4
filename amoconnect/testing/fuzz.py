"""Fuzzing webhook routes with hypothesis, through the in-process app (needs ``hypothesis``: the ``test`` extra).

::

    with running(connector(MyAdapter, config=...)) as (rig, portal):
        @FUZZ
        @given(body=webhook_bodies(SAMPLE))
        def test(body: bytes) -> None:
            check_webhook(portal, rig.runtime, "POST", "/hooks/mine/main", body, headers=sign(body))

``webhook_bodies(sample)`` mixes junk bytes, broken JSON and, mostly, a real webhook ``sample``
with keys dropped and values swapped for any JSON, so that a body the route signs correctly
reaches the parser. :func:`check_webhook` asserts the properties: never a 5xx, and a refused
request (non-2xx) writes no queue job or dedup key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ..runtime import Runtime
from .security import StoreWrites

__all__ = [
    "FUZZ",
    "check_webhook",
    "header_values",
    "json_values",
    "misencoded_bodies",
    "mutated",
    "nested_bodies",
    "running",
    "webhook_bodies",
]

T = TypeVar("T")

FUZZ = settings(
    max_examples=int(os.environ.get("AMOCONNECT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""The fuzz tests' profile: fixed examples (the same on every run and in CI), no deadline, few enough to be
quick; ``AMOCONNECT_FUZZ_EXAMPLES=5000`` fuzzes longer."""


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, small."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=8,
    )


def mutated(sample: Any) -> st.SearchStrategy[Any]:
    """``sample`` (decoded JSON) with values replaced by any JSON, a key dropped or added here and there."""
    if isinstance(sample, dict) and sample:
        same_keys = st.fixed_dictionaries({key: mutated(value) for key, value in sample.items()})
        one_dropped = st.sampled_from(sorted(sample)).map(lambda gone: {k: v for k, v in sample.items() if k != gone})
        one_added = st.tuples(st.text(max_size=10), json_values()).map(lambda kv: {**sample, kv[0]: kv[1]})
        return st.one_of(same_keys, one_dropped, one_added, json_values())
    if isinstance(sample, list) and sample:
        return st.one_of(st.lists(st.one_of(*(mutated(item) for item in sample)), max_size=4), json_values())
    return st.one_of(st.just(sample), st.just(sample), json_values())


def webhook_bodies(sample: Mapping[str, Any] | list[Any]) -> st.SearchStrategy[bytes]:
    """Bodies for a webhook route: mostly ``sample`` mutated, also junk bytes, broken and wrong-shaped JSON,
    deep nesting and other encodings (:func:`nested_bodies`, :func:`misencoded_bodies`)."""
    valid = _encode(sample)
    return st.one_of(
        st.just(valid),
        mutated(sample).map(_encode),
        mutated(sample).map(_encode),
        json_values().map(_encode),
        st.binary(max_size=200),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        nested_bodies(sample),
        misencoded_bodies(sample),
    )


def nested_bodies(sample: Mapping[str, Any] | list[Any]) -> st.SearchStrategy[bytes]:
    """``sample`` with one value, or the whole body, nested hundreds to thousands of arrays or objects deep."""
    depths = st.sampled_from([200, 999, 1000, 1001, 1500, 5000, 50_000])

    def deep(depth: int, objects: bool) -> bytes:
        return b'{"a":' * depth + b"1" + b"}" * depth if objects else b"[" * depth + b"]" * depth

    def inside(key: Any, depth: int, objects: bool) -> bytes:
        marker = "\u0000nested\u0000"
        shell = {**sample, key: marker} if isinstance(sample, Mapping) else [*sample, marker]
        return _encode(shell).replace(json.dumps(marker).encode(), deep(depth, objects))

    keys = st.sampled_from(sorted(sample)) if isinstance(sample, Mapping) and sample else st.just(0)
    return st.one_of(
        st.builds(deep, depths, st.booleans()),
        st.builds(inside, keys, depths, st.booleans()),
    )


_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80"]


def misencoded_bodies(sample: Mapping[str, Any] | list[Any]) -> st.SearchStrategy[bytes]:
    """``sample`` in another encoding (UTF-16, UTF-32, Latin-1, cp1251, with a BOM), or with bytes that are
    not UTF-8 (a stray continuation byte, an overlong form, a surrogate) put inside one of its strings."""
    text = json.dumps(sample, ensure_ascii=False)
    valid = _encode(sample)
    quotes = [i + 1 for i, byte in enumerate(valid) if byte == ord('"')] or [0]

    def reencoded(encoding: str) -> bytes:
        return text.encode(encoding, "replace")

    def spliced(at: int, bad: bytes) -> bytes:
        return valid[:at] + bad + valid[at:]

    return st.one_of(
        st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1251", "utf-8-sig"]).map(reencoded),
        st.builds(spliced, st.sampled_from(quotes), st.sampled_from(_BAD_UTF8)),
    )


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def header_values() -> st.SearchStrategy[str]:
    """Any text a header can carry (printable Latin-1)."""
    return st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=60)


@contextmanager
def running(manager: AbstractAsyncContextManager[T]) -> Iterator[tuple[T, BlockingPortal]]:
    """Enter an async context manager (a connector rig) in an event loop thread, for a sync hypothesis test."""
    with start_blocking_portal("asyncio") as portal, portal.wrap_async_context_manager(manager) as value:
        yield value, portal


def check_webhook(
    portal: BlockingPortal,
    runtime: Runtime,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> httpx.Response:
    """Send one request to the runtime's app; assert it is no 5xx and, refused, stored nothing."""

    raw = [(name.encode(), value.encode("latin-1")) for name, value in (headers or {}).items()]  # any Latin-1

    async def send() -> httpx.Response:
        before = await runtime.store.counts()
        with StoreWrites(runtime.store).watching() as writes:
            response = await runtime.client.request(method, url, content=body, headers=raw, params=params)
        assert response.status_code < 500, f"{method} {url} answered {response.status_code}: {response.text[:300]}"
        if not response.is_success:
            assert not writes, f"{method} {url} refused ({response.status_code}) but stored {writes.jobs}"
            assert await runtime.store.counts() == before
        return response

    return portal.call(send)
