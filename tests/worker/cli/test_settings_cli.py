"""Settings loading, the CLI's configuration errors (exit 2, one line) and credential redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from enrichment.errors import ConfigError
from worker import __version__
from worker.cli.main import EXIT_CONFIG, main
from worker.observe.logs import redact
from worker.settings import IGNORED_ENV_PREFIXES, Settings, load_settings

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


BAD_URIS = [
    # (variable, value, the secret in it)
    ("FANOUT_MONGO__URI", "http://app:pw-scheme@db/", "pw-scheme"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw-nohost@/", "pw-nohost"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw-port@db:99999/", "pw-port"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw#hash@db/", "pw#hash"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw/slash@db/", "pw/slash"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw?q@db/", "pw?q"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw@at@db/", "pw@at"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw:colon@db/", "pw:colon"),
    ("FANOUT_MONGO__URI", "mongodb://db/?password=pw-param", "pw-param"),
    ("FANOUT_MONGO__URI", "mongodb://app:pw-typo@db/?replicaSett=rs0", "pw-typo"),
    ("FANOUT_MONGO__URI", "mongodb+srv://app:pw-srv@db:27017/", "pw-srv"),
    ("FANOUT_MONGO__URI", "mongodb+srv://app:pw-srv2@a.example,b.example/", "pw-srv2"),
    ("FANOUT_MONGO__URI", "app:pw-noscheme@db:27017", "pw-noscheme"),
    ("FANOUT_REDIS__URL", "redis://:pw#hash@cache:6379/0", "pw#hash"),
    ("FANOUT_REDIS__URL", "redis://:pw-port@cache:0/0", "pw-port"),
    ("FANOUT_REDIS__URL", "redis://:pw-db@cache/zero", "pw-db"),
    ("FANOUT_REDIS__URL", "http://:pw-scheme@cache/0", "pw-scheme"),
    ("FANOUT_REDIS__URL", "redis://:pw-q@cache/0?socket_timeout=soon", "pw-q"),
    ("FANOUT_RABBITMQ__URL", "amqp://u:pw-port@mq:70000/", "pw-port"),
    ("FANOUT_RABBITMQ__URL", "amqp://u:pw#hash@mq/", "pw#hash"),
    ("FANOUT_RABBITMQ__URL", "amqp://u:12#34@mq/", "12#34"),  # would parse as port 12 elsewhere
    ("FANOUT_RABBITMQ__URL", "amqp://u:pw/slash@mq/", "pw/slash"),
    ("FANOUT_RABBITMQ__URL", "http://u:pw-scheme@mq/", "pw-scheme"),
    ("FANOUT_RABBITMQ__URL", "amqp://u:pw space@mq/", "pw space"),
    ("FANOUT_RABBITMQ__URL", "amqp://u:pw-nohost@/", "pw-nohost"),
]


@pytest.mark.parametrize(("variable", "value", "secret"), BAD_URIS)
def test_a_malformed_uri_is_one_line_naming_the_field_never_the_uri(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    secret: str,
) -> None:
    monkeypatch.setenv(variable, value)
    line = run_failing(write(tmp_path, ""), capsys)
    field = variable.removeprefix("FANOUT_").replace("__", ".").lower()
    assert f"invalid setting {field}:" in line
    assert secret not in line
    assert value not in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (
            "FANOUT_MONGO__URI",
            "mongodb://app:p%40ss@db1:27017,db2:27018/social?replicaSet=rs0&authSource=admin",
        ),
        ("FANOUT_MONGO__URI", "mongodb+srv://app:pw@cluster.example/?tlsCertificateKeyFilePassword=k"),
        ("FANOUT_MONGO__URI", "mongodb://[::1]:27017/"),
        ("FANOUT_REDIS__URL", "rediss://user:pw@cache:6380/3"),
        ("FANOUT_REDIS__URL", "unix:///run/redis/redis.sock?db=2"),
        ("FANOUT_RABBITMQ__URL", "amqps://u:p%23w@mq:5671/social?heartbeat=30"),
    ],
)
def test_valid_uris_of_every_accepted_form_load(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    settings = load_settings(None)
    section, key = variable.removeprefix("FANOUT_").lower().split("__")
    assert getattr(getattr(settings, section), key).get_secret_value() == value


def test_an_unknown_fanout_variable_is_refused_with_the_closest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a typo in a variable's section
    monkeypatch.setenv("FANOUT_PIPELIN__CHUNK_SIZE", "7")
    # Then start-up stops, naming it and the name meant
    line = run_failing(write(tmp_path, ""), capsys)
    assert "FANOUT_PIPELIN__CHUNK_SIZE" in line
    assert "did you mean FANOUT_PIPELINE__CHUNK_SIZE?" in line


def test_the_test_suites_own_variables_are_not_settings_and_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for prefix in IGNORED_ENV_PREFIXES:
        monkeypatch.setenv(f"{prefix}SOMETHING", "x")
    assert load_settings(None).model_dump(mode="json") == Settings().model_dump(mode="json")


def test_a_bad_json_section_variable_is_blamed_on_the_variable_not_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_PIPELINE", "{chunk_size: 5")
    line = run_failing(write(tmp_path, ""), capsys)
    assert "environment variable FANOUT_PIPELINE: not valid JSON" in line
    assert "config file" not in line


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[pipeline]\nchunk_size = true\n", "pipeline.chunk_size"),
        ("[redis]\nttl_jitter = false\n", "redis.ttl_jitter"),
        ("[mongo]\nmax_await_time_ms = true\n", "mongo.max_await_time_ms"),
        (
            '[[topology.queues]]\nname = "q"\nbindings = ["k"]\nmessage_ttl_ms = true\n',
            "topology.queues.0.message_ttl_ms",
        ),
    ],
)
def test_a_boolean_is_not_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, field: str
) -> None:
    line = run_failing(write(tmp_path, toml), capsys)
    assert f"invalid setting {field}: must be a number, not true or false" in line


def test_config_output_is_toml_that_loads_back_to_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given settings with custom queues (an array of tables, optional fields set and unset)
    source = write(
        tmp_path,
        '[pipeline]\nchunk_size = 7\non_history_lost = "resume-from-now"\n'
        '[redis]\nkey_prefix = "a \\"quoted\\" \\\\ prefix"\n'
        '[[topology.queues]]\nname = "q.one"\nbindings = ["post.*", "profile.updated"]\n'
        'dead_letter_exchange = "dlx"\nmessage_ttl_ms = 60000\n'
        '[[topology.queues]]\nname = "q.two"\nbindings = ["post.created"]\ntype = "classic"\n'
        "durable = false\n",
    )
    monkeypatch.setenv("FANOUT_RABBITMQ__URL", f"amqp://u:{SECRET}@mq:5672/vh")
    assert main(["config", "--config", str(source)]) == 0
    printed = capsys.readouterr().out
    assert SECRET not in printed
    # When that output is the config file
    copy = tmp_path / "copy.toml"
    copy.write_text(printed)
    monkeypatch.delenv("FANOUT_RABBITMQ__URL")
    reloaded = load_settings(copy)
    # Then it holds the same settings (the password masked), and prints the same again
    original = load_settings(source).model_dump(mode="json")
    assert reloaded.model_dump(mode="json") == original
    assert reloaded.rabbitmq.url.get_secret_value() == "amqp://u:***@mq:5672/vh"
    assert main(["config", "--config", str(copy)]) == 0
    assert capsys.readouterr().out == printed


def test_config_output_of_the_defaults_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    copy = write(tmp_path, capsys.readouterr().out)
    assert load_settings(copy).model_dump(mode="json") == Settings().model_dump(mode="json")


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("FANOUT_MONGO__URI", f"mongodb://app:{SECRET}@db/?replicaSet=rs0", SECRET),
        ("FANOUT_MONGO__URI", "mongodb://db/?tlsCertificateKeyFilePassword=kp-s3cret&tls=true", "kp-s3cret"),
        ("FANOUT_REDIS__URL", "redis://:r-s3cret@cache:6379/0", "r-s3cret"),
        ("FANOUT_REDIS__URL", "redis://cache:6379/0?password=rq-s3cret", "rq-s3cret"),
        ("FANOUT_REDIS__URL", "rediss://u:p%23w-s3cret@cache/0", "p%23w-s3cret"),
        ("FANOUT_RABBITMQ__URL", "amqps://u:a-s3cret@mq:5671/", "a-s3cret"),
        ("FANOUT_RABBITMQ__URL", "amqp://mq/?token=t-s3cret", "t-s3cret"),
    ],
)
def test_config_masks_every_credential_form(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    secret: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["config"]) == 0
    out, err = capsys.readouterr()
    assert secret not in out + err
    assert "***" in out


@pytest.mark.parametrize(
    ("message", "uri"),
    [
        ("bad value s3cr3t-pw in option", "mongodb://u:s3cr3t-pw@h/"),
        ("bad value s3cr3t/pw in option", "mongodb://u:s3cr3t%2Fpw@h/"),  # decoded form too
        ("tls key tk-s3cret unreadable", "mongodb://h/?tlsCertificateKeyFilePassword=tk-s3cret"),
    ],
)
def test_a_library_message_is_scrubbed_of_the_uris_secrets(message: str, uri: str) -> None:
    from worker.uris import scrub

    scrubbed = scrub(message, uri)
    assert "s3cr3t" not in scrubbed and "tk-s3cret" not in scrubbed
    assert "***" in scrubbed


def test_checkpoint_show_names_host_port_and_cause_when_mongodb_is_unreachable(tmp_path: Path) -> None:
    # Given MongoDB on a closed port, with a password in the URI
    config = tmp_path / "c.toml"
    config.write_text(
        '[mongo]\nuri = "mongodb://u:s3cretpw@127.0.0.1:1/?replicaSet=rs0"\nserver_selection_timeout_ms = 300\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    # When the operator asks for the checkpoints (a real process: its exit code and its output)
    run = subprocess.run(
        [str(Path(sys.executable).with_name("fanout-worker")), "checkpoint", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    # Then one line says where and why, never the password or only a class name
    err = run.stderr.strip().splitlines()
    assert run.returncode == 3
    assert len(err) == 1, err
    assert "127.0.0.1:1" in err[0] and "connection refused" in err[0]
    assert "s3cretpw" not in run.stdout + run.stderr
