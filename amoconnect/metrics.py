"""Prometheus metrics of one runtime, on its own registry (no global state), served at ``/metrics``.

The values are plain numbers the event loop's code changes in place (``inc``, ``set``, ``observe``:
one attribute update each, where ``prometheus_client``'s own metrics take a lock and check their
state at every call, a few dozen Python calls a relayed message). ``prometheus_client`` renders
them: a collector turns them into its metric families when ``/metrics`` is scraped, so the
exposition (names, ``_total`` and ``_created`` series, buckets) is the library's own.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["Family", "Metrics", "Observed", "Value"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Value:
    """A counter's or a gauge's value for one set of label values."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Observed:
    """A histogram's observations for one set of label values: a count per bucket and their sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose upper bound it does not exceed."""
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


S = TypeVar("S", Value, Observed)


class Family(Generic[S]):
    """A metric with labels: one series per set of label values, made at its first use."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], make: Callable[[], S]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._make: Callable[[], S] = make
        self.series: dict[tuple[str, ...], S] = {}

    def labels(self, *values: str) -> S:
        """The series of these label values (in the order of the metric's label names)."""
        series = self.series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {values!r}")
            series = self.series[values] = self._make()
        return series


class _Values(Family[Value]):
    """A counter's or a gauge's series."""

    def __init__(self, name: str, documentation: str, *labelnames: str) -> None:
        super().__init__(name, documentation, labelnames, Value)


class _Counter(_Values):
    def total(self) -> float:
        """The sum over every set of label values."""
        return sum(series.value for series in self.series.values())

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self.series.items():
            family.add_metric(values, series.value, created=series.created)
        return family


class _Gauge(_Values):
    def family(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self.series.items():
            family.add_metric(values, series.value)
        return family


class _Histogram(Family[Observed]):
    def __init__(
        self, name: str, documentation: str, *labelnames: str, buckets: tuple[float, ...] = _LATENCY_BUCKETS
    ) -> None:
        bounds = (*buckets, float("inf"))
        super().__init__(name, documentation, labelnames, lambda: Observed(bounds))
        self._les = [floatToGoString(bound) for bound in bounds]  # type: ignore[no-untyped-call]  # untyped upstream

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self.series.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, series.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, series.sum)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, values, strict=True)), series.created)
        return family


M = TypeVar("M", "_Counter", "_Gauge", "_Histogram")


class _Collector:
    """Hands the metrics' families to ``prometheus_client`` at each scrape, in the order they were made."""

    def __init__(self) -> None:
        self.metrics: list[_Counter | _Gauge | _Histogram] = []

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()


class Metrics:
    """Counters, gauges and histograms of the relay."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collector = _Collector()
        self.registry.register(self._collector)
        add = self._add
        self.webhooks_received = add(_Counter("amoconnect_webhooks_received", "Webhooks accepted and stored", "source"))
        self.webhooks_refused = add(
            _Counter("amoconnect_webhooks_refused", "Webhooks refused, by reason", "source", "reason")
        )
        self.webhooks_duplicate = add(
            _Counter(
                "amoconnect_webhooks_duplicate", "Webhooks already seen (acknowledged, not stored again)", "source"
            )
        )
        self.connections_refused = add(
            _Counter(
                "amoconnect_connections_refused",
                "HTTP connections refused or closed by a guard (max_connections, evicted, header_timeout, ...)",
                "reason",
            )
        )
        self.connections_open = add(_Gauge("amoconnect_connections_open", "HTTP connections open")).labels()
        self.body_memory = add(
            _Gauge("amoconnect_body_memory_bytes", "Bytes of webhook bodies being read or handled")
        ).labels()
        self.jobs_queued = add(_Counter("amoconnect_jobs_queued", "Jobs enqueued", "kind"))
        self.jobs_succeeded = add(_Counter("amoconnect_jobs_succeeded", "Jobs finished", "kind"))
        self.jobs_retried = add(_Counter("amoconnect_jobs_retried", "Job attempts that will be retried", "kind"))
        self.http_retries = add(
            _Counter(
                "amoconnect_http_retries",
                "HTTP calls repeated within one job attempt (no answer, 429 or 5xx), by service",
                "service",
            )
        )
        self.jobs_dead = add(_Counter("amoconnect_jobs_dead", "Jobs moved to the dead letters", "kind"))
        self.queue_depth = add(_Gauge("amoconnect_queue_depth", "Jobs in the store, by state", "state"))
        self.accounts = add(
            _Gauge("amoconnect_accounts", "Accounts by state (active, needs_reauth, disconnected)", "state")
        )
        self.ack_latency = add(
            _Histogram("amoconnect_ack_seconds", "Webhook receipt to durable acknowledgement", "source")
        )
        self.relay_latency = add(
            _Histogram("amoconnect_relay_seconds", "Webhook receipt to delivery on the other side", "kind")
        )

    def _add(self, metric: M) -> M:
        """``metric``, rendered at each scrape from now on."""
        self._collector.metrics.append(metric)
        return metric

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
