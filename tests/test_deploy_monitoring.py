"""Prometheus alerting and the Grafana dashboard (deploy/prometheus/, deploy/grafana/): the rules load
and behave as their unit tests say (promtool), the local cluster's scrape configuration is valid, every
dashboard query parses, and every metric they name is one a real server exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from vcstream.engines.passthrough import PassthroughEngine
from vcstream.service.app import create_app
from vcstream.service.config import ServiceSettings
from waiting import wait_until_async

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "vcstream.json"
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter" / "values.yaml"
#: series Prometheus makes itself for every target
PROMETHEUS_OWN = {"up"}
#: Grafana's variables, replaced by what they expand to for promtool
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
#: the sample names each metric type exposes (prometheus_client's families carry the base name)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (Debian package prometheus); run scripts/setup.sh")
    return subprocess.run([tool, *args], check=False, capture_output=True, text=True, timeout=60)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables expanded) of every panel target."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def alert_queries() -> list[str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_alert_rules_load() -> None:
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout


def test_alerts_fire_and_stay_quiet_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules = {
        r["alert"]
        for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    cases = [
        case
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fires == rules
    assert quiet == rules


def test_an_alert_test_can_fail(tmp_path: Path) -> None:
    """promtool reports a wrong expectation (so a passing run above means something)."""
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tests["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    first = tests["tests"][0]["alert_rule_test"][-1]  # replica a is down at 5m
    first["exp_alerts"][0]["exp_labels"]["instance"] = "b:8080"
    path = tmp_path / "wrong_test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "VcstreamReplicaDown" in result.stdout + result.stderr


def test_the_local_cluster_scrape_config_is_valid(tmp_path: Path) -> None:
    """As the cluster test uses it: copied with alerts.yml, targets written beside it."""
    for name in ("cluster.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    shutil.copy(PROMETHEUS / "vcstream-targets.example.json", tmp_path / "vcstream-targets.json")
    result = promtool("check", "config", str(tmp_path / "cluster.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "vcstream-targets.json").write_text('[{"targets": "127.0.0.1:1"}]')
    assert promtool("check", "config", str(tmp_path / "cluster.yml")).returncode != 0


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each query as a recording rule: promtool parses the PromQL (and names the broken one)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    text = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "vcstream_capacity_used_ratio",
        "vcstream_sessions_in_use",
        "vcstream_active_sessions",
        "vcstream_sessions_failed_total",
        "vcstream_end_to_end_latency_seconds_bucket",
        "vcstream_scheduler_skipped_blocks_total",
        "vcstream_scheduler_late_blocks_total",
        "vcstream_block_inference_seconds_bucket",
        "vcstream_draining",
        "vcstream_relayed_sessions",
        "vcstream_sent_bytes_total",
    ):
        assert metric in text
    assert re.search(r"histogram_quantile\(0\.5,.*end_to_end", text)
    assert re.search(r"histogram_quantile\(0\.95,.*end_to_end", text)


def exported_sample_names(data_dir: Path) -> set[str]:
    """Every sample name a passthrough server's /metrics exposes (labelled metrics that have no
    sample yet count by their declared type)."""

    async def scrape() -> str:
        settings = ServiceSettings(port=0, data_dir=data_dir, max_sessions=2)
        app = create_app(settings, PassthroughEngine())
        async with TestClient(TestServer(app)) as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status == 200

            await wait_until_async(ready, 20, "the server answers /readyz 200")
            response = await client.get("/metrics")
            assert response.status == 200
            return await response.text()

    names = set()
    for family in text_string_to_metric_families(asyncio.run(scrape())):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_named_is_exported(tmp_path: Path) -> None:
    exported = exported_sample_names(tmp_path)
    named: dict[str, set[str]] = {}
    sources = [(title, expr) for title, expr in dashboard_queries()]
    sources += [(f"alert {expr[:40]}", expr) for expr in alert_queries()]
    sources += [("prometheus-adapter", ADAPTER.read_text())]
    for where, text in sources:
        for name in re.findall(r"\bvcstream_[a-z0-9_]+\b", text):
            named.setdefault(name, set()).add(where)
    assert "vcstream_capacity_used_ratio" in named
    unknown = {n: w for n, w in named.items() if n not in exported}
    assert not unknown, f"metrics no server exports: {unknown}"


def test_queries_name_no_other_metric() -> None:
    """Names outside the vcstream_ prefix would slip past the check above: the only one is up."""
    promql_words = {
        "sum", "by", "rate", "histogram_quantile", "max", "avg", "le", "instance", "job", "reason",
        "direction", "role", "namespace", "pod", "bool", "on", "ignoring", "without", "count",
    }  # fmt: skip
    for where, expr in [*dashboard_queries(), *(("alert", e) for e in alert_queries())]:
        bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)  # label matchers, strings, ranges
        words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", bare))
        others = words - promql_words - PROMETHEUS_OWN - {w for w in words if w.startswith("vcstream_")}
        assert not others, f"{where}: {others}"


def test_the_dashboard_is_grafana_json() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "vcstream"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
