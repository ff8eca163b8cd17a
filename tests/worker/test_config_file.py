"""config.toml is the documented default: it loads to exactly the defaults, and it documents every
key of the settings model and no other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from worker.settings import Settings, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def _dump(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="json") | {
        "secrets": [settings.mongo.uri.get_secret_value(), settings.redis.url.get_secret_value()]
    }


def model_keys(model: type[BaseModel], path: str = "") -> set[str]:
    """Every dotted key of the model; the keys of a list of tables are ``section.key[].field``."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{path}{name}.")
            continue
        items = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if items:
            keys |= model_keys(items[0], f"{path}{name}[].")
        else:
            keys.add(f"{path}{name}")
    return keys


def _toml_keys(table: dict[str, Any], path: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= _toml_keys(value, f"{path}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for row in value:
                keys |= _toml_keys(row, f"{path}{name}[].")
        else:
            keys.add(f"{path}{name}")
    return keys


def documented_keys(text: str) -> set[str]:
    """The keys config.toml sets, and the optional ones it shows commented out (``# key = ...``)."""
    keys = _toml_keys(tomllib.loads(text))
    section = ""
    for line in text.splitlines():
        if header := re.match(r"^\[\[?([a-z_.]+)\]\]?", line):
            section = header.group(1) + ("[]." if line.startswith("[[") else ".")
        elif commented := re.match(r"^#\s*([a-z_]+)\s*=", line):
            keys.add(section + commented.group(1))
    return keys


def test_config_toml_holds_exactly_the_defaults() -> None:
    assert _dump(load_settings(CONFIG)) == _dump(Settings())


def test_every_setting_in_config_toml_has_a_comment() -> None:
    for number, line in enumerate(CONFIG.read_text().splitlines(), 1):
        if re.match(r"^\s*[a-z_]+\s*=", line):
            assert "#" in line.split("=", 1)[1], f"config.toml:{number} has no comment: {line}"


def test_config_toml_documents_every_key_of_the_model_and_no_other() -> None:
    # Given the keys of the settings model and the keys config.toml shows
    model, documented = model_keys(Settings), documented_keys(CONFIG.read_text())
    # Then neither has a key the other lacks, and a failure names them
    assert not model - documented, f"settings missing from config.toml: {sorted(model - documented)}"
    assert not documented - model, f"keys in config.toml that are not settings: {sorted(documented - model)}"


def test_the_key_comparison_notices_a_key_missing_either_way() -> None:
    # Given config.toml with one key removed and one key the model does not have
    text = CONFIG.read_text().replace("author_burst = 20", "author_burts = 20")
    documented = documented_keys(text)
    model = model_keys(Settings)
    # Then both differences show
    assert model - documented == {"fanout.author_burst"}
    assert documented - model == {"fanout.author_burts"}
