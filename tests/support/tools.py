"""The command-line tools tests run (promtool, hadolint, check-jsonschema, systemd-analyze).

Like a service: a missing tool fails the test in CI (``CI`` true) and skips it locally, with the
way to install it. ``scripts/ensure-services.sh`` installs the system tools, ``make venv`` the
Python ones.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_tool(name: str) -> str:
    """The tool's path (the virtualenv's bin first). Missing: a failure in CI, a skip locally."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    reason = (
        f"{name} is not installed: run scripts/ensure-services.sh (promtool, systemd-analyze) "
        "or `make venv` (Python tools)"
    )
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)
