from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from amoconnect.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, read back by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_the_exposition_reads_back_as_the_counts_gauges_and_buckets_that_were_recorded() -> None:
    metrics = Metrics()
    metrics.webhooks_received.labels("telegram").inc()
    metrics.webhooks_received.labels("telegram").inc(2)
    metrics.webhooks_refused.labels("amocrm", "bad_signature").inc()
    metrics.connections_open.set(3)
    metrics.body_memory.inc(100)
    metrics.body_memory.dec(40)
    for seconds in (0.0004, 0.003, 0.005, 100.0):  # a bound counts in its own bucket (le: less or equal)
        metrics.ack_latency.labels("telegram").observe(seconds)
    samples = _samples(metrics)
    assert samples[("amoconnect_webhooks_received_total", (("source", "telegram"),))] == 3
    assert samples[("amoconnect_webhooks_refused_total", (("reason", "bad_signature"), ("source", "amocrm")))] == 1
    assert samples[("amoconnect_connections_open", ())] == 3
    assert samples[("amoconnect_body_memory_bytes", ())] == 60
    buckets = {
        labels[0][1]: value for (name, labels), value in samples.items() if name == "amoconnect_ack_seconds_bucket"
    }
    assert (buckets["0.0005"], buckets["0.0025"], buckets["0.005"], buckets["30.0"], buckets["+Inf"]) == (1, 1, 3, 3, 4)
    assert samples[("amoconnect_ack_seconds_count", (("source", "telegram"),))] == 4
    assert samples[("amoconnect_ack_seconds_sum", (("source", "telegram"),))] == pytest.approx(100.0084)
    # Each series says when it began, as prometheus_client's own metrics do.
    for name in ("amoconnect_webhooks_received_created", "amoconnect_ack_seconds_created"):
        assert samples[(name, (("source", "telegram"),))] > 1.7e9
    # A metric nothing was recorded in is described, with no series.
    assert not [key for key in samples if key[0].startswith("amoconnect_jobs_dead")]
    assert "# TYPE amoconnect_jobs_dead_total counter" in metrics.render().decode()


def test_a_series_takes_exactly_its_metric_s_labels_and_totals_add_up_across_them() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="takes the labels"):
        metrics.jobs_succeeded.labels("inbound", "extra")
    metrics.jobs_succeeded.labels("inbound").inc(2)
    metrics.jobs_succeeded.labels("outbound").inc()
    assert metrics.jobs_succeeded.labels("inbound") is metrics.jobs_succeeded.labels("inbound")
    assert metrics.jobs_succeeded.total() == 3
