"""systemd/: both units verify with systemd-analyze, run the documented install path, and what they
promise (sd_notify, stop timeout, environment) agrees with the worker."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.support import ROOT, settings_env_names
from tests.support.tools import require_tool
from worker.settings import PipelineSettings

UNITS = {
    "fanout-worker.service": ROOT / "systemd" / "fanout-worker.service",
    "fanout-worker-fanout@65.service": ROOT / "systemd" / "fanout-worker-fanout@.service",
}
INSTALLED = "/opt/fanout-worker/venv/bin/fanout-worker"


def directive(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, flags=re.M)


def verify(directory: Path, *names: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    return subprocess.run(
        [tool, "verify", *names], capture_output=True, text=True, timeout=120, cwd=directory, check=False
    )


def installed_copies(tmp_path: Path, executable: str) -> None:
    for name, unit in UNITS.items():
        target = tmp_path / name.replace("@65", "@")
        target.write_text(unit.read_text().replace(INSTALLED, executable))


def test_units_verify_with_the_worker_installed(tmp_path: Path) -> None:
    # Given both units with ExecStart pointing at an installed fanout-worker (this venv's),
    executable = shutil.which("fanout-worker", path=str(Path(sys.executable).parent))
    assert executable is not None
    installed_copies(tmp_path, executable)
    # When systemd-analyze verifies them, Then it has nothing to say.
    result = verify(tmp_path, *(f"./{name}" for name in UNITS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    # Given a unit with a directive systemd does not know, When verified, Then it is reported.
    executable = shutil.which("fanout-worker", path=str(Path(sys.executable).parent))
    assert executable is not None
    installed_copies(tmp_path, executable)
    unit = tmp_path / "fanout-worker.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = verify(tmp_path, "./fanout-worker.service")
    assert "WatchdogSecs" in result.stdout + result.stderr


@pytest.mark.parametrize("name", list(UNITS))
def test_units_run_the_documented_install_and_what_the_worker_implements(name: str) -> None:
    text = UNITS[name].read_text()
    # Given a unit, Then it starts the venv install docs/deploy.md makes,
    (exec_start,) = directive(text, "ExecStart")
    assert exec_start.startswith(f"{INSTALLED} run --config /etc/fanout-worker/config.toml")
    # it is Type=notify because the worker speaks sd_notify (no note says otherwise),
    assert directive(text, "Type") == ["notify"]
    notify = (ROOT / "worker" / "observe" / "notify.py").read_text()
    assert all(m in notify for m in ('"READY=1"', '"WATCHDOG=1"', '"STOPPING=1"'))
    assert "not implemented" not in text and "needs sd_notify support" not in text
    # it waits longer than the drain before SIGKILL,
    (stop,) = directive(text, "TimeoutStopSec")
    assert float(stop.removesuffix("s")) > PipelineSettings().shutdown_deadline_seconds
    # and every variable it sets is a setting (or Python's own).
    for line in directive(text, "Environment"):
        for name_ in re.findall(r"(\w+)=", line):
            assert name_.startswith("PYTHON") or name_ in settings_env_names()
