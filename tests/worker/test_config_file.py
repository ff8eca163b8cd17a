"""config.toml is the documented default: it loads to exactly the defaults, and every key is explained."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from worker.settings import Settings, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def _dump(settings: Settings) -> dict:
    return settings.model_dump(mode="json") | {
        "secrets": [settings.mongo.uri.get_secret_value(), settings.redis.url.get_secret_value()]
    }


def test_config_toml_holds_exactly_the_defaults() -> None:
    assert _dump(load_settings(CONFIG)) == _dump(Settings())


def test_every_setting_in_config_toml_has_a_comment() -> None:
    for number, line in enumerate(CONFIG.read_text().splitlines(), 1):
        if re.match(r"^\s*[a-z_]+\s*=", line):
            assert "#" in line.split("=", 1)[1], f"config.toml:{number} has no comment: {line}"


def test_every_section_of_the_settings_appears_in_config_toml() -> None:
    sections = set(tomllib.loads(CONFIG.read_text()))
    assert sections == set(Settings.model_fields)
