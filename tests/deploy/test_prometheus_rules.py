"""deploy/prometheus: the alert rules load (promtool check rules), behave on synthetic series
(promtool test rules), read only metrics the worker exports, and say what docs/metrics.md says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import DEPLOY, ROOT, exported_metric_names, promql_metric_names
from tests.support.tools import require_tool

RULES = DEPLOY / "prometheus" / "fanout-worker.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "fanout-worker.rules.test.yml"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool")
    return subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    # Given the rules file as shipped, When promtool checks it, Then it is valid.
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    # Given the synthetic series (an aging checkpoint, a lagging stream, a healthy hour, ...),
    # When promtool evaluates the rules over them, Then every expected alert fires and no other.
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    # Given a copy of the rules whose warning waits for 90 % of the oplog window instead of 50 %,
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    broken = RULES.read_text().replace("> 0.5 * scalar", "> 0.9 * scalar")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    # When the same unit tests run against it,
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    # Then they fail, naming the alert that no longer fires.
    assert result.returncode != 0
    assert "FanoutResumePointAgingWarn" in result.stdout + result.stderr


def test_expressions_read_only_metrics_the_worker_exports() -> None:
    # Given the names the worker's registry exposes and the recording rules of the file,
    known = exported_metric_names() | {rule["record"] for rule in rules() if "record" in rule}
    # When every expression's metric names are read, Then none is unknown (a typo, a renamed metric).
    unknown = {
        rule.get("alert", rule.get("record")): promql_metric_names(rule["expr"]) - known for rule in rules()
    }
    assert {name: sorted(missing) for name, missing in unknown.items() if missing} == {}


def _documented_rules() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return [rule for block in blocks for rule in yaml.safe_load(block)]


def _normal(expr: str) -> str:
    return " ".join(expr.split())


def test_the_file_holds_the_alerts_docs_metrics_lists() -> None:
    # Given the alert blocks of docs/metrics.md and the rules file,
    documented = {r.get("alert", r.get("record")): r for r in _documented_rules()}
    shipped = {r.get("alert", r.get("record")): r for r in rules()}
    # Then both name the same rules, with the same expressions, durations and severities.
    assert sorted(documented) == sorted(shipped)
    for name, doc in documented.items():
        rule = shipped[name]
        assert _normal(rule["expr"]) == _normal(doc["expr"]), name
        assert rule.get("for") == doc.get("for"), name
        assert rule.get("labels") == doc.get("labels"), name
