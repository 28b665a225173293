"""The Kubernetes manifests (deploy/kubernetes/): valid for the oldest and newest Kubernetes that
kubernetes-validate bundles (strict: unknown fields are errors), and consistent with the server they
run: its settings, its probes, its drain grace, its metrics."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from vcstream.service.config import ServiceSettings, byte_size

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
COMMON = sorted((DEPLOY / "common").glob("*.yaml"))
VARIANTS = {"cpu": DEPLOY / "cpu" / "deployment.yaml", "gpu": DEPLOY / "gpu" / "deployment.yaml"}
#: the oldest and newest Kubernetes versions kubernetes-validate 1.37 bundles (1.25 has every API
#: used here as GA: autoscaling/v2, policy/v1, networking.k8s.io/v1)
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
#: margin between the end of the drain and SIGKILL: the process closes its pipelines and exits
EXIT_MARGIN_S = 5


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str, name: str) -> dict[str, Any]:
    for path in COMMON:
        for doc in load(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in {DEPLOY / 'common'}")


def deployment(variant: str) -> dict[str, Any]:
    (doc,) = load(VARIANTS[variant])
    return doc


def server_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "vcstream"]
    return container


def kubernetes_validate(version: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(tool), "--strict", "--quiet", "-k", version, *map(str, paths)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    result = kubernetes_validate(version, *COMMON, *VARIANTS.values())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The check above can fail: a Deployment with a misspelt probe field does not validate."""
    broken = deployment("cpu")
    server_container(broken["spec"]["template"]["spec"])["readinessProbe"]["periodSecond"] = 5
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = kubernetes_validate(KUBERNETES_VERSIONS[-1], path)
    assert result.returncode != 0
    assert "periodSecond" in result.stdout + result.stderr


def without_variant(doc: dict[str, Any]) -> dict[str, Any]:
    """The Deployment less what differs on purpose between CPU and GPU nodes."""
    doc = copy.deepcopy(doc)
    pod = doc["spec"]["template"]["spec"]
    pod.pop("nodeSelector", None)
    pod.pop("tolerations", None)
    for container in pod["initContainers"] + pod["containers"]:
        container.pop("image")
    server = server_container(pod)
    server.pop("resources")
    server["env"] = [e for e in server["env"] if e["name"] != "VCSTREAM_ENGINE"]
    return doc


def test_cpu_and_gpu_deployments_differ_only_in_their_variant_lines() -> None:
    cpu, gpu = deployment("cpu"), deployment("gpu")
    assert without_variant(cpu) == without_variant(gpu)
    gpu_limits = server_container(gpu["spec"]["template"]["spec"])["resources"]["limits"]
    cpu_limits = server_container(cpu["spec"]["template"]["spec"])["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu_limits


def settings_env(variant: str) -> dict[str, str]:
    """The VCSTREAM_* environment a replica of ``variant`` starts with (literal values only)."""
    env = dict(resource("ConfigMap", "vcstream-settings")["data"])
    env.update(resource("Secret", "vcstream-secrets")["stringData"])
    for item in server_container(deployment(variant)["spec"]["template"]["spec"])["env"]:
        env[item["name"]] = item.get("value", "192.0.2.10")  # downward API values: the node IP
    return env


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_setting_is_one_the_server_reads(variant: str) -> None:
    env = settings_env(variant)
    known = {spec.metadata["env"] for spec in fields(ServiceSettings)}
    assert set(env) <= known
    # and the server accepts them together (parsing, and cross-checks such as TURN URLs need a secret)
    settings = ServiceSettings.from_env(env)
    assert settings.engine == {"cpu": "world", "gpu": "seedvc"}[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pod_outlives_its_drain(variant: str) -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts: the hook's sleep
    plus the server's drain grace must fit, with a margin to exit."""
    pod = deployment(variant)["spec"]["template"]["spec"]
    server = server_container(pod)
    sleep, seconds = server["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    grace = ServiceSettings.from_env(settings_env(variant)).shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + grace + EXIT_MARGIN_S


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ports_and_media_entry(variant: str) -> None:
    pod = deployment(variant)["spec"]["template"]["spec"]
    server = server_container(pod)
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (http,) = server["ports"]
    assert http["containerPort"] == int(resource("ConfigMap", "vcstream-settings")["data"]["VCSTREAM_PORT"])
    # the ICE port range is reachable on the node's address, which the server announces
    assert pod["hostNetwork"] is True
    (announced,) = [e for e in server["env"] if e["name"] == "VCSTREAM_ANNOUNCED_ADDRESS"]
    assert announced["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    (migrate,) = pod["initContainers"]
    assert migrate["command"] == ["vcstream", "db", "upgrade"]
    assert migrate["image"] == server["image"]
    assert migrate["envFrom"] == server["envFrom"]
    scrape = deployment(variant)["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/port"] == str(http["containerPort"])


def test_the_ingress_lets_calls_and_uploads_through() -> None:
    annotations = resource("Ingress", "vcstream")["metadata"]["annotations"]
    one_hour = 3600
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= one_hour
    body = byte_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"].upper())
    upload = byte_size(resource("ConfigMap", "vcstream-settings")["data"]["VCSTREAM_MAX_UPLOAD_BYTES"])
    assert body > upload


def test_the_autoscaler_reads_the_metric_prometheus_adapter_serves() -> None:
    hpa = resource("HorizontalPodAutoscaler", "vcstream")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "vcstream_capacity_used_ratio"
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert re.match(r"^" + re.escape(name) + r"\{", rule["seriesQuery"])
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment("cpu")["metadata"]["name"]


def test_the_secret_holds_placeholders_only() -> None:
    for key, value in resource("Secret", "vcstream-secrets")["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} must be an obvious placeholder in the repository"
