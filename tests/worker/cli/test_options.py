"""The options every command takes (``--log-level``), and ``run`` started without a configuration."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrichment.errors import ConfigError
from worker.cli.main import EXIT_CONFIG, _parser, main, refuse_unconfigured_run
from worker.cli.options import say


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FANOUT_"):
            monkeypatch.delenv(name)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every complete command line: ``run``, ``config``, ``config reference``, ``checkpoint show``..."""
    for action in _subcommands(parser):
        for name, child in action.choices.items():
            if not any(sub.required for sub in _subcommands(child)):
                yield (*path, name)
            yield from _commands(child, (*path, name))


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def test_every_command_takes_log_level() -> None:
    # Given every command and sub-command of the parser
    commands = list(_commands(_parser()))
    assert ("checkpoint", "reset") in commands and ("config", "reference") in commands
    for command in commands:
        # When --log-level is given after it
        try:
            args = _parser().parse_args([*command, "--log-level", "debug", *_required(command)])
        except SystemExit as exc:  # pragma: no cover - the message names the command
            pytest.fail(f"`{' '.join(command)} --log-level` refused ({exc})")
        # Then it is read, in upper case
        assert args.log_level == "DEBUG", command


def _required(command: tuple[str, ...]) -> list[str]:
    required = {
        ("checkpoint", "reset"): ["--to", "now"],
        ("backfill",): ["--all-gaps"],
    }
    return required.get(command, [])


def test_log_level_overrides_the_configured_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a file asking for ERROR
    path = tmp_path / "config.toml"
    path.write_text('[log]\nlevel = "ERROR"\n')
    # When a command is given --log-level trace
    code = main(["config", "--config", str(path), "--log-level", "trace"])
    # Then the effective level is TRACE
    assert code == 0
    assert 'level = "TRACE"' in capsys.readouterr().out


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["check", "--log-level", "loud"])
    assert exit_.value.code == 2
    assert "TRACE, DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err


def test_run_without_config_or_mongodb_variables_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a directory with no config.toml and no FANOUT_ variable
    monkeypatch.chdir(tmp_path)
    # When run starts without --config
    code = main(["run"])
    # Then it refuses in one line naming both ways to configure it
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG == 2
    assert len(err.splitlines()) == 1, err
    assert "--config PATH" in err and "FANOUT_MONGO__URI" in err
    assert "there is one here" not in err


def test_run_without_config_points_at_the_config_toml_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a config.toml in the working directory, not passed
    (tmp_path / "config.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    # When run starts without --config, then it names the file to pass (and does not read it)
    assert main(["run"]) == 2
    assert "there is one here: --config config.toml" in capsys.readouterr().err


def test_run_configured_by_the_environment_alone_is_allowed(tmp_path: Path) -> None:
    # Given the environment naming MongoDB (a container configured by variables), no file
    refuse_unconfigured_run({"FANOUT_MONGO__URI": "mongodb://db/?replicaSet=rs0"}, tmp_path)
    refuse_unconfigured_run({"FANOUT_MONGO": '{"uri": "mongodb://db/"}'}, tmp_path)
    # Then nothing is refused; with only other variables, it is
    with pytest.raises(ConfigError, match="no configuration"):
        refuse_unconfigured_run({"FANOUT_REDIS__URL": "redis://cache/0"}, tmp_path)


def test_command_output_masks_credentials_a_stored_reason_may_quote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a dead letter's reason quoting a connection URI, When a command prints it
    say("not replayed 42: ServiceUnavailable: amqp://fanout:hunter2@mq.internal:5672/ refused")
    # Then the password never reaches the terminal, and the rest does
    out = capsys.readouterr().out
    assert "hunter2" not in out and "mq.internal" in out and "not replayed 42" in out
