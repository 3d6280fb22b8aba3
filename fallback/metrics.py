"""Prometheus metrics of the legacy-vector fallback (default registry, `pgcutover_fallback_` prefix).

Every metric carries the route's table as the `table` label, so one proxy with several routes reports each.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEGACY_ROWS = Gauge(
    "pgcutover_fallback_legacy_rows", "Legacy-only rows held in memory by the fallback store", ["table"])
BYTES = Gauge(
    "pgcutover_fallback_bytes", "Bytes of vector storage held by the fallback store (matrix and norms)", ["table"])
SKIPPED_ROWS = Gauge(
    "pgcutover_fallback_skipped_rows",
    "Legacy-only rows currently skipped because their value cannot be read as a vector", ["table"])
SKIPPED_TOTAL = Counter(
    "pgcutover_fallback_skipped_reads_total",
    "Reads of a legacy row (load, refresh) that skipped it, by reason", ["table", "reason"])
REFRESH_LAG = Gauge(
    "pgcutover_fallback_refresh_lag_seconds",
    "Age of the oldest change notice not yet applied to the store (0 when caught up)", ["table"])
LAST_RECONCILE = Gauge(
    "pgcutover_fallback_last_reconcile_timestamp_seconds",
    "Unix time at which the last completed full reconcile started", ["table"])
RECONCILE_CHANGES = Counter(
    "pgcutover_fallback_reconcile_changed_keys_total",
    "Keys a reconcile found different from the store (changes that no notice delivered)", ["table"])
NOTICES = Counter(
    "pgcutover_fallback_notices_total", "Change notices applied, by kind", ["table", "kind"])
NOTICES_DROPPED = Counter(
    "pgcutover_fallback_notices_dropped_total",
    "Change notices dropped because too many were pending (one resync covered them)", ["table"])
LOAD_SECONDS = Gauge(
    "pgcutover_fallback_load_seconds", "Duration of the last full load of the store", ["table"])
SEARCH_SECONDS = Histogram(
    "pgcutover_fallback_search_seconds",
    "Latency of one fallback search, from submission to result (queueing included)", ["table"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5))
BATCH_SIZE = Histogram(
    "pgcutover_fallback_batch_size", "Queries answered by one matrix product", ["table"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
