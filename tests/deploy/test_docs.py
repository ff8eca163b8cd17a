"""One source of truth for what a newcomer reads in several places: the install path (the systemd
unit's), the minimum versions (docs/deploy.md's compatibility table, pyproject.toml's bounds) and
the MongoDB role (docs/deploy.md's, against every collection the settings name)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.deploy.support import ROOT
from worker.backfill_settings import BackfillSettings
from worker.settings import MongoSettings

DEPLOY_MD = ROOT / "docs" / "deploy.md"


def prose() -> dict[Path, str]:
    files = [ROOT / "README.md", ROOT / "config.toml", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "systemd").iterdir())
    return {path: path.read_text() for path in files}


def test_every_install_path_is_the_units_venv() -> None:
    # Given the install the systemd unit runs,
    unit = (ROOT / "systemd" / "fanout-worker.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(\S+)", unit, flags=re.M)
    venv = exec_start.removesuffix("/bin/fanout-worker")
    # Then every venv made and every executable run under /opt in the docs is that one.
    for path, text in prose().items():
        for made in re.findall(r"python3? -m venv (\S+)", text):
            assert made == venv, path
        for used in re.findall(r"(/opt/fanout-worker/\S*?)/bin/", text):
            assert used == venv, path


def compatibility() -> dict[str, str]:
    """{component: its minimum} from the compatibility table of docs/deploy.md."""
    section = DEPLOY_MD.read_text().split("## Compatibility", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([\w.-]+) \| ([^|]+) \|", section, flags=re.M)
    minimum = {}
    for component, required in rows:
        found = re.search(r"≥ ([0-9][0-9.]*)", required)
        if found:
            minimum[component] = found.group(1)
    return minimum


def test_every_stated_minimum_version_is_the_compatibility_tables() -> None:
    table = compatibility()
    assert {"Python", "Redis", "RabbitMQ", "PyMongo", "aio-pika"} <= set(table)
    # Given every "X ≥ n" (or ">=") the docs, the config and the units state,
    for path, text in prose().items():
        for component, version in re.findall(
            r"\b(Python|Redis|RabbitMQ|PyMongo|aio-pika) *(?:≥|>=) *([0-9][0-9.]*)", text
        ):
            # Then it is the table's minimum.
            assert version == table[component], f"{path.name}: {component} ≥ {version}"


def test_the_tables_library_minimums_are_pyprojects() -> None:
    # Given pyproject.toml, Then the table's Python and library minimums are its bounds.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    table = compatibility()
    assert project["requires-python"] == f">={table['Python']}"
    bounds = {re.split(r"[\[<>=]", dep, maxsplit=1)[0]: dep for dep in project["dependencies"]}
    for component, package in (("PyMongo", "pymongo"), ("aio-pika", "aio-pika"), ("redis-py", "redis")):
        assert f">={table[component]}" in bounds[package], component


def documented_role() -> tuple[set[str], dict[str, set[str]]]:
    """(databases, {collection: actions}) of the createRole block in docs/deploy.md."""
    block = re.search(r"```js\n(use admin\ndb\.createRole.*?)```", DEPLOY_MD.read_text(), flags=re.S)
    assert block is not None, "docs/deploy.md has no createRole block"
    grants = re.findall(
        r'\{resource: \{db: "([^"]+)", collection: "([^"]+)"\}, actions: \[([^\]]*)\]\}', block.group(1)
    )
    return {db for db, _, _ in grants}, {coll: set(re.findall(r'"(\w+)"', acts)) for _, coll, acts in grants}


def collection_settings() -> dict[str, str]:
    """{field: collection} for every collection the settings name: [mongo]'s, and the backfills'."""
    defaults = MongoSettings()
    return {
        **{
            name: getattr(defaults, name)
            for name, field in MongoSettings.model_fields.items()
            if field.annotation is str and name != "database"
        },
        "backfill.collection": BackfillSettings().collection,
    }


def test_the_documented_role_covers_every_collection_the_worker_uses() -> None:
    # Given the documented role and every collection the settings name,
    databases, grants = documented_role()
    collections = collection_settings()
    # Then the role grants on exactly those collections, in the worker's database,
    assert databases == {MongoSettings().database}
    assert set(grants) == set(collections.values())
    # change streams on the two streamed collections,
    for field in ("posts", "profiles"):
        assert {"find", "changeStream"} <= grants[collections[field]]
    # and writes on every collection the worker writes: all but the two it only reads.
    read_only = {collections["profiles"], collections["follows"]}
    for collection, actions in grants.items():
        writes = actions & {"insert", "update", "remove"}
        assert bool(writes) == (collection not in read_only), collection
    assert {"insert", "update"} <= grants[collections["leases"]]


def test_the_env_example_points_at_the_role_instead_of_repeating_it() -> None:
    example = (ROOT / "systemd" / "fanout-worker.env.example").read_text()
    assert "fanoutWorker" in example
    assert not re.search(r"\bfanout_(checkpoints|dead_letters|gaps|leases)\b", example)


def test_the_changelog_names_the_current_version_as_its_newest_release() -> None:
    from worker import __version__

    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", changelog, flags=re.M)
    # Given Keep a Changelog's headings, Then an Unreleased section comes first, the newest release
    # is the package's version, and releases run newest first.
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{releases[0][0]}]")
    assert releases[0][0] == __version__
    versions = [tuple(int(n) for n in v.split(".")) for v, _ in releases]
    assert versions == sorted(versions, reverse=True)
