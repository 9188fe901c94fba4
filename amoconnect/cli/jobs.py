"""``amoconnect jobs``: the dead letters, jobs that ran out of attempts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from ..store.base import Store
from .common import config_option, echo_json, json_option, load, run_async

__all__ = ["jobs"]

T = TypeVar("T")


@click.group()
def jobs() -> None:
    """The dead letters: jobs that ran out of attempts or failed for good.

    \b
    Example:
      amoconnect jobs list
      amoconnect jobs retry 12 15
      amoconnect jobs purge --all --yes
    """


def _with_store(config_path: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    config = load(config_path)

    async def go() -> T:
        from ..store import opened_store

        async with opened_store(config.store) as store:
            return await fn(store)

    return run_async(go)


@jobs.command("list")
@config_option
@json_option("{counts, dead: [{id, kind, key, scope_id, attempts, failed_at, error}]}")
@click.option("--limit", default=100, show_default=True, help="Show at most this many dead letters.")
def jobs_list(config_path: str, as_json: bool, limit: int) -> None:
    """Show dead letters, oldest first, and the queue's counts.

    \b
    Example:
      amoconnect jobs list --limit 20
      amoconnect jobs list --json
    """

    async def go(store: Store) -> None:
        dead = await store.dead_letters(limit)
        counts = await store.counts()
        if as_json:
            rows = [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "key": d.key,
                    "scope_id": d.scope_id,
                    "attempts": d.attempts,
                    "failed_at": d.failed_at,
                    "error": d.error,
                }
                for d in dead
            ]
            echo_json({"counts": counts, "dead": rows})
            return
        click.echo(f"queued {counts['queued']}, running {counts['running']}, dead {counts['dead']}")
        for d in dead:
            click.echo(f"#{d.id} {d.kind} {d.key} attempts={d.attempts}: {d.error}")

    _with_store(config_path, go)


async def _unknown(store: Store, ids: tuple[int, ...]) -> list[int]:
    """The ``ids`` that are not dead letters."""
    dead = (await store.counts())["dead"]
    known = {d.id for d in await store.dead_letters(dead)} if dead else set()
    return sorted(set(ids) - known)


def _chosen(ids: tuple[int, ...], everything: bool) -> None:
    if not ids and not everything:
        raise click.UsageError("name job ids, or pass --all")
    if ids and everything:
        raise click.UsageError("name job ids or pass --all, not both")


def _refuse_unknown(unknown: list[int], verb: str) -> None:
    listed = ", ".join(f"#{i}" for i in unknown)
    raise click.ClickException(
        f"no dead letter {listed}; nothing was {verb} (amoconnect jobs list shows the dead letters)"
    )


@jobs.command("retry")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Re-queue every dead letter.")
def jobs_retry(config_path: str, ids: tuple[int, ...], everything: bool) -> None:
    """Put dead letters back in the queue (a running connector picks them up).

    Exits 1, changing nothing, when an id is not a dead letter.

    \b
    Example:
      amoconnect jobs retry 12 15
      amoconnect jobs retry --all
    """
    _chosen(ids, everything)

    async def go(store: Store) -> int | list[int]:
        if not everything and (unknown := await _unknown(store, ids)):
            return unknown
        return await store.requeue(None if everything else list(ids))

    done = _with_store(config_path, go)
    if isinstance(done, list):
        _refuse_unknown(done, "re-queued")
    click.echo(f"re-queued {done} job(s)")


@jobs.command("purge")
@config_option
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter (asks first, unless --yes).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting every dead letter.")
def jobs_purge(config_path: str, ids: tuple[int, ...], everything: bool, yes: bool) -> None:
    """Delete dead letters for good.

    Exits 1, deleting nothing, when an id is not a dead letter.

    \b
    Example:
      amoconnect jobs purge 12
      amoconnect jobs purge --all --yes
    """
    _chosen(ids, everything)

    async def go(store: Store) -> int | list[int]:
        if everything:
            dead = (await store.counts())["dead"]
            if dead and not yes and not click.confirm(f"Delete all {dead} dead letter(s) for good?"):
                raise click.Abort
            return await store.purge(None)
        if unknown := await _unknown(store, ids):
            return unknown
        return await store.purge(list(ids))

    done = _with_store(config_path, go)
    if isinstance(done, list):
        _refuse_unknown(done, "deleted")
    click.echo(f"purged {done} job(s)")
