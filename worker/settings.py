"""One settings model: ``config.toml`` overridden by ``FANOUT_*`` environment variables.

Nested fields use ``__``: ``FANOUT_RABBITMQ__URL`` sets ``rabbitmq.url``. URLs are SecretStr so
credentials never reach a repr, a log line or ``fanout-worker config``; they are validated (scheme,
host, port, the client library's own parser) when the settings load. A ``FANOUT_`` variable that
names no setting is refused, except those under ``IGNORED_ENV_PREFIXES``. Numbers are strict: a
boolean is not a number.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from enrichment.errors import ConfigError
from worker import uris
from worker.lifecycle_settings import PostLifecycleSettings
from worker.topology_settings import TopologySettings, check_name, no_bool_numbers

ENV_PREFIX = "FANOUT_"
# FANOUT_ variables that are not settings: the test suite's (service URLs, fault durations).
IGNORED_ENV_PREFIXES = ("FANOUT_TEST_", "FANOUT_FAULT_")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return no_bool_numbers(cls, value, info)


def _uri(check: Any, value: SecretStr) -> SecretStr:
    try:
        check(value.get_secret_value())
    except ValueError as exc:
        raise ValueError(str(exc)) from None  # the message names the problem, never the URI
    return value


class MongoSettings(_Section):
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017/?replicaSet=rs0")
    database: str = Field("social", min_length=1)
    posts: str = Field("posts", min_length=1)
    profiles: str = Field("profiles", min_length=1)
    follows: str = Field("follows", min_length=1)
    checkpoints: str = Field("fanout_checkpoints", min_length=1)
    dead_letters: str = Field("fanout_dead_letters", min_length=1)
    gaps: str = Field("fanout_gaps", min_length=1)
    leases: str = Field("fanout_leases", min_length=1)
    server_selection_timeout_ms: int = Field(10_000, gt=0)
    max_await_time_ms: int = Field(1_000, gt=0, le=60_000)
    change_batch_size: int = Field(500, gt=0)
    follower_batch_size: int = Field(1_000, gt=0)
    # What a change event over the server's 16 MB limit does: "split" reassembles the fragments of
    # $changeStreamSplitLargeEvent (MongoDB 7.0+, 6.0.9+) and fails like "fail" on older servers;
    # "fail" stops the worker (exit 4); "skip" lets it through without its document, dead-lettered.
    large_events: Literal["split", "fail", "skip"] = "split"

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_mongo, value)


class RedisSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    key_prefix: str = "fanout:"
    ttl_seconds: int = Field(3_600, gt=0)
    ttl_jitter: float = Field(0.1, ge=0, lt=1)
    negative_ttl_seconds: int = Field(30, gt=0)
    socket_timeout_seconds: float = Field(0.5, gt=0)
    max_connections: int = Field(32, gt=1, le=10_000)
    pool_wait_seconds: float = Field(0.5, gt=0, le=60)
    breaker_threshold: int = Field(3, gt=0)
    breaker_cooldown_seconds: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_redis, value)


class RabbitSettings(_Section):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    exchange: str = Field("social.fanout", min_length=1)
    publish_window: int = Field(256, gt=0, le=65_535)
    confirm_timeout_seconds: float = Field(10.0, gt=0)
    reconnect_max_seconds: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_amqp, value)


class CacheSettings(_Section):
    l1_max_entries: int = Field(100_000, gt=0)
    l1_ttl_seconds: float = Field(60.0, gt=0)
    l1_negative_ttl_seconds: float = Field(10.0, gt=0)


class PipelineSettings(_Section):
    batch_max_events: int = Field(200, gt=0, le=10_000)
    batch_max_wait_ms: int = Field(20, ge=0, le=10_000)
    max_in_flight_events: int = Field(1_000, gt=0)
    chunk_size: int = Field(1_000, gt=0, le=50_000)
    rewrite_concurrency: int = Field(16, gt=0, le=1_000)
    max_text_bytes: int = Field(256 * 1024, gt=0)
    max_attempts: int = Field(5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    checkpoint_interval_seconds: float = Field(1.0, gt=0)
    shutdown_deadline_seconds: float = Field(30.0, gt=0)
    on_history_lost: Literal["fail", "resume-from-now"] = "fail"
    first_start_lookback_seconds: float = Field(5.0, ge=0, le=3600)


class LeaderSettings(_Section):
    enabled: bool = True
    name: str = Field("fanout-worker", min_length=1)
    ttl_seconds: float = Field(15.0, gt=0)
    renew_interval_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _renew_well_within_ttl(self) -> LeaderSettings:
        if self.renew_interval_seconds * 2 >= self.ttl_seconds:
            raise ValueError("renew_interval_seconds must be less than half of ttl_seconds")
        return self


class HealthSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: exposing the listener is a decision (the container sets 0.0.0.0)
    port: int = Field(9464, ge=0, le=65535)
    watchdog_seconds: float = Field(60.0, gt=0)


class LogSettings(_Section):
    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "text", "json"] = "auto"
    summary_interval_seconds: float = Field(60.0, ge=0)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


Role = Literal["all", "tailer", "fanout"]


class FanoutSettings(_Section):
    """``[fanout]``: the job queues between the tailer and the fan-out workers (worker/messaging/jobs)."""

    # What this process runs: "tailer" (the lease, both streams, enrichment, the profile cascade;
    # emits jobs), "fanout" (consumes jobs, publishes chunks; any number of them) or "all" (both).
    role: Role = "all"
    declare: bool = True
    exchange: str = Field("fanout.jobs", min_length=1)
    ordinary_queue: str = Field("fanout.jobs.ordinary", min_length=1)
    bulk_queue: str = Field("fanout.jobs.bulk", min_length=1)
    deferred_queue: str = Field("fanout.jobs.deferred", min_length=1)
    dead_letter_exchange: str = Field("fanout.jobs.dlx", min_length=1)
    dead_letter_queue: str = Field("fanout.jobs.dead", min_length=1)
    ordinary_prefetch: int = Field(32, gt=0, le=65_535)
    bulk_prefetch: int = Field(2, gt=0, le=65_535)
    range_size: int = Field(10_000, gt=0, le=10_000_000)
    delivery_limit: int = Field(5, gt=0, le=1_000)
    defer_seconds: float = Field(30.0, gt=0, le=86_400)
    author_posts_per_second: float = Field(0.0, ge=0)  # 0: no per-author limit
    author_burst: int = Field(20, gt=0)

    @field_validator(
        "exchange",
        "ordinary_queue",
        "bulk_queue",
        "deferred_queue",
        "dead_letter_exchange",
        "dead_letter_queue",
    )
    @classmethod
    def _names(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _distinct(self) -> FanoutSettings:
        queues = [self.ordinary_queue, self.bulk_queue, self.deferred_queue, self.dead_letter_queue]
        if len(set(queues)) < len(queues) or self.exchange == self.dead_letter_exchange:
            raise ValueError("the job queues, and the job exchange and its dead-letter exchange, must differ")
        return self


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
    """Every variable that sets something: FANOUT_<SECTION> (JSON) and FANOUT_<SECTION>__<KEY>."""
    names = []
    for section, info in Settings.model_fields.items():
        names.append(f"{ENV_PREFIX}{section.upper()}")
        fields = getattr(info.annotation, "model_fields", {})
        names += [f"{ENV_PREFIX}{section.upper()}__{key.upper()}" for key in fields]
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
