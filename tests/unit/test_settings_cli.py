"""Settings loading, the CLI's configuration errors (exit 2, one line) and credential redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enrichment.errors import ConfigError
from worker import __version__
from worker.cli import EXIT_CONFIG, main
from worker.logs import redact
from worker.settings import load_settings, redact_url

SECRET = "s3cr3t-pw"
SECRET_URL = f"amqp://u:{SECRET}@127.0.0.1:1/"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FANOUT_* variable of the machine running the tests may leak into them."""
    for name in list(os.environ):
        if name.upper().startswith("FANOUT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def run_failing(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``fanout-worker run --config path``; expect exit 2 and return its single stderr line."""
    code = main(["run", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == EXIT_CONFIG == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fanout-worker: ")
    return lines[0]


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        pytest.param("[pipeline]\nchunk_size = -1\n", "pipeline.chunk_size", id="negative-chunk-size"),
        pytest.param("[pipeline]\nchunk_size = 0\n", "pipeline.chunk_size", id="zero-chunk-size"),
        pytest.param("[pipeline]\nchunk_sise = 10\n", "pipeline.chunk_sise", id="unknown-key"),
        pytest.param("[nope]\nx = 1\n", "nope", id="unknown-section"),
        pytest.param('[pipeline]\nchunk_size = "many"\n', "pipeline.chunk_size", id="wrong-type"),
        pytest.param("[redis]\nttl_jitter = 1.5\n", "redis.ttl_jitter", id="out-of-range-float"),
        pytest.param('[log]\nlevel = "LOUD"\n', "log.level", id="bad-literal"),
        pytest.param("[mongo]\nuri = 5\n", "mongo.uri", id="uri-not-a-string"),
    ],
)
def test_an_invalid_setting_exits_2_with_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, field: str
) -> None:
    line = run_failing(write(tmp_path, toml), capsys)
    assert f"invalid setting {field}:" in line


def test_a_toml_syntax_error_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[pipeline]\nchunk_size = = 3\n")
    line = run_failing(path, capsys)
    assert str(path) in line
    assert "line 2" in line


def test_a_missing_file_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "absent.toml"
    line = run_failing(path, capsys)
    assert str(path) in line
    assert "not found" in line


def test_a_directory_as_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = run_failing(tmp_path, capsys)
    assert str(tmp_path) in line


def test_an_invalid_environment_override_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_PIPELINE__CHUNK_SIZE", "-3")
    line = run_failing(write(tmp_path, "[pipeline]\nchunk_size = 10\n"), capsys)
    assert "invalid setting pipeline.chunk_size:" in line


def test_the_environment_overrides_the_file_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file setting two pipeline fields
    path = write(tmp_path, "[pipeline]\nchunk_size = 10\nbatch_max_events = 50\n")
    # When the environment overrides one of them
    monkeypatch.setenv("FANOUT_PIPELINE__CHUNK_SIZE", "7")
    settings = load_settings(path)
    # Then the environment wins for that field and the file still provides the other
    assert settings.pipeline.chunk_size == 7
    assert settings.pipeline.batch_max_events == 50


def test_the_environment_can_replace_an_invalid_file_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_PIPELINE__CHUNK_SIZE", "7")
    settings = load_settings(write(tmp_path, "[pipeline]\nchunk_size = -1\n"))
    assert settings.pipeline.chunk_size == 7


def test_file_values_are_read(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, f'[rabbitmq]\nurl = "{SECRET_URL}"\n[pipeline]\nchunk_size = 12\n')
    )
    assert settings.pipeline.chunk_size == 12
    assert settings.rabbitmq.url.get_secret_value() == SECRET_URL


def test_load_settings_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.chunk_size"):
        load_settings(write(tmp_path, "[pipeline]\nchunk_size = -1\n"))


@pytest.mark.parametrize(
    "toml",
    [
        pytest.param(
            f'[rabbitmq]\nurl = "{SECRET_URL}"\n[pipeline]\nchunk_size = -1\n', id="other-field-invalid"
        ),
        pytest.param(f'[rabbitmq]\nurl = "{SECRET_URL}"\nexchange = ""\n', id="same-section-invalid"),
        pytest.param(f'[rabbitmq]\nurll = "{SECRET_URL}"\n', id="misspelt-key-holding-the-url"),
        pytest.param(f'[rabbitmq]\nurl = ["{SECRET_URL}"]\n', id="url-of-the-wrong-type"),
        pytest.param(f'[log]\nlevel = "{SECRET_URL}"\n', id="url-in-a-literal-field"),
        pytest.param(f'[rabbitmq]\nurl = "{SECRET_URL}"\nexchange = = 1\n', id="toml-syntax-error"),
    ],
)
def test_a_password_in_the_config_never_appears_in_a_failing_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str
) -> None:
    # Given a config holding a URL with a password, and an invalid field
    path = write(tmp_path, toml)
    # When the worker fails to start
    code = main(["run", "--config", str(path)])
    out, err = capsys.readouterr()
    # Then it exits 2 and the password is nowhere in its output
    assert code == 2
    assert err.strip()
    assert SECRET not in out
    assert SECRET not in err


def test_a_password_in_the_environment_never_appears_in_a_failing_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_MONGO__URI", f"mongodb://user:{SECRET}@db:27017/")
    monkeypatch.setenv("FANOUT_PIPELINE__CHUNK_SIZE", "nope")
    code = main(["run", "--config", str(write(tmp_path, ""))])
    out, err = capsys.readouterr()
    assert code == 2
    assert SECRET not in out + err


def test_settings_never_show_a_password(tmp_path: Path) -> None:
    # Given settings with a password in every URL
    path = write(
        tmp_path,
        f'[rabbitmq]\nurl = "{SECRET_URL}"\n'
        f'[mongo]\nuri = "mongodb://user:{SECRET}@db:27017/"\n'
        f'[redis]\nurl = "redis://:{SECRET}@cache:6379/0"\n',
    )
    settings = load_settings(path)
    # Then repr, str and a JSON dump hide them
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in repr(settings.rabbitmq)
    assert SECRET not in settings.model_dump_json()
    # While the values are there for the code that connects
    assert SECRET in settings.redis.url.get_secret_value()


def test_version_prints_the_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out, _ = capsys.readouterr()
    assert out.strip() == f"fanout-worker {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mongodb://user:pw@host", "mongodb://user:***@host"),
        ("mongodb://user:pw@host:27017/db?replicaSet=rs0", "mongodb://user:***@host:27017/db?replicaSet=rs0"),
        ("amqp://u:p@h/vh", "amqp://u:***@h/vh"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("mongodb+srv://app:pa:ss@cluster.example/", "mongodb+srv://app:***@cluster.example/"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://guest@h/", "amqp://guest@h/"),
        (
            "cannot reach amqp://u:one@a/ or mongodb://v:two@b/ now",
            "cannot reach amqp://u:***@a/ or mongodb://v:***@b/ now",
        ),
    ],
)
def test_redact_masks_url_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_leaves_plain_text_alone() -> None:
    text = "timeout after 3.5s: host:port unreachable (at 12:30:01)"
    assert redact(text) == text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://u:p@h:5672/vh", "amqp://u:***@h:5672/vh"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("mongodb://h:27017/", "mongodb://h:27017/"),
    ],
)
def test_redact_url_masks_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected
