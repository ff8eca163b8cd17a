"""Helpers for the deploy-artifact tests: finding the operators' tools, the metric names the worker
exports, and the metric names a PromQL expression reads."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from worker.observe.metrics import build_registry, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _every_branch_worker() -> Any:
    """A leader with Redis and fan-out workers: the worker view under which every family is exported.

    It reuses the metrics tests' stand-in, which carries every field of worker.stats.WorkerView,
    and adds the fan-out runner the wiring builds (worker.wiring.fanout_runner: nothing connects
    until it runs), with every queue depth read as empty.
    """
    from tests.worker.observe.test_metrics_health import fake_worker, pipeline
    from worker.settings import Settings
    from worker.wiring import fanout_runner

    saved = time.time()
    streams = [pipeline(stream, checkpoint_saved_at=saved) for stream in ("posts", "profiles")]
    for stream in streams:  # families labelled by event type have samples only once one is seen
        for outcome in ("read", "handled", "dead_lettered", "retried"):
            stream.stats.count("insert", outcome)
    worker = fake_worker(role="leader", pipelines=streams)
    runner = fanout_runner(
        Settings(), SimpleNamespace(), worker.runtime.publisher, SimpleNamespace(messages=0, recipients=0)
    )
    runner.depths = dict.fromkeys(runner.depths, 0)
    runner.connected = True
    worker.runtime.fanout = runner
    return worker


def exported_metric_names() -> set[str]:
    """Every sample name the worker's registry exposes (``fanout_events_total``, not ``fanout_events``)."""
    text = render(build_registry(_every_branch_worker())).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """The metric (and recording-rule) names an expression reads.

    A small lexer, enough for the expressions this project writes: strings, label matchers,
    grouping clauses, ranges and durations are removed; what is left and is not a function call,
    a keyword or a number is a metric name.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (label values, format strings)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables: $__rate_interval, ${lane}
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def health_paths() -> set[str]:
    """The paths the health listener answers, read from worker/observe/health.py."""
    source = (ROOT / "worker" / "observe" / "health.py").read_text()
    return set(re.findall(r'path == "(/[a-z]+)"', source))


def settings_env_names() -> set[str]:
    """Every FANOUT_ variable the settings model accepts (FANOUT_<SECTION>__<KEY> and FANOUT_<SECTION>)."""
    from worker.settings import env_names

    return set(env_names())


def fanout_roles() -> set[str]:
    """The values of fanout.role (and of ``run --role``)."""
    from typing import get_args

    from worker.settings import FanoutSettings

    return set(get_args(FanoutSettings.model_fields["role"].annotation))


def secret_env_names() -> set[str]:
    """The variables of the settings that are credentials (SecretStr): what a Secret must hold."""
    from pydantic import SecretStr

    from worker.settings import ENV_PREFIX, Settings

    names = set()
    for section, info in Settings.model_fields.items():
        for key, field in getattr(info.annotation, "model_fields", {}).items():
            if field.annotation is SecretStr:
                names.add(f"{ENV_PREFIX}{section.upper()}__{key.upper()}")
    return names


def package_version() -> str:
    """The release: worker.__version__, which pyproject.toml reads (dynamic version)."""
    from worker import __version__

    return __version__
