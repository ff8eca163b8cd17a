"""scripts/ensure-services.sh provides promtool for the alert-rule tests and leaves no Prometheus
server running (Debian's package starts one on install)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.deploy.support import ROOT
from tests.support.tools import require_tool

SCRIPT = ROOT / "scripts" / "ensure-services.sh"


def prometheus_servers() -> list[int]:
    """Pids of processes running the Prometheus server binary (read from /proc, nothing killed)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe").endswith("/prometheus"):
                    pids.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
    return pids


def test_the_set_up_reports_promtool_and_leaves_no_prometheus_server() -> None:
    # Given the test set-up as `make test` runs it (everything already up: it only checks),
    require_tool("promtool")
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    # Then it succeeds, says promtool is installed, and no Prometheus server is running.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promtool: installed" in result.stdout
    assert prometheus_servers() == []


def test_no_tools_skips_promtool_and_usage_errors_exit_2() -> None:
    # Given --no-tools (what `make demo` passes), Then promtool is not even looked at.
    result = subprocess.run(
        ["bash", str(SCRIPT), "--check", "--no-tools"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "promtool" not in result.stdout + result.stderr
    # Given an unknown argument, Then it exits 2 naming it.
    bad = subprocess.run(
        ["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert "unknown argument: --bogus" in bad.stderr
