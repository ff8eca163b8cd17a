"""Metric families built from rows of (label values, value): what every collector yields."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from worker.stats import LatencyHistogram

PREFIX = "fanout_"

Rows = Sequence[tuple[Sequence[str], float]]


def counter(name: str, doc: str, labels: Sequence[str], rows: Rows) -> CounterMetricFamily:
    """A counter: the exposition adds ``_total`` to ``name``."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def gauge(name: str, doc: str, labels: Sequence[str], rows: Rows) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def histogram(
    name: str, doc: str, labels: Sequence[str], rows: Sequence[tuple[Sequence[str], LatencyHistogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, doc, labels=labels)
    for values, h in rows:
        buckets = [("+Inf" if bound == float("inf") else repr(bound), n) for bound, n in h.cumulative()]
        family.add_metric(values, buckets, h.total)
    return family
