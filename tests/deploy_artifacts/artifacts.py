"""Where the deploy artifacts live and how the tests read them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from pgcutover.core.config import Config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
IMAGE_CONFIG = DEPLOY / "docker" / "pgcutover.toml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "pgcutover.json"


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """All non-empty documents of a YAML file; each must be a mapping."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is {type(doc).__name__}, not a mapping"
    return docs


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) for doc in yaml_documents(path)]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects()
             if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap_toml() -> tuple[str, dict[str, Any]]:
    """(file name, parsed TOML) of the ConfigMap the Deployment mounts."""
    data = k8s_object("ConfigMap")["data"]
    assert len(data) == 1, "the ConfigMap carries exactly one TOML file"
    (name, text), = data.items()
    return name, tomllib.loads(text)


def configmap_config() -> Config:
    name, raw = configmap_toml()
    return parse_config(raw, source=f"configmap:{name}")


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(owner, pod template) for every workload: the Deployment and each Job."""
    return [(f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"])
            for _, doc in k8s_objects() if doc.get("kind") in ("Deployment", "Job")]


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path; HTTP errors are answers here, not exceptions."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_http(port: int, deadline_s: float = 30) -> None:
    """The proxy opens its metrics port just after the client port; poll /healthz until it answers."""
    import time

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            http_get(port, "/healthz", timeout=1)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
