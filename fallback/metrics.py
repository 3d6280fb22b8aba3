"""Metrics of the legacy-vector fallback (`pgcutover_fallback_` prefix), per route table.

Plain numbers, as every metric of the proxy: no lock, no registry. `families()` turns them into Prometheus
families when /metrics is scraped (proxy/metrics.py), with the route's table as the `route` label, so one proxy
with several routes reports each. The store and the searcher call the part of prometheus-client's API they
always used: `SERIES.labels(table=..., ...).inc() / .set() / .set_function() / .observe()`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

LABEL_NAMES = {"table": "route"}  # exported label name for each one the callers pass
go_float: Callable[[float], str] = floatToGoString  # a bucket bound as the exposition writes it ("+Inf", "1.0")


class Value:
    """One labelled series: a counter or gauge value (or a function read at scrape time), or histogram counts."""

    __slots__ = ("bounds", "counts", "function", "sum", "value")

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.value = 0.0
        self.function: Callable[[], float] | None = None
        self.bounds = bounds  # a histogram's bucket upper bounds
        self.counts = [0] * (len(bounds) + 1) if bounds else []  # one per bucket, +Inf last
        self.sum = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def get(self) -> float:
        return self.function() if self.function is not None else self.value


class Series:
    """A metric family by name: its help, its kind, its label names and its series by label values."""

    def __init__(self, name: str, help_text: str, kind: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...] = ()) -> None:
        self.name, self.help, self.kind, self.label_names, self.buckets = name, help_text, kind, labels, buckets
        self.values: dict[tuple[str, ...], Value] = {}  # bounded: label values are route tables and codes
        ALL.append(self)

    def labels(self, **labels: str) -> Value:
        key = tuple(labels[name] for name in self.label_names)
        value = self.values.get(key)
        if value is None:
            value = self.values[key] = Value(self.buckets)
        return value

    def family(self) -> Metric:
        labels = [LABEL_NAMES.get(name, name) for name in self.label_names]
        if self.kind == "histogram":
            histogram = HistogramMetricFamily(self.name, self.help, labels=labels)
            for key, value in self.values.items():
                histogram.add_metric(list(key), cumulative(self.buckets, value.counts), value.sum)
            return histogram
        family = (CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily)(
            self.name, self.help, labels=labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value.get())
        return family


def cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (+Inf last) as the cumulative `le` buckets of the exposition format."""
    out, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append((go_float(bound), float(running)))
    return out


def families() -> Iterator[Metric]:
    for series in ALL:
        yield series.family()


ALL: list[Series] = []
LEGACY_ROWS = Series(
    "pgcutover_fallback_legacy_rows", "Legacy-only rows held in memory by the fallback store", "gauge", ("table",))
BYTES = Series(
    "pgcutover_fallback_bytes", "Bytes of vector storage held by the fallback store (matrix and norms)", "gauge",
    ("table",))
SKIPPED_ROWS = Series(
    "pgcutover_fallback_skipped_rows",
    "Legacy-only rows currently skipped because their value cannot be read as a vector", "gauge", ("table",))
SKIPPED_TOTAL = Series(
    "pgcutover_fallback_skipped_reads",
    "Reads of a legacy row (load, refresh) that skipped it, by reason", "counter", ("table", "reason"))
REFRESH_LAG = Series(
    "pgcutover_fallback_refresh_lag_seconds",
    "Age of the oldest change notice not yet applied to the store (0 when caught up)", "gauge", ("table",))
LAST_RECONCILE = Series(
    "pgcutover_fallback_last_reconcile_timestamp_seconds",
    "Unix time at which the last completed full reconcile started", "gauge", ("table",))
RECONCILE_CHANGES = Series(
    "pgcutover_fallback_reconcile_changed_keys",
    "Keys a reconcile found different from the store (changes that no notice delivered)", "counter", ("table",))
NOTICES = Series(
    "pgcutover_fallback_notices", "Change notices applied, by kind", "counter", ("table", "kind"))
NOTICES_DROPPED = Series(
    "pgcutover_fallback_notices_dropped",
    "Change notices dropped because too many were pending (one resync covered them)", "counter", ("table",))
LOAD_SECONDS = Series(
    "pgcutover_fallback_load_seconds", "Duration of the last full load of the store", "gauge", ("table",))
SEARCH_SECONDS = Series(
    "pgcutover_fallback_search_seconds",
    "Latency of one fallback search, from submission to result (queueing included)", "histogram", ("table",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5))
BATCH_SIZE = Series(
    "pgcutover_fallback_batch_size", "Queries answered by one matrix product", "histogram", ("table",),
    buckets=(1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0))
