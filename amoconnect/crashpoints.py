"""Crash points: a testing aid that kills this process with SIGKILL at named places.

Crash tests set ``AMOCONNECT_CRASH_AT=point[:n][,point[:n]...]`` on an ``amoconnect run``
process; it then kills itself (``SIGKILL``: no cleanup, no flush, as a power cut or the OOM
killer would) the ``n``-th time (default: the first) it reaches ``point``. A point reached
with a detail (the job kind) also answers to ``point.detail``, e.g. ``relay.done.amocrm``.

Without the variable :func:`crash_point` is a function that does nothing: one call per point
is all production pays. The points:

- ``store.enqueue``: an ingest is decoded and written, its transaction not yet committed;
- ``amojo.answer``: amojo answered a request, the connector has not read the answer yet;
- ``relay.running``: a job is claimed and running (its conversation's lease is held);
- ``relay.done``: a job's work is done (amojo or the messenger answered), ``finish`` not yet committed;
- ``relay.ahead``: likewise, for a job of a repeatable kind (:attr:`~amoconnect.relay.Handler.repeatable`)
  started while the finishes of the jobs before it in its conversation may not be committed or on
  disk yet (:meth:`~amoconnect.store.base.Store.finish_soon`);
- ``oauth.answer``: amoCRM answered a token refresh with a new pair, the pair is not stored yet.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["ENV", "POINTS", "crash_point", "parse"]

ENV = "AMOCONNECT_CRASH_AT"
POINTS = frozenset({"store.enqueue", "amojo.answer", "relay.running", "relay.done", "relay.ahead", "oauth.answer"})


def parse(spec: str) -> dict[str, int]:
    """``point[:n],...`` as {point: n}; raises ValueError for an unknown point or a bad count."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in POINTS and name.rpartition(".")[0] not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; known: {', '.join(sorted(POINTS))}")
        if count and not (count.isdigit() and int(count) > 0):
            raise ValueError(f"{ENV}: {item!r}: the count must be a positive integer")
        armed[name] = int(count or 1)
    return armed


_armed = parse(os.environ.get(ENV, ""))
_lock = threading.Lock()  # the SQLite store's writer thread reaches points too


def _reach(point: str, detail: str = "") -> None:
    for name in (point, f"{point}.{detail}") if detail else (point,):
        with _lock:
            left = _armed.get(name)
            if left is None:
                continue
            _armed[name] = left - 1
        if left == 1:
            os.write(2, f"amoconnect: crash point {name} reached ({ENV}); killing the process\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)


def _off(point: str, detail: str = "") -> None:
    return None


crash_point = _reach if _armed else _off
"""``crash_point(point, detail="")``: die here when ``AMOCONNECT_CRASH_AT`` says so; else nothing."""
