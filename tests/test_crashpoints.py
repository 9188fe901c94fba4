"""Crash points: off unless AMOCONNECT_CRASH_AT names them; then SIGKILL on the n-th time a point is reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from amoconnect import crashpoints

_SCRIPT = """
from amoconnect.crashpoints import crash_point
for i in range(1, 4):
    crash_point("store.enqueue")
    crash_point("relay.done", "inbound")
    crash_point("relay.done", "amocrm")
    print("survived", i, flush=True)
"""


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != crashpoints.ENV}
    if spec is not None:
        env[crashpoints.ENV] = spec
    return subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=30)


def test_without_the_variable_points_do_nothing() -> None:
    done = _run(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["survived 1", "survived 2", "survived 3"]


def test_the_process_is_killed_the_nth_time_a_point_is_reached() -> None:
    done = _run("relay.done.amocrm:2")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "survived 1\n"
    assert "crash point relay.done.amocrm reached" in done.stderr


def test_a_point_without_detail_answers_for_every_detail() -> None:
    done = _run("store.enqueue:3, relay.done:9")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "survived 1\nsurvived 2\n"


@pytest.mark.parametrize("spec", ["store.nowhere", "relay.done:0", "amojo.answer:x"])
def test_a_bad_specification_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=crashpoints.ENV):
        crashpoints.parse(spec)
