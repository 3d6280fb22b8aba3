"""The manifests' probes against the real proxy: `pgcutover serve` as a child process in front of PostgreSQL.

The Deployment names ports (`metrics`, `postgres`); the ConfigMap's TOML says which numbers the proxy binds them
to. Here the same proxy runs with the test fixture's free ports, so each named port is mapped to the fixture's.
"""

from __future__ import annotations

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .artifacts import configmap_config, http_get, k8s_object, wait_for_http
from .contract import METRICS


def _container() -> dict:
    return k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]


def _named_ports() -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in _container()["ports"]}


def _probes() -> dict[str, dict]:
    container = _container()
    return {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}


def test_named_ports_are_the_ones_the_configmap_binds() -> None:
    config = configmap_config()
    assert _named_ports() == {"postgres": config.proxy.listen.port, "metrics": config.proxy.metrics.port}


@pytest.fixture(scope="module")
def fixture_ports(proxy) -> dict[str, int]:
    """Manifest port name -> the port the fixture's proxy really listens on for the same role."""
    wait_for_http(proxy.metrics_port)
    return {"postgres": proxy.port, "metrics": proxy.metrics_port}


@pytest.mark.parametrize("kind", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_probe_hits_a_live_endpoint(kind: str, fixture_ports: dict[str, int]) -> None:
    probe = _probes()[kind]
    assert probe.get("scheme", "HTTP") == "HTTP"
    port = probe["port"]
    assert isinstance(port, str) and port in _named_ports(), f"{kind} must use a named container port"
    status, _ = http_get(fixture_ports[port], probe["path"])
    assert status == 200, f"{kind} GET {probe['path']} on {port} answered {status}"


def test_probes_use_the_documented_endpoints() -> None:
    probes = _probes()
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"


def test_unknown_path_is_not_200(fixture_ports: dict[str, int]) -> None:
    """So that a 200 above means the path exists, not that the server answers anything."""
    assert http_get(fixture_ports["metrics"], "/readyz-typo")[0] == 404


def test_metrics_endpoint_parses_and_types_match_the_contract(proxy, fixture_ports: dict[str, int]) -> None:
    # One query through the proxy so that the traffic counters have something to count.
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    status, body = http_get(fixture_ports["metrics"], "/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(body.decode()))
    assert families, "no metric families"
    names = set()
    for family in families:
        exposed = family.name + "_total" if family.type == "counter" else family.name
        names.add(exposed)
        if exposed in METRICS:
            assert METRICS[exposed][0] == family.type, f"{exposed} is a {family.type}, contract says otherwise"
    # The metrics the proxy core exported from the start; the dashboard's connection panel needs them.
    assert {"pgcutover_client_connections", "pgcutover_client_connections_total", "pgcutover_bytes_total"} <= names
