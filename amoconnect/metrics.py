"""Prometheus metrics of one runtime, on its own registry (no global state), served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters, gauges and histograms of the relay."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks_received = Counter(
            "amoconnect_webhooks_received", "Webhooks accepted and stored", ["source"], registry=r
        )
        self.webhooks_refused = Counter(
            "amoconnect_webhooks_refused", "Webhooks refused, by reason", ["source", "reason"], registry=r
        )
        self.webhooks_duplicate = Counter(
            "amoconnect_webhooks_duplicate",
            "Webhooks already seen (acknowledged, not stored again)",
            ["source"],
            registry=r,
        )
        self.connections_refused = Counter(
            "amoconnect_connections_refused",
            "HTTP connections refused or closed by a guard (max_connections, evicted, header_timeout, ...)",
            ["reason"],
            registry=r,
        )
        self.connections_open = Gauge("amoconnect_connections_open", "HTTP connections open", registry=r)
        self.body_memory = Gauge(
            "amoconnect_body_memory_bytes", "Bytes of webhook bodies being read or handled", registry=r
        )
        self.jobs_queued = Counter("amoconnect_jobs_queued", "Jobs enqueued", ["kind"], registry=r)
        self.jobs_succeeded = Counter("amoconnect_jobs_succeeded", "Jobs finished", ["kind"], registry=r)
        self.jobs_retried = Counter(
            "amoconnect_jobs_retried", "Job attempts that will be retried", ["kind"], registry=r
        )
        self.http_retries = Counter(
            "amoconnect_http_retries",
            "HTTP calls repeated within one job attempt (no answer, 429 or 5xx), by service",
            ["service"],
            registry=r,
        )
        self.jobs_dead = Counter("amoconnect_jobs_dead", "Jobs moved to the dead letters", ["kind"], registry=r)
        self.queue_depth = Gauge("amoconnect_queue_depth", "Jobs in the store, by state", ["state"], registry=r)
        self.accounts = Gauge(
            "amoconnect_accounts", "Accounts by state (active, needs_reauth, disconnected)", ["state"], registry=r
        )
        self.ack_latency = Histogram(
            "amoconnect_ack_seconds",
            "Webhook receipt to durable acknowledgement",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_latency = Histogram(
            "amoconnect_relay_seconds",
            "Webhook receipt to delivery on the other side",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
