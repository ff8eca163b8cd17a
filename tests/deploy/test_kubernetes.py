"""deploy/kubernetes: the manifests agree with the worker: roles, health port and probe paths, the
environment variables and the Secret's keys, the config path, the job queues KEDA watches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    fanout_roles,
    health_paths,
    package_version,
    secret_env_names,
    settings_env_names,
)
from worker.messaging.jobs import CONSUMED_LANES, lane_queues
from worker.settings import FanoutSettings, HealthSettings, PipelineSettings

K8S = DEPLOY / "kubernetes"
CONFIG_PATH = "/etc/fanout-worker/config.toml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def applied() -> list[dict[str, Any]]:
    resources = documents(K8S / "kustomization.yaml")[0]["resources"]
    return [doc for name in resources for doc in documents(K8S / name)]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in applied() if d["kind"] == kind}


def deployments() -> dict[str, dict[str, Any]]:
    return of_kind("Deployment")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def role_of(deployment: dict[str, Any]) -> str:
    args = container(deployment)["args"]
    return str(args[args.index("--role") + 1])


def secret() -> dict[str, Any]:
    (doc,) = documents(K8S / "secret.example.yaml")
    return doc


def test_every_manifest_parses_and_the_kustomization_lists_files_that_exist() -> None:
    # Given the kustomization, Then every resource it names exists and parses to typed objects.
    assert {d["kind"] for d in applied()} == {
        "Deployment",
        "Service",
        "TriggerAuthentication",
        "ScaledObject",
    }


def test_a_tailer_pair_and_fan_out_workers_run_roles_the_worker_knows() -> None:
    # Given the Deployments, Then each runs `run --config <mounted config> --role <a known role>`,
    roles = {name: role_of(d) for name, d in deployments().items()}
    assert roles == {"fanout-worker-tailer": "tailer", "fanout-worker-fanout": "fanout"}
    assert set(roles.values()) <= fanout_roles()
    # and the tailer runs two replicas: the lease decides which one tails.
    assert deployments()["fanout-worker-tailer"]["spec"]["replicas"] == 2
    for d in deployments().values():
        c = container(d)
        assert c["args"][:3] == ["run", "--config", CONFIG_PATH]
        mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["config"]
        assert f"{mount}/config.toml" == CONFIG_PATH


@pytest.mark.parametrize("name", ["fanout-worker-tailer", "fanout-worker-fanout"])
def test_probes_and_port_are_the_health_listeners(name: str) -> None:
    # Given a Deployment's container,
    d = deployments()[name]
    c = container(d)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    # Then its health port is health.port, and liveness/readiness probe /healthz and /readyz there.
    assert ports == {"health": HealthSettings().port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    probed = {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probed <= health_paths()
    # And the listener is reachable from outside the pod, and the grace period outlasts the drain.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FANOUT_HEALTH__HOST"] == "0.0.0.0"
    grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > PipelineSettings().shutdown_deadline_seconds
    assert c["image"].endswith(f":{package_version()}")


def test_env_names_are_settings_and_credentials_come_from_the_secret() -> None:
    # Given the Secret example and every container's env,
    keys = set(secret()["stringData"])
    # Then the Secret holds exactly the settings that are credentials,
    assert keys == secret_env_names()
    for d in deployments().values():
        c = container(d)
        # every variable set is one the settings model accepts (a typo would stop the worker),
        assert {e["name"] for e in c["env"]} | keys <= settings_env_names()
        # and the credentials come from that Secret.
        assert [s["secretRef"]["name"] for s in c["envFrom"]] == [secret()["metadata"]["name"]]


def test_keda_scales_the_fan_out_workers_on_the_job_lanes() -> None:
    # Given the ScaledObject and its TriggerAuthentication,
    (scaled,) = of_kind("ScaledObject").values()
    (auth,) = of_kind("TriggerAuthentication").values()
    # Then it scales the fan-out Deployment on the lanes' queues named by [fanout],
    assert role_of(deployments()[scaled["spec"]["scaleTargetRef"]["name"]]) == "fanout"
    queues = {t["metadata"]["queueName"] for t in scaled["spec"]["triggers"]}
    fanout = FanoutSettings()
    assert queues == {q for lane in CONSUMED_LANES for q in lane_queues(fanout, lane)}
    assert {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {auth["metadata"]["name"]}
    # reading the broker with the worker's own RabbitMQ URL from the Secret.
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["name"] == secret()["metadata"]["name"]
    assert ref["key"] == "FANOUT_RABBITMQ__URL" and ref["key"] in secret()["stringData"]


def test_the_metrics_service_targets_the_health_port() -> None:
    # Given the headless Service, Then it selects every fanout-worker pod on the health port.
    (service,) = of_kind("Service").values()
    assert service["spec"]["ports"] == [
        {"name": "health", "port": HealthSettings().port, "targetPort": "health"}
    ]
    for d in deployments().values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
