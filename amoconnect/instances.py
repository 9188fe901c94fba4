"""The running adapter instances, kept in step with the registry's sources.

At start every active source of an active account gets its adapter (a fixed source that cannot be
built stops the start, as a wrong configuration file does). While the connector runs, each
change the registry reports is applied here: a new source is built, started and routed to; a
changed one is stopped and started again with its new settings; a removed one, or one whose
account was disconnected, is stopped and no longer routed to; so is a source marked ``failing``
(its messenger refused it) until it is tested again. A stored source that cannot be built or
started is logged and left out, and why is kept for :meth:`Instances.start_failure`; the others
are not affected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import structlog
from anyio.abc import TaskGroup

from .adapter import Intake
from .errors import AmoconnectError
from .registry import Changes, Registry
from .routing import Instance, Routing
from .store.registry import AccountRecord, SourceRecord
from .tenants import Step

__all__ = ["Instances", "Intakes"]

log = structlog.get_logger("amoconnect.instances")

Build = Callable[[SourceRecord, AccountRecord], Instance]
Run = Callable[[Instance], Awaitable[None]]


class Intakes:
    """How each source's updates reach this process, as its adapter last reported it, and when."""

    def __init__(self) -> None:
        self._reported: dict[str, tuple[Intake, float]] = {}

    def reporter(self, name: str) -> Callable[[Intake], None]:
        """The ``intake`` of a new adapter instance of source ``name`` (what an earlier one reported is forgotten)."""
        self._reported.pop(name, None)

        def report(intake: Intake) -> None:
            self._reported[name] = (intake, time.time())

        return report

    def of(self, name: str) -> tuple[Intake, float] | None:
        """What source ``name``'s adapter reported last, and when; None: nothing yet."""
        return self._reported.get(name)


class Instances:
    """Starts, replaces and stops adapter instances as ``registry``'s sources change.

    ``build`` makes an instance of a source (raising :class:`~amoconnect.errors.AmoconnectError`
    when its plugin is missing or its settings are wrong), ``run`` runs an adapter's
    long-running work; ``plugin`` limits the instances to one plugin.
    """

    def __init__(
        self, registry: Registry, routing: Routing, build: Build, run: Run, *, plugin: str | None = None
    ) -> None:
        self.registry = registry
        self.routing = routing
        self._build = build
        self._run = run
        self._plugin = plugin
        self._started: dict[str, Instance] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._tasks: TaskGroup | None = None
        self._failures: dict[str, str] = {}

    def _wanted(self, source: SourceRecord) -> AccountRecord | None:
        """The source's account when the source should run here, else None."""
        if source.state != "active" or (self._plugin is not None and source.plugin != self._plugin):
            return None
        account = self.registry.account(source.account)
        return account if account is not None and account.active else None

    async def start(self) -> None:
        """Build and start the adapter of every source that should run (before the relay starts)."""
        for source in self.registry.sources():
            account = self._wanted(source)
            if account is None:
                continue
            if source.fixed:
                instance = self._build(source, account)  # a wrong file stops the start
                await self._startup(instance)
            else:
                await self._try_start(source, account)

    def run(self, tasks: TaskGroup) -> None:
        """Run the started adapters' long-running work in ``tasks``, and later ones' too."""
        self._tasks = tasks
        for instance in list(self._started.values()):
            self._launch(instance)

    async def apply(self, changes: Changes) -> None:
        """Bring the running instances in line with what the registry reports changed."""
        for account in changes.accounts:
            self.routing.set_account(account)
            for source in self.registry.sources(account.name):
                running = source.name in self._started
                if not account.active and running:
                    await self._stop(source.name, f"account {account.name!r} is {account.state}")
                elif account.active and not running and self._wanted(source) is not None:
                    await self._try_start(source, account)
        for source in changes.sources:
            if source.name in self._started:
                await self._stop(source.name, "source removed" if source.state == "removed" else "source changed")
            owner = self._wanted(source)
            if owner is not None:
                await self._try_start(source, owner)

    def start_outcome(self, name: str) -> Step:
        """Whether the source called ``name`` runs here (step ``messenger`` of :mod:`amoconnect.tenants`)."""
        if name in self._started:
            return Step("messenger", "done", "started")
        source = self.registry.source(name)
        if source is not None and self._plugin is not None and source.plugin != self._plugin:
            return Step("messenger", "skipped", f"this process runs plugin {self._plugin!r} only")
        return Step("messenger", "failed", self._failures.get(name, "not started"))

    async def unregister(self, name: str) -> Step:
        """The running adapter of ``name`` undoes what it registered with the messenger (its webhook)."""
        instance = self._started.get(name)
        if instance is None:
            return Step("messenger", "skipped", "not running in this process: nothing to unregister")
        try:
            await instance.adapter.unregister()
        except Exception as exc:
            log.warning("adapter unregister failed", source=name, error=str(exc))
            return Step("messenger", "failed", f"{type(exc).__name__}: {exc}")
        return Step("messenger", "done", "unregistered")

    async def shutdown(self) -> None:
        """Stop every instance (the runtime's stop), the last started first."""
        for name in reversed(list(self._started)):
            await self._stop(name, None)

    # -- one instance ----------------------------------------------------------------------
    async def _try_start(self, source: SourceRecord, account: AccountRecord) -> None:
        try:
            instance = self._build(source, account)
            await self._startup(instance)
        except AmoconnectError as exc:
            log.error("source not started", source=source.name, plugin=source.plugin, error=str(exc))
            self._failures[source.name] = str(exc)
            return
        except Exception as exc:
            log.exception("source not started: its adapter failed to start", source=source.name)
            self._failures[source.name] = f"{type(exc).__name__}: {exc}"
            return
        self._failures.pop(source.name, None)
        if self._tasks is not None:
            self._launch(instance)
        log.info("source started", source=source.name, plugin=source.plugin, account=account.name)

    async def _startup(self, instance: Instance) -> None:
        await instance.adapter.startup()
        self._started[instance.name] = instance
        self.routing.add(instance)

    def _launch(self, instance: Instance) -> None:
        assert self._tasks is not None
        scope = self._scopes[instance.name] = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await self._run(instance)

        self._tasks.start_soon(run)

    async def _stop(self, name: str, reason: str | None) -> None:
        instance = self._started.pop(name)
        if self.routing.get(name) is instance:
            self.routing.remove(name)
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        try:
            await instance.adapter.shutdown()
        except Exception:
            log.exception("adapter shutdown failed", source=name)
        if reason is not None:
            log.info("source stopped", source=name, reason=reason)
