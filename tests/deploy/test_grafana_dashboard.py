"""deploy/grafana: the dashboard parses, shows what an operator looks at first, and every query is
valid PromQL (promtool) reading only metrics the worker exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import DEPLOY, exported_metric_names, promql_metric_names
from tests.support.tools import require_tool

DASHBOARD = DEPLOY / "grafana" / "fanout-worker.json"


def panels() -> list[dict[str, Any]]:
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += [panel, *panel.get("panels", [])]  # a collapsed row holds its panels
    return found


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def test_dashboard_parses_with_its_datasource_variable() -> None:
    # Given the dashboard file, When it is read as JSON,
    dashboard = json.loads(DASHBOARD.read_text())
    # Then it is a Grafana dashboard whose queries go to the Prometheus chosen on import.
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 30
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_shows_what_the_issue_asks() -> None:
    # Given the panels' titles, Then each view an operator needs is there.
    titles = {p["title"] for p in panels()}
    for wanted in (
        "Throughput",
        "Change stream lag",
        "Checkpoint age",
        "Cache hit rate per layer",
        "Job queue depth per lane",
        "Dead letters",
    ):
        assert wanted in titles


def test_every_query_reads_only_metrics_the_worker_exports() -> None:
    # Given the names the worker's registry exposes, When every query's metric names are read,
    exported = exported_metric_names()
    unknown = {expr: sorted(promql_metric_names(expr) - exported) for expr in expressions()}
    # Then none reads a metric the worker does not export.
    assert {expr: names for expr, names in unknown.items() if names} == {}
    assert all(promql_metric_names(expr) for expr in expressions())


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # Given every query as a recording rule, Grafana's $__rate_interval replaced by a duration,
    rules = [
        {"record": f"dashboard:query_{n}", "expr": re.sub(r"\$__rate_interval", "5m", expr)}
        for n, expr in enumerate(expressions())
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    # When promtool checks them, Then every one parses.
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
