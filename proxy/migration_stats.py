"""Migration figures per route for the dashboard and alerts, refreshed from `pgcutover status` at a modest pace.

The counts read every row of the route's table (and the shadow diff every row of both), so they are not for
the hot path: counts every `interval` seconds, the shadow diff every `diff_every` refreshes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("pgcutover.migration")


class MigrationStats:
    def __init__(self, runtime: Runtime, interval: float = 60.0, diff_every: int = 10) -> None:
        self.rt = runtime
        self.interval = interval
        self.diff_every = diff_every
        self.latest: dict[str, dict[str, Any]] = {}  # route table -> status dict (deploy.status)

    async def run(self) -> None:
        from pgcutover.deploy.status import StatusOptions, status

        refreshes = 0
        while True:
            diff = refreshes % self.diff_every == 0
            for route in self.rt.routing.routes:  # one at a time: a broken route does not blank the others
                try:
                    for row in await status(self.rt.config, route.table, StatusOptions(diff=diff)):
                        previous = self.latest.get(row["table"], {}).get("shadow")
                        if not diff and previous and row.get("shadow"):  # keep the last diff between diff runs
                            row["shadow"]["differing_keys"] = previous.get("differing_keys")
                        self.latest[row["table"]] = row
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # figures for a dashboard: a failed refresh waits for the next one
                    log.warning("migration status of %s failed: %s", route.table, exc)
            refreshes += 1
            await asyncio.sleep(self.interval)


def migration_families(latest: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    """MigrationStats.latest as families (proxy/metrics.py); empty families when there is none."""
    percent = GaugeMetricFamily("pgcutover_migration_percent", "Rows with a pgvector value, percent of rows "
                                "with any vector (pgcutover status)", labels=["route"])
    legacy = GaugeMetricFamily("pgcutover_legacy_only_rows", "Rows with only a legacy vector", labels=["route"])
    diff = GaugeMetricFamily("pgcutover_shadow_diff_keys", "Keys whose (key, vector) differ between table and "
                             "shadow", labels=["route"])
    for table, row in latest.items():
        percent.add_metric([table], row["percent_migrated"])
        legacy.add_metric([table], row["legacy_only"])
        shadow = row.get("shadow") or {}
        if shadow.get("differing_keys") is not None:
            diff.add_metric([table], shadow["differing_keys"])
    yield percent
    yield legacy
    yield diff
