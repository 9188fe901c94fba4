"""The head records of the queue (``heads``, kept by triggers) checked against the queue's own rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Sql = Callable[[str], list[tuple[Any, ...]]]


def heads_from_queue(sql: Sql) -> dict[str, tuple[int, float, bool]]:
    """What each key's head record must say, worked out from the queue: its earliest job, that job's
    due time, whether a job of the key runs."""
    expected: dict[str, tuple[int, float, bool]] = {}
    for job_id, key, next_run, state in sorted(sql("SELECT id, key, next_run, state FROM queue")):
        head_id, head_run, busy = expected.get(key, (job_id, next_run, False))
        expected[key] = (head_id, head_run, busy or state == "running")
    return expected


def head_records(sql: Sql) -> dict[str, tuple[int, float, bool]]:
    """The head records as stored."""
    return {key: (job_id, next_run, bool(busy)) for key, job_id, next_run, busy in sql("SELECT * FROM heads")}


def assert_heads_match_queue(sql: Sql) -> None:
    """Each key with jobs has exactly one head record, and it says what the queue's rows say."""
    assert head_records(sql) == heads_from_queue(sql)
