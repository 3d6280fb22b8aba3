"""deploy/docker: read the Dockerfile as BuildKit would and check what can be checked without an engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from urllib.parse import urlsplit

import pytest

from pgcutover.core.config import parse_config

from .artifacts import DOCKERFILE, DOCKERIGNORE, IMAGE_CONFIG, ROOT, k8s_object, wait_for_http
from .dockerfile import KNOWN, Dockerfile, DockerIgnore, copy_sources, expand, parse

CONFIG_PATH = "/etc/pgcutover/pgcutover.toml"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime_stage(dockerfile: Dockerfile) -> list:
    return dockerfile.stages()[-1]


def test_reader_handles_continuations_directives_and_forms() -> None:
    parsed = parse('# syntax=docker/dockerfile:1\nARG A=x\nFROM img:${A} AS one\nRUN a \\\n  # note\n  && b\n'
                   'COPY --from=one --chown=1:1 /src /dst\nCMD ["run", "it"]\n')
    assert parsed.directives == {"syntax": "docker/dockerfile:1"}
    assert [i.keyword for i in parsed.instructions] == ["ARG", "FROM", "RUN", "COPY", "CMD"]
    assert parsed.instructions[2].value == "a && b"
    assert parsed.instructions[3].flags == {"from": "one", "chown": "1:1"}
    assert parsed.instructions[4].exec_form == ["run", "it"]
    assert expand("img:${A}", parsed.global_args()) == "img:x"


def test_every_instruction_is_known(dockerfile: Dockerfile) -> None:
    assert dockerfile.directives.get("syntax", "").startswith("docker/dockerfile:")
    unknown = [(i.line, i.keyword) for i in dockerfile.instructions if i.keyword not in KNOWN]
    assert unknown == []
    first = next(i for i in dockerfile.instructions if i.keyword != "ARG")
    assert first.keyword == "FROM", "only ARG may come before the first FROM"


def test_multi_stage_with_named_stages_and_the_same_base(dockerfile: Dockerfile) -> None:
    stages = dockerfile.stages()
    assert len(stages) >= 2, "multi-stage: a builder and a slim runtime"
    args = dockerfile.global_args()
    names, bases = [], []
    for stage in stages:
        image, _, name = expand(stage[0].value, args).partition(" AS ")
        assert name and re.fullmatch(r"[a-z][a-z0-9_.-]*", name), f"FROM line {stage[0].line} needs AS <name>"
        assert name not in names, f"stage {name} defined twice"
        names.append(name)
        bases.append(image.strip())
    # The venv is copied between stages: both must have the same Python at the same path.
    assert len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:3\.1[1-9][0-9.]*-slim(-[a-z]+)?", bases[0]), bases[0]
    # Every COPY --from names an earlier stage; the runtime stage does take something from the builder.
    for index, stage in enumerate(stages):
        for ins in stage:
            if ins.keyword == "COPY" and "from" in ins.flags:
                assert ins.flags["from"] in names[:index], f"line {ins.line}: --from={ins.flags['from']}"
    assert any(i.keyword == "COPY" and i.flags.get("from") == names[0] for i in stages[-1])


def test_runtime_runs_as_a_numeric_non_root_user(runtime_stage: list) -> None:
    keywords = [i.keyword for i in runtime_stage]
    users = [i for i in runtime_stage if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric UID so that runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    for keyword in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
        assert keywords.index(keyword) > last_user, f"USER must come before {keyword}"
    # The UID matches the one the Kubernetes pods declare.
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)


def test_default_command_is_serve_with_the_config_file(runtime_stage: list) -> None:
    entrypoint = next(i for i in runtime_stage if i.keyword == "ENTRYPOINT").exec_form
    cmd = next(i for i in runtime_stage if i.keyword == "CMD").exec_form
    assert entrypoint is not None and cmd is not None, "exec form, so pgcutover is PID 1 and gets SIGTERM"
    assert entrypoint + cmd == ["pgcutover", "serve", "--config", CONFIG_PATH]
    # The operator commands (route, rollback, status) default to $PGCUTOVER_CONFIG inside the container.
    assert _env(runtime_stage)["PGCUTOVER_CONFIG"] == CONFIG_PATH


def _env(stage: list) -> dict[str, str]:
    found: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for word in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.value):
                found[word[0]] = word[1].strip('"')
    return found


def test_exposed_ports_and_healthcheck_match_the_baked_in_config(runtime_stage: list) -> None:
    config = parse_config(tomllib.loads(IMAGE_CONFIG.read_text()))
    assert config.proxy.listen.host == config.proxy.metrics.host == "0.0.0.0", "reachable from outside"
    exposed = {int(p.split("/")[0]) for i in runtime_stage if i.keyword == "EXPOSE" for p in i.value.split()}
    assert exposed == {config.proxy.listen.port, config.proxy.metrics.port} == {6432, 9187}

    health = next(i for i in runtime_stage if i.keyword == "HEALTHCHECK")
    assert {"interval", "timeout", "retries"} <= health.flags.keys()
    command = health.exec_form
    assert command is not None and command[:2] == ["python", "-c"], "no curl in the slim image"
    compile(command[2], "<HEALTHCHECK>", "exec")
    url = urlsplit(_env(runtime_stage)["PGCUTOVER_HEALTHZ"])
    assert "PGCUTOVER_HEALTHZ" in command[2]
    assert (url.path, url.port) == ("/healthz", config.proxy.metrics.port)


def test_baked_in_config_is_where_the_command_and_the_k8s_mount_expect_it(runtime_stage: list) -> None:
    copies = [i for i in runtime_stage if i.keyword == "COPY" and "from" not in i.flags]
    assert any(copy_sources(i) == ["deploy/docker/pgcutover.toml"] and i.value.endswith(CONFIG_PATH)
               for i in copies)
    mounts = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == CONFIG_PATH.rpartition("/")[0] for m in mounts)


def test_copy_sources_exist_and_pass_the_dockerignore(dockerfile: Dockerfile) -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    sources = [s for i in dockerfile.instructions if i.keyword in ("COPY", "ADD") and "from" not in i.flags
               for s in copy_sources(i)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context (the repository root)"
        assert ignore.files_sent(ROOT, source), f"COPY {source}: everything in it is excluded by the dockerignore"


def test_the_build_context_holds_what_pip_install_needs(dockerfile: Dockerfile) -> None:
    """The packages setuptools finds, their package data and the readme all reach `pip install .`."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    copied = {s.rstrip("/") for i in dockerfile.stages()[0] if i.keyword == "COPY" for s in copy_sources(i)}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    package_dir = pyproject["tool"]["setuptools"]["package-dir"]  # pgcutover.<folder> -> <folder>
    packages = set(package_dir.values())
    assert packages and packages <= copied, f"packages not copied into the builder: {packages - copied}"
    for package in packages:
        sent = set(ignore.files_sent(ROOT, package))
        for path in (ROOT / package).rglob("*.py"):
            if "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in sent, f"{path} is excluded from the build"
    for package, globs in pyproject["tool"]["setuptools"].get("package-data", {}).items():
        for pattern in globs:
            for path in (ROOT / package_dir[package]).glob(pattern):
                assert not ignore.excluded(path.relative_to(ROOT).as_posix()), f"package data {path} excluded"


def test_dockerignore_keeps_the_rest_out() -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/passthrough.py",
                 "proxy/__pycache__/app.cpython-311.pyc", "deploy/k8s/deployment.yaml"):
        assert ignore.excluded(path), path
    for path in ("proxy/app.py", "deploy/sql/schema.sql", "deploy/docker/pgcutover.toml", "pyproject.toml"):
        assert not ignore.excluded(path), path


def test_healthcheck_command_runs_against_a_real_endpoint(proxy) -> None:
    """The exact HEALTHCHECK command, pointed at a running proxy's /healthz, succeeds; at a wrong path it fails."""
    runtime = parse(DOCKERFILE.read_text()).stages()[-1]
    code = next(i for i in runtime if i.keyword == "HEALTHCHECK").exec_form[2]
    wait_for_http(proxy.metrics_port)
    base = f"http://127.0.0.1:{proxy.metrics_port}"
    ok = subprocess.run([sys.executable, "-c", code], env={"PGCUTOVER_HEALTHZ": f"{base}/healthz"}, timeout=30)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, "-c", code], env={"PGCUTOVER_HEALTHZ": f"{base}/nothing-here"},
                         capture_output=True, timeout=30)
    assert bad.returncode != 0
