"""One settings model: ``config.toml`` overridden by ``FANOUT_*`` environment variables.

Nested fields use ``__``: ``FANOUT_RABBITMQ__URL`` sets ``rabbitmq.url``. URLs are SecretStr so
credentials never reach a repr, a log line or ``fanout-worker config``; they are validated (scheme,
host, port, the client library's own parser) when the settings load. A ``FANOUT_`` variable that
names no setting is refused, except those under ``IGNORED_ENV_PREFIXES``. Numbers are strict: a
boolean is not a number.

The sections live beside it (service_settings.py, runtime_settings.py, topology_settings.py); a new
section is a model in its own module and one field below. Every field carries a one-line
``description``: docs/config.md is generated from them (``fanout-worker config reference``).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from enrichment.errors import ConfigError
from worker.backfill_settings import BackfillSettings
from worker.lifecycle_settings import PostLifecycleSettings
from worker.runtime_settings import (
    CacheSettings,
    FanoutSettings,
    HealthSettings,
    LeaderSettings,
    LogSettings,
    PipelineSettings,
    Role,
)
from worker.service_settings import MongoSettings, RabbitSettings, RedisSettings, Section
from worker.topology_settings import TopologySettings

__all__ = [
    "CacheSettings",
    "FanoutSettings",
    "HealthSettings",
    "LeaderSettings",
    "LogSettings",
    "MongoSettings",
    "PipelineSettings",
    "RabbitSettings",
    "RedisSettings",
    "Role",
    "Section",
    "Settings",
    "TopologySettings",
    "load_settings",
]

ENV_PREFIX = "FANOUT_"
# FANOUT_ variables that are not settings: the test suite's (service URLs, fault durations).
IGNORED_ENV_PREFIXES = ("FANOUT_TEST_", "FANOUT_FAULT_")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FANOUT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    mongo: MongoSettings = MongoSettings()
    redis: RedisSettings = RedisSettings()
    rabbitmq: RabbitSettings = RabbitSettings()
    cache: CacheSettings = CacheSettings()
    pipeline: PipelineSettings = PipelineSettings()
    leader: LeaderSettings = LeaderSettings()
    health: HealthSettings = HealthSettings()
    topology: TopologySettings = TopologySettings()
    fanout: FanoutSettings = FanoutSettings()
    log: LogSettings = LogSettings()
    backfill: BackfillSettings = BackfillSettings()
    post_lifecycle: PostLifecycleSettings = PostLifecycleSettings()

    @model_validator(mode="after")
    def _job_exchange_is_its_own(self) -> Settings:
        if self.fanout.exchange == self.rabbitmq.exchange:
            raise ValueError("fanout.exchange (jobs) must differ from rabbitmq.exchange (messages)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the file. No .env or secrets-dir sources.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read ``path`` (TOML) and the environment. Raises ConfigError with one line naming the field."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found or not a file")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    check_environment(os.environ)
    # A subclass per call carries the file path, so nothing global is mutated.
    config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
    bound: type[Settings] = type("Settings", (Settings,), {"model_config": config})
    try:
        return bound(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # a FANOUT_<SECTION> (or list) variable that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else f"a {ENV_PREFIX} variable"
        raise ConfigError(f"environment variable {name}: not valid JSON") from None


def env_names() -> list[str]:
    """Every variable that sets something: FANOUT_<SECTION> (JSON), FANOUT_<SECTION>__<KEY>, and
    FANOUT_<SECTION>__<SUB>__<KEY> for a section nested in a section (docs/config.md lists them)."""
    return _names(Settings.model_fields, ENV_PREFIX)


def _names(fields: dict[str, Any], head: str) -> list[str]:
    names = []
    for key, info in fields.items():
        names.append(f"{head}{key.upper()}")
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names += _names(nested.model_fields, f"{head}{key.upper()}__")
    return names


def check_environment(environ: Any) -> None:
    """Refuse a FANOUT_ variable that names no setting (a typo would be ignored otherwise)."""
    valid = env_names()
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(IGNORED_ENV_PREFIXES) or upper in valid:
            continue
        close = difflib.get_close_matches(upper, valid, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see config.toml for the settings"
        raise ConfigError(f"environment variable {name} names no setting{hint}")


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    # Never echo the input: it may be a URL with a password in it.
    return f"invalid setting {field}: {message}{more}"
