"""deploy/prometheus: the scrape config finds exactly the proxy pods, and every alert rule is well formed and only
uses the metrics the proxy exports, the way their types allow (promtool is not available here)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .artifacts import PROMETHEUS, configmap_config, k8s_object, k8s_objects
from .contract import check_expr, labels_kept
from .promql import references

DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")
TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
TEMPLATE_BODY = re.compile(r"\$(labels\.(?P<label>\w+)|value)(\s*\|\s*(humanize|humanizePercentage|humanizeDuration))?")


def _config() -> dict[str, Any]:
    return yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "pgcutover-alerts.yml").read_text())["groups"]
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names)), "group names must be unique"
    return [rule for group in groups for rule in group["rules"]]


def _sd_targets(template: dict[str, Any], namespace: str) -> list[dict[str, str]]:
    """What kubernetes_sd (role pod) yields for one pod: a target per container port, or per port-less container."""
    labels = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
              for k, v in template["metadata"]["labels"].items()}
    labels["__meta_kubernetes_namespace"] = namespace
    targets = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports") or [{}]:
            targets.append({**labels, "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_container_port_number": str(port.get("containerPort", ""))})
    return targets


def _relabel(target: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' keep/drop/replace on one target (the subset the config uses)."""
    target = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(target.get(label, "") for label in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            target[rule["target_label"]] = match.expand(rule.get("replacement", r"\1").replace("$1", r"\1"))
    return target


def test_scrape_config_discovers_the_proxy_pods_and_not_the_jobs() -> None:
    config = _config()
    assert (PROMETHEUS / config["rule_files"][0]).exists()
    job = next(j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j)
    sd = job["kubernetes_sd_configs"][0]
    assert sd["role"] == "pod"
    namespace = k8s_object("Deployment")["metadata"]["namespace"]
    assert namespace in sd["namespaces"]["names"]
    assert job.get("metrics_path", "/metrics") == "/metrics"

    deployment = k8s_object("Deployment")["spec"]["template"]
    kept = [t for t in map(lambda t: _relabel(t, job["relabel_configs"]), _sd_targets(deployment, namespace)) if t]
    assert [t["__meta_kubernetes_pod_container_port_name"] for t in kept] == ["metrics"], "one target per pod"
    assert kept[0]["namespace"] == namespace
    for _, doc in k8s_objects():
        if doc["kind"] == "Job":
            targets = _sd_targets(doc["spec"]["template"], namespace)
            assert not [t for t in targets if _relabel(t, job["relabel_configs"])], doc["metadata"]["name"]


def test_pod_annotations_and_static_targets_use_the_metrics_port() -> None:
    port = configmap_config().proxy.metrics.port
    annotations = k8s_object("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    static = next(j for j in _config()["scrape_configs"] if "static_configs" in j)
    for target in static["static_configs"][0]["targets"]:
        assert urlsplit(f"//{target}").port == port, target


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_alert_rule_is_well_formed(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
    assert re.fullmatch(r"Pgcutover[A-Z][A-Za-z]+", rule["alert"])
    assert DURATION.fullmatch(str(rule["for"])), rule["for"]
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert check_expr(rule["expr"]) == []
    kept = labels_kept(rule["expr"])
    for text in rule["annotations"].values():
        for body in TEMPLATE.findall(text):
            match = TEMPLATE_BODY.fullmatch(body)
            assert match, f"unexpected template {{{{ {body} }}}}"
            if match.group("label"):
                assert match.group("label") in kept, f"$labels.{match.group('label')} is aggregated away"


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names))


def _alerts_on(predicate) -> list[str]:
    return [rule["alert"] for rule in _rules() if predicate(rule["expr"], references(rule["expr"]))]


def test_the_alerts_the_issue_asks_for_exist() -> None:
    """Shadow error rate, fallback latency (p95), migration percent dropping (seed 000), plus down, breaker
    and recall."""
    assert _alerts_on(lambda _, refs: any(r.name == "pgcutover_queries_total"
                                          and ("target", "=", "shadow") in r.matchers
                                          and ("outcome", "=", "error") in r.matchers for r in refs))
    assert _alerts_on(lambda expr, refs: "histogram_quantile(0.95" in expr
                      and any(r.name == "pgcutover_fallback_search_seconds_bucket" for r in refs))
    assert _alerts_on(lambda expr, refs: re.search(r"delta\(pgcutover_migration_percent\[\w+\]\)\)?\s*<\s*0", expr))
    assert _alerts_on(lambda expr, refs: re.fullmatch(r'up\{job=~"pgcutover\.\*"\} == 0', expr))
    assert _alerts_on(lambda _, refs: any(r.name == "pgcutover_breaker_trips_total" for r in refs))
    assert _alerts_on(lambda expr, refs: any(r.name == "pgcutover_shadow_recall" for r in refs) and "<" in expr)
