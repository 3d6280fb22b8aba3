"""deploy/k8s: every manifest parses, and the pieces fit each other and the proxy's real configuration model.

kubectl/kubeconform are not part of the project's tooling (no cluster here), so the cross-references a cluster
would only reveal at rollout time are checked directly: selectors against pod labels, probe and Service ports
against named container ports, the mounted TOML against `pgcutover.core.config.parse_config`, the grace period against
`shutdown_timeout`, container arguments against the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgcutover.proxy.cli import build_parser

from .artifacts import (
    DOCKERFILE,
    K8S,
    configmap_config,
    configmap_toml,
    k8s_object,
    k8s_objects,
    pod_specs,
    yaml_documents,
)
from .dockerfile import parse

API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "Job": "batch/v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
CLUSTER_SCOPED = {"Namespace", "Kustomization"}
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# The subcommands and options of `pgcutover` that the manifests may use (issue 6 contract).
CLI_CONTRACT: dict[str, dict[str, bool]] = {  # subcommand -> {option: takes a value}
    "serve": {"--config": True},
    "backfill": {"--config": True, "--route": True, "--batch": True, "--max-rate": True, "--shadow": False},
    "install-triggers": {"--config": True},
    "status": {"--config": True, "--json": False},
}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "keep selectors to matchLabels"
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def _proxy_pod_labels() -> dict[str, str]:
    return k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]


def _job_pod_labels() -> list[dict[str, str]]:
    return [doc["spec"]["template"]["metadata"]["labels"] for _, doc in k8s_objects() if doc["kind"] == "Job"]


def _containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(owner, pod spec, container) for every container of every workload."""
    return [(owner, template["spec"], container)
            for owner, template in pod_specs() for container in template["spec"]["containers"]]


def test_every_manifest_parses_with_a_known_kind() -> None:
    objects = k8s_objects()
    assert {doc["kind"] for _, doc in objects} == set(API_VERSIONS)
    for path, doc in objects:
        kind = doc["kind"]
        assert doc["apiVersion"] == API_VERSIONS[kind], f"{path}: {kind} is {API_VERSIONS[kind]}"
        if kind == "Kustomization":
            continue
        name = doc["metadata"]["name"]
        assert DNS_1123.fullmatch(name) and len(name) <= 63, f"{path}: bad name {name!r}"
        if kind not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == "pgcutover", f"{path}: set the namespace explicitly"


def test_no_yaml_quirks() -> None:
    """Values a human meant as strings stay strings (YAML 1.1 turns `yes`/`on`/`0.10` into other types)."""
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml_documents(path):
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                assert all(isinstance(arg, str) for arg in container.get("args", [])), f"{path}: quote args"
            for key, value in doc.get("data", {}).items():
                assert isinstance(value, str), f"{path}: data.{key} must be a string"


def test_kustomization_lists_the_long_running_objects_and_not_the_jobs() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {(K8S / resource).resolve() for resource in kustomization["resources"]}
    assert all(path.exists() for path in listed), "every kustomization resource exists"
    top_level = {path.resolve() for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml"}
    assert listed == top_level
    jobs = {path.resolve() for path, doc in k8s_objects() if doc["kind"] == "Job"}
    assert jobs and not jobs & listed, "Jobs run when the operator decides, not on every `apply -k`"
    images = {image["name"] for image in kustomization.get("images", [])}
    assert images == {container["image"].partition(":")[0] for _, _, container in _containers()}


def test_deployment_runs_several_replicas_and_rolls_without_losing_capacity() -> None:
    deployment = k8s_object("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert _matches(spec["selector"], spec["template"]["metadata"]["labels"])
    rolling = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate" and rolling["maxUnavailable"] == 0 and rolling["maxSurge"]


def test_service_selects_the_proxy_pods_only_and_targets_named_ports() -> None:
    service = k8s_object("Service")
    assert _matches(service["spec"]["selector"], _proxy_pod_labels())
    for labels in _job_pod_labels():
        assert not _matches(service["spec"]["selector"], labels), "a Job pod must never receive client traffic"
    container_ports = {p["name"] for p in k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]
                       ["ports"]}
    targets = {port["targetPort"] for port in service["spec"]["ports"]}
    assert targets == container_ports == {"postgres", "metrics"}


def test_pdb_keeps_most_replicas_of_the_proxy_only() -> None:
    pdb = k8s_object("PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"], _proxy_pod_labels())
    for labels in _job_pod_labels():
        assert not _matches(pdb["spec"]["selector"], labels)
    replicas = k8s_object("Deployment")["spec"]["replicas"]
    assert 1 <= pdb["spec"]["minAvailable"] < replicas, "one pod may be drained at a time, never all"


def test_configmap_toml_is_a_valid_proxy_config() -> None:
    name, raw = configmap_toml()
    assert name == "pgcutover.toml"
    config = configmap_config()
    assert config.proxy.listen.host == config.proxy.metrics.host == "0.0.0.0", "pods are reached from outside"
    assert config.proxy.upstream.password is None, "no password in a ConfigMap: PGPASSWORD comes from a Secret"
    assert "token" not in raw.get("admin", {}), "no admin token in a ConfigMap"
    assert config.routes and all(route.split == 0 for route in config.routes), "the split is raised live"


def test_grace_period_covers_prestop_and_the_drain() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and command[1].isdigit()
    pre_stop = int(command[1])
    assert pre_stop >= 5, "endpoint removal needs a few seconds to reach kube-proxy and load balancers"
    timeout = configmap_config().proxy.shutdown_timeout
    # The kubelet counts the preStop hook inside the grace period, then SIGTERM starts the drain.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + timeout


def test_pods_are_locked_down() -> None:
    for owner, pod, container in _containers():
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        assert pod["securityContext"]["runAsUser"] > 0, owner
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert pod["automountServiceAccountToken"] is False, owner
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, owner
        assert context["allowPrivilegeEscalation"] is False, owner
        assert context["capabilities"]["drop"] == ["ALL"], owner
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{owner}: a writable /tmp on a read-only root"


def test_containers_have_requests_and_a_memory_limit() -> None:
    for owner, _, container in _containers():
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), owner
        assert "memory" in resources["limits"], owner


def test_every_workload_mounts_the_configmap_at_the_config_path() -> None:
    configmap = k8s_object("ConfigMap")
    key = next(iter(configmap["data"]))
    for owner, pod, container in _containers():
        args = container["args"]
        config_path = Path(args[args.index("--config") + 1])
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
        assert mount.get("readOnly") is True, owner
        assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"], owner
        assert config_path.name == key, owner
        password = next(env for env in container["env"] if env["name"] == "PGPASSWORD")
        assert password["valueFrom"]["secretKeyRef"]["optional"] is True, f"{owner}: trust set-ups need no Secret"


@pytest.mark.parametrize("owner", [owner for owner, _ in pod_specs()])
def test_container_args_follow_the_cli_contract(owner: str) -> None:
    container = next(c for o, _, c in _containers() if o == owner)
    assert "command" not in container, "keep the image's ENTRYPOINT (pgcutover); pass a subcommand in args"
    command, *rest = container["args"]
    options = CLI_CONTRACT[command]
    i = 0
    while i < len(rest):
        assert rest[i] in options, f"{owner}: {command} has no option {rest[i]}"
        i += 2 if options[rest[i]] else 1
    assert "--config" in rest


def test_serve_args_parse_with_the_real_cli() -> None:
    args = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and parsed.config == "/etc/pgcutover/pgcutover.toml"


def test_jobs_retry_safely_and_name_real_routes() -> None:
    jobs = {doc["metadata"]["name"]: doc for _, doc in k8s_objects() if doc["kind"] == "Job"}
    assert set(jobs) == {"pgcutover-backfill", "pgcutover-install-triggers"}
    for name, job in jobs.items():
        spec = job["spec"]
        assert spec["template"]["spec"]["restartPolicy"] == "OnFailure", name
        assert spec["backoffLimit"] >= 1, f"{name}: both commands are resumable/idempotent, so retries are safe"
        assert spec.get("ttlSecondsAfterFinished"), name
        assert "activeDeadlineSeconds" not in spec, f"{name}: a large backfill may take hours"
    backfill_args = jobs["pgcutover-backfill"]["spec"]["template"]["spec"]["containers"][0]["args"]
    route = backfill_args[backfill_args.index("--route") + 1]
    assert configmap_config().route_for(route) is not None, f"--route {route} is not a [[route]] of the ConfigMap"
    for option in ("--batch", "--max-rate"):
        assert int(backfill_args[backfill_args.index(option) + 1]) > 0


def test_rollback_from_inside_a_pod_needs_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3 a.m. command of deploy/README.md: `kubectl exec deploy/pgcutover -- pgcutover rollback --all` finds the
    mounted TOML through $PGCUTOVER_CONFIG, which the image sets."""
    env = " ".join(i.value for i in parse(DOCKERFILE.read_text()).stages()[-1] if i.keyword == "ENV")
    path = re.search(r"PGCUTOVER_CONFIG=(\S+)", env).group(1)
    monkeypatch.setenv("PGCUTOVER_CONFIG", path)
    parsed = build_parser().parse_args(["rollback", "--all"])
    assert parsed.command == "rollback" and parsed.all and parsed.config == path
    readme = (K8S.parent / "README.md").read_text()
    assert "exec deploy/pgcutover -- pgcutover rollback --all" in readme
