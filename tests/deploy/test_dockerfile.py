"""Dockerfile: hadolint clean (pinned base and packages among its rules), and what it sets agrees
with the settings model and the health listener."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.deploy.support import ROOT, health_paths, settings_env_names
from tests.support.tools import require_tool
from worker.settings import HealthSettings

DOCKERFILE = ROOT / "Dockerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_is_clean() -> None:
    # Given the Dockerfile as shipped, When hadolint lints it, Then it reports nothing.
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_catches_an_unpinned_package(tmp_path: Path) -> None:
    # Given a copy whose apt package has lost its version pin,
    copy = tmp_path / "Dockerfile"
    copy.write_text(re.sub(r"tini=\S+", "tini", DOCKERFILE.read_text()))
    # When hadolint lints it, Then it fails with the pinning rule.
    result = hadolint(copy)
    assert result.returncode != 0
    assert "DL3008" in result.stdout


def test_base_image_is_pinned_to_a_full_version() -> None:
    # Given the base image argument, Then it names a patch release, never a moving tag.
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert image is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image.group(1))


def test_env_port_and_healthcheck_agree_with_the_settings() -> None:
    text = DOCKERFILE.read_text()
    # Given every FANOUT_ variable the image sets, Then the settings model accepts each one.
    names = set(re.findall(r"\b(FANOUT_[A-Z0-9_]+)=", text))
    assert names and names <= settings_env_names()
    # Then it exposes the health port and the HEALTHCHECK probes liveness there.
    port = HealthSettings().port
    assert re.search(rf"^EXPOSE {port}$", text, flags=re.M)
    probe = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z]+)", text)
    assert probe is not None
    assert int(probe.group(1)) == port
    assert probe.group(2) == "/healthz" and probe.group(2) in health_paths()
