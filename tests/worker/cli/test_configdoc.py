"""docs/config.md is generated from the settings model: it must match, and it must cover any section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

import pytest
from pydantic import BaseModel, Field, SecretStr

from worker.cli.configdoc import REGENERATE, reference
from worker.cli.main import main
from worker.settings import Section, Settings, env_names

DOC = Path(__file__).resolve().parents[3] / "docs" / "config.md"


def _fields(model: type[BaseModel], path: str = "") -> list[tuple[str, str | None]]:
    """(dotted key, description) of every field below the sections, lists of tables included."""
    out: list[tuple[str, str | None]] = []
    for key, info in model.model_fields.items():
        kinds = [info.annotation, *get_args(info.annotation)]
        nested = next((t for t in kinds if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if path:  # a section itself may go without one: its docstring heads its table
            out.append((f"{path}{key}", info.description))
        if nested is not None:
            out += _fields(nested, f"{path}{key}.")
    return out


def test_docs_config_md_is_the_reference_the_model_renders_today() -> None:
    # Given the reference rendered from the settings model now
    rendered = reference()
    # Then docs/config.md holds exactly that, or the failure says how to regenerate it
    assert DOC.read_text(encoding="utf-8") == rendered, (
        f"docs/config.md is out of date with the settings model: run `{REGENERATE}` and commit it"
    )


def test_every_setting_has_a_one_line_description() -> None:
    missing = [key for key, text in _fields(Settings) if not (text and text.strip())]
    assert not missing, f"settings without Field(description=...): {missing}"
    multi = [key for key, text in _fields(Settings) if text and "\n" in text]
    assert not multi, f"descriptions over one line: {multi}"


def test_every_setting_appears_with_its_environment_variable() -> None:
    doc = reference()
    for section, info in Settings.model_fields.items():
        for key in getattr(info.annotation, "model_fields", {}):
            assert f"| `{key}` | `FANOUT_{section.upper()}__{key.upper()}`" in doc, f"{section}.{key}"


def test_no_secret_default_is_shown() -> None:
    # Given the defaults, which hold a password (guest) in the AMQP URL and hosts in the others
    doc = reference()
    # Then no secret's value appears, not even masked
    for secret in (Settings().rabbitmq.url, Settings().redis.url, Settings().mongo.uri):
        assert secret.get_secret_value() not in doc
    assert "guest" not in doc
    assert doc.count("*secret: not shown*") == 3


class _Step(BaseModel):
    name: str = Field(min_length=1, description="Step name.")
    every_seconds: float = Field(5.0, gt=0, le=60, description="Seconds between steps.")


class _Inner(BaseModel):
    """An inner section."""

    depth: int = Field(3, ge=1, description="How deep.")


class _NewSection(BaseModel):
    """``[lifecycle]``: a section another module adds with one line."""

    mode: Literal["a", "b"] = Field("a", description="Which mode.")
    token: SecretStr = Field(SecretStr("hunter2"), description="A credential.")
    inner: _Inner = Field(default_factory=_Inner, description="Nested options.")
    steps: list[_Step] = Field(default_factory=lambda: [_Step(name="one")], description="The steps.")


class _Bare(Section):
    on: bool = Field(True, description="Whether it is on.")


class _Extended(Settings):
    lifecycle: _NewSection = _NewSection()
    bare: _Bare = _Bare()


def test_a_new_section_appears_without_a_change_to_the_generator() -> None:
    # Given a settings model with one more section, holding a nested section and a list of tables
    doc = reference(_Extended)
    # Then its tables appear, with environment names, types, bounds and the field descriptions
    assert "## `[lifecycle]`" in doc
    assert "A section another module adds with one line." in doc
    assert '| `mode` | `FANOUT_LIFECYCLE__MODE` | "a" \\| "b" | `"a"` |  | Which mode. |' in doc
    assert "## `[lifecycle.inner]`" in doc
    assert "| `depth` | `FANOUT_LIFECYCLE__INNER__DEPTH` | integer | `3` | ≥ 1 | How deep. |" in doc
    assert "| `steps` | `FANOUT_LIFECYCLE__STEPS` (JSON) | list of `[[lifecycle.steps]]` tables |" in doc
    assert "## `[[lifecycle.steps]]`" in doc
    assert "| `every_seconds` | — | number | `5.0` | > 0, ≤ 60 | Seconds between steps. |" in doc
    assert "hunter2" not in doc
    # and a section without a docstring of its own gets none from its base class
    bare = doc.split("## `[bare]`", 1)[1]
    assert bare.lstrip().startswith("| key |"), bare[:200]


def test_config_reference_prints_the_reference_whatever_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an environment that would make loading the settings fail
    monkeypatch.setenv("FANOUT_PIPELINE__CHUNK_SIZE", "-1")
    # When the reference is asked for
    code = main(["config", "reference"])
    # Then it prints the reference: it reads the model, not the settings
    assert code == 0
    assert capsys.readouterr().out == reference()


def test_every_variable_the_reference_names_is_accepted_and_no_other_exists() -> None:
    # Given the variables named in the reference's environment column
    named = set(re.findall(r"\| `(FANOUT_[A-Z0-9_]+)`", reference()))
    # Then the loader accepts each of them, and every per-key variable it accepts is documented
    accepted = set(env_names())
    assert named <= accepted, sorted(named - accepted)
    per_key = {name for name in accepted if "__" in name}
    assert per_key <= named, sorted(per_key - named)
