"""docker-compose.yml: what would stop the stack from starting, checked without a Docker engine.

No Docker engine runs here, so this reads the file the way the engine would (YAML
with anchors) and checks what broke it before: files it mounts exist, agents pass
`--config` before the subcommand, each server replica has a broker login of its own
that the ACL and the operator file know, and every mounted volume is declared.
The Compose Specification's validating parser (the `compose-spec` bindings of the
Rust `compose_spec` crate) checks every key, value type, duration and dependency
condition on any machine; `docker compose config` validates it too where the
compose plugin is installed.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from ferry.server.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [(v.split(":")[0], v.split(":")[1]) for v in service.get("volumes", [])]


def test_every_bind_mounted_file_exists_and_every_named_volume_is_declared(
    stack: dict[str, Any],
) -> None:
    declared = set(stack["volumes"])
    for name, service in stack["services"].items():
        for source, _ in _mounts(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_each_replica_has_its_own_broker_login_known_to_the_acl_and_the_operator_file(
    stack: dict[str, Any],
) -> None:
    servers = {n: s for n, s in stack["services"].items() if n.startswith("server-")}
    assert len(servers) == 2
    logins = {s["environment"]["FERRY_MQTT_USERNAME"] for s in servers.values()}
    assert len(logins) == 2 and all("@" in login for login in logins)
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    operator = (ROOT / "deploy" / "mosquitto" / "operator.passwd").read_text()
    for login in logins:
        assert f"user {login}\n" in acl
        assert f"{login}:$7$" in operator


def test_agents_pass_the_config_before_the_subcommand(stack: dict[str, Any]) -> None:
    agents = [s for n, s in stack["services"].items() if n.startswith("agent-")]
    assert len(agents) == 2
    for agent in agents:
        command = " ".join(agent["command"].split())
        for verb in ("enroll", "run"):
            assert f"ferry-agent --config /etc/ferry/agent.toml {verb}" in command


def test_the_image_owns_the_folders_the_stack_writes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("/data", "/mqtt-auth", "/var/lib/ferry-agent"):
        assert folder in dockerfile.split("chown", 1)[1].split("\n", 2)[0]
    assert "USER ferry" in dockerfile


def test_the_cited_deployment_guide_exists() -> None:
    assert "docs/deploy.md" in COMPOSE.read_text()
    assert (ROOT / "docs" / "deploy.md").is_file()


def test_docker_compose_config_accepts_the_file() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        print("skipping: the docker client has no compose plugin here")
        pytest.skip("the docker client has no compose plugin here")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def _spec_errors(document: dict[str, Any]) -> str | None:
    """What the Compose Specification's parser refuses in ``document``, or None.

    YAML anchors and merge keys are resolved first (as Compose does); the parser
    itself reads JSON without them."""
    try:
        PyCompose.from_json(json.dumps(document))
    except ValueError as exc:
        return str(exc)
    return None


def test_the_compose_specification_parser_accepts_the_file(stack: dict[str, Any]) -> None:
    assert _spec_errors(stack) is None
    assert set(PyCompose.from_json(json.dumps(stack)).service_names()) == set(stack["services"])


@pytest.mark.parametrize(
    ("service", "key", "value", "refusal"),
    [
        ("server-1", "restrt", "always", "restrt"),  # a misspelt key
        ("server-1", "healthcheck", {"test": ["CMD", "true"], "interval": "5 parsecs"}, "unit"),
        ("server-1", "depends_on", {"postgres": {"condition": "healthy"}}, "healthy"),
        ("agent-1", "restart", "sometimes", "sometimes"),
        ("agent-1", "ports", ["99999:80"], "99999"),
    ],
)
def test_the_compose_specification_parser_refuses_a_broken_copy(
    stack: dict[str, Any], service: str, key: str, value: object, refusal: str
) -> None:
    broken = copy.deepcopy(stack)
    broken["services"][service][key] = value
    errors = _spec_errors(broken)
    assert errors is not None and refusal in errors, errors


def test_servers_use_the_s3_store_that_the_stack_creates(stack: dict[str, Any]) -> None:
    env = stack["x-server"]["environment"]
    assert env["FERRY_BLOB_BACKEND"] == "s3"
    bucket = env["FERRY_BLOB_S3_BUCKET"]
    assert env["FERRY_BLOB_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = stack["services"]["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert f"store/{bucket}" in stack["services"]["minio-bucket"]["entrypoint"]
    for name in ("server-1", "server-2"):
        needs = stack["services"][name]["depends_on"]
        assert needs["minio-bucket"]["condition"] == "service_completed_successfully"
    Settings.from_env({k: str(v) for k, v in env.items()})  # the settings parse
