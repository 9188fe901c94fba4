from __future__ import annotations

import importlib.metadata
import json
import secrets
import tomllib
import urllib.parse
from pathlib import Path

import anyio
import click
import msgspec
import pytest
import tomli_w
from click.testing import CliRunner
from rig import MESSENGERS, base_config

import amoconnect
from amoconnect.cli import main
from amoconnect.config import load_config
from amoconnect.store import opened_store
from amoconnect.store.base import NewJob
from amoconnect.testing.stores import postgres_url

ROOT = Path(__file__).parent.parent


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "amoconnect.toml"
    path.write_text(tomli_w.dumps(base_config(tmp_path)))
    return path


def test_plugins_json_lists_messengers_with_declarations() -> None:
    result = CliRunner().invoke(main, ["plugins", "--json", "--plugin-dir", str(MESSENGERS)])
    assert result.exit_code == 0, result.output
    plugins = json.loads(result.output)
    loopback = next(p for p in plugins if p["name"] == "loopback")
    assert {"name", "version", "hooks"} <= set(loopback)
    messengers = {m["name"]: m for m in loopback["messengers"]}
    assert "write_first" in messengers["loopback"]["capabilities"]
    assert messengers["windowed"]["reply_window"] == 86400
    text = CliRunner().invoke(main, ["plugins", "--plugin-dir", str(MESSENGERS)])
    assert "messenger windowed" in text.output


def test_config_error_is_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[channel]\nid = "x"\n')
    result = CliRunner().invoke(main, ["jobs", "list", "--config", str(bad)])
    assert result.exit_code == 1
    assert f"Error: {bad}: channel.secret: missing; it is required\n" == result.output


def _seed_dead_letters(config_file: Path, count: int = 2) -> None:
    async def seed() -> None:
        async with opened_store(load_config(config_file).store) as store:
            await store.enqueue([NewJob("amocrm", f"k{i}", b"{}", "s") for i in range(count)])
            for job in await store.claim(10):
                await store.bury(job.id, error="amojo answered HTTP 400")

    anyio.run(seed)


def test_jobs_list_retry_purge(config_file: Path) -> None:
    _seed_dead_letters(config_file)
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list", "--config", str(config_file), "--json"])
    data = json.loads(listed.output)
    assert data["counts"]["dead"] == 2
    assert data["dead"][0]["error"] == "amojo answered HTTP 400"
    assert runner.invoke(main, ["jobs", "retry", "--config", str(config_file)]).exit_code == 2
    retried = runner.invoke(main, ["jobs", "retry", "--config", str(config_file), str(data["dead"][0]["id"])])
    assert "re-queued 1 job(s)" in retried.output
    purged = runner.invoke(main, ["jobs", "purge", "--config", str(config_file), "--all", "--yes"])
    assert "purged 1 job(s)" in purged.output
    text = runner.invoke(main, ["jobs", "list", "--config", str(config_file)])
    assert "queued 1, running 0, dead 0" in text.output


@pytest.mark.parametrize(("command", "verb"), [("retry", "re-queued"), ("purge", "deleted")])
def test_jobs_retry_and_purge_refuse_unknown_ids_and_change_nothing(config_file: Path, command: str, verb: str) -> None:
    _seed_dead_letters(config_file)
    dead = json.loads(CliRunner().invoke(main, ["jobs", "list", "--config", str(config_file), "--json"]).output)
    known = dead["dead"][0]["id"]
    result = CliRunner().invoke(main, ["jobs", command, "--config", str(config_file), str(known), "998", "999"])
    assert result.exit_code == 1
    assert f"no dead letter #998, #999; nothing was {verb}" in result.output
    after = json.loads(CliRunner().invoke(main, ["jobs", "list", "--config", str(config_file), "--json"]).output)
    assert after["counts"] == dead["counts"]


def test_jobs_purge_all_asks_first(config_file: Path) -> None:
    _seed_dead_letters(config_file)
    runner = CliRunner()
    declined = runner.invoke(main, ["jobs", "purge", "--all", "--config", str(config_file)], input="n\n")
    assert "Delete all 2 dead letter(s) for good? [y/N]" in declined.output
    assert declined.exit_code == 1
    listed = json.loads(runner.invoke(main, ["jobs", "list", "--config", str(config_file), "--json"]).output)
    assert listed["counts"]["dead"] == 2
    accepted = runner.invoke(main, ["jobs", "purge", "--all", "--config", str(config_file)], input="y\n")
    assert accepted.exit_code == 0
    assert "purged 2 job(s)" in accepted.output


def test_check_offline_reports_unknown_plugins(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--offline", "--config", str(config_file)])
    assert result.exit_code == 1
    assert f"problem: {config_file}: sources[0].plugin: 'loopback' is not installed" in result.output


def test_run_refuses_an_unknown_plugin(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(config_file), "--plugin", "nosuch"])
    assert result.exit_code == 1
    assert "no messenger plugin named 'nosuch' is installed" in result.output


def test_migrate_on_sqlite_creates_the_store_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "store" / "amoconnect.sqlite3"
    config_file = tmp_path / "sqlite.toml"
    config_file.write_text(tomli_w.dumps({**base_config(tmp_path), "store": {"path": str(path)}}))
    result = CliRunner().invoke(main, ["migrate", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{path}: schema is up to date\n"  # SQLite migrates itself on open
    assert Path(path).exists()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


@pytest.mark.parametrize("path", [(), *_commands(main)], ids=lambda p: " ".join(p) or "amoconnect")
def test_every_command_answers_dash_h_with_an_example(path: tuple[str, ...]) -> None:
    short = CliRunner().invoke(main, [*path, "-h"])
    assert short.exit_code == 0, short.output
    assert short.output == CliRunner().invoke(main, [*path, "--help"]).output
    example = short.output.split("Example:\n", 1)[1]
    assert example.lstrip().startswith(" ".join(("amoconnect", *path)))
    assert "--log-level [debug|info|warning|error]" in short.output
    assert "--log-format [console|json]" in short.output


def test_version_lists_installed_plugins_and_their_versions() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith(f"amoconnect {amoconnect.__version__} (Python ")
    assert "plugins:" in lines
    for ep in importlib.metadata.entry_points(group="amoconnect"):
        assert f"  {ep.name} {ep.dist.version} ({ep.dist.name})" in lines  # type: ignore[union-attr]


def test_a_log_level_that_does_not_exist_is_refused_with_the_choices(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["jobs", "list", "--config", str(config_file), "--log-level", "verbose"])
    assert result.exit_code == 2
    assert "'verbose' is not one of 'debug', 'info', 'warning', 'error'" in result.output


def test_shell_completion_is_the_documented_one() -> None:
    result = CliRunner().invoke(main, [], prog_name="amoconnect", env={"_AMOCONNECT_COMPLETE": "bash_source"})
    assert "_amoconnect_completion()" in result.output
    assert 'eval "$(_AMOCONNECT_COMPLETE=bash_source amoconnect)"' in (ROOT / "docs" / "cli.md").read_text()


def test_init_writes_a_starter_that_check_takes_once_its_variables_are_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "amoconnect.toml"
    result = CliRunner().invoke(main, ["init", "--plugin", "fake", "--config", str(target)])
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert text.startswith("# amoconnect.toml, written by `amoconnect init`")
    assert 'plugin = "fake"' in text
    unset = CliRunner().invoke(main, ["check", "--offline", "--config", str(target), "--json"])
    assert unset.exit_code == 1
    missing = json.loads(unset.output)["problems"]
    assert [p.split("reads environment variable ")[1] for p in missing] == [
        "'AMOCONNECT_CHANNEL_ID', which is not set",
        "'AMOCONNECT_CHANNEL_SECRET', which is not set",
        "'AMOCRM_AMOJO_ID', which is not set",
        "'FAKE_TOKEN', which is not set",
        "'FAKE_SECRET', which is not set",
    ]
    for name, value in [
        ("AMOCONNECT_CHANNEL_ID", "11111111-2222-3333-4444-555555555555"),
        ("AMOCONNECT_CHANNEL_SECRET", "0123456789abcdef0123456789abcdef01234567"),
        ("AMOCRM_AMOJO_ID", "66666666-7777-8888-9999-000000000000"),
        ("FAKE_TOKEN", "a-token"),
        ("FAKE_SECRET", "a-secret"),
    ]:
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    checked = CliRunner().invoke(main, ["check", "--offline", "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output) == {"config": "amoconnect.toml", "ok": True, "problems": []}
    again = CliRunner().invoke(main, ["init", "--plugin", "fake", "--config", str(target)])
    assert again.exit_code == 1
    assert f"{target} exists; pass --force to overwrite it" in again.output


@pytest.mark.parametrize("plugin", ["telegram", "whatsapp", "vk"])
def test_init_describes_each_installed_plugin_s_settings(tmp_path: Path, plugin: str) -> None:
    from amoconnect.plugins import collect_messengers, get_plugin_manager

    target = tmp_path / f"{plugin}.toml"
    assert CliRunner().invoke(main, ["init", "--plugin", plugin, "--config", str(target)]).exit_code == 0
    data = tomllib.loads(target.read_text())
    schema = collect_messengers(get_plugin_manager(only=plugin))[plugin].settings
    required = {f.encode_name for f in msgspec.structs.fields(schema) if f.required}
    assert set(data["sources"][0]["settings"]) == required
    assert all(str(v).startswith("env:") or v == 0 for v in data["sources"][0]["settings"].values())
    # Comments keep to 100 columns; only a setting whose default is long is longer.
    assert all(len(line) <= 100 or " # " not in line for line in target.read_text().splitlines())


def test_init_names_the_installed_plugins_when_the_one_asked_for_is_not(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--plugin", "nosuch", "--config", str(tmp_path / "x.toml")])
    assert result.exit_code == 1
    assert "no messenger plugin named 'nosuch' is installed; installed: fake, " in result.output
    assert not (tmp_path / "x.toml").exists()


def test_check_creates_no_store(tmp_path: Path) -> None:
    store = tmp_path / "data" / "amoconnect.sqlite3"
    config_file = tmp_path / "c.toml"
    config_file.write_text(tomli_w.dumps({**base_config(tmp_path), "sources": [], "store": {"path": str(store)}}))
    result = CliRunner().invoke(main, ["check", "--config", str(config_file), "--json"])
    report = json.loads(result.output)
    assert not [p for p in report["problems"] if p.startswith("store")]  # a store not there yet is no problem
    assert not store.parent.exists()


def test_check_reads_an_existing_sqlite_store_without_changing_it(config_file: Path, tmp_path: Path) -> None:
    config = load_config(config_file)
    if config.store.url:
        pytest.skip("a SQLite store's check")
    _seed_dead_letters(config_file, 1)
    path = Path(config.store.path)
    before = path.read_bytes(), path.stat().st_mtime_ns
    result = CliRunner().invoke(main, ["check", "--config", str(config_file), "--json"])
    assert not [p for p in json.loads(result.output)["problems"] if p.startswith("store")]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_check_json_lists_every_config_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('log_level = "verbose"\n[channel]\nid = "x"\nsecret = "y"\namojo_url = "amojo.amocrm.ru"\n')
    result = CliRunner().invoke(main, ["check", "--offline", "--config", str(bad), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert [p.split(":")[0] for p in report["problems"]] == ["log_level", "channel.amojo_url"]


def test_migrate_json(tmp_path: Path) -> None:
    path = tmp_path / "amoconnect.sqlite3"
    config_file = tmp_path / "sqlite.toml"
    config_file.write_text(tomli_w.dumps({**base_config(tmp_path), "store": {"path": str(path)}}))
    result = CliRunner().invoke(main, ["migrate", "--config", str(config_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"store": str(path), "applied": []}


def test_run_names_the_file_and_key_of_a_source_whose_plugin_is_not_installed(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(config_file), "--port", "0"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {config_file}: sources[0].plugin: 'loopback' is not installed; installed:")


def test_check_on_postgresql_reads_the_schema_version_and_changes_nothing(tmp_path: Path) -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("needs PostgreSQL (--postgres)")
    import psycopg

    from amoconnect.store.postgres import SCHEMA_VERSION

    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options={urllib.parse.quote(f'-csearch_path={schema}')}"
    config_file = tmp_path / "pg.toml"
    config_file.write_text(tomli_w.dumps({**base_config(tmp_path), "sources": [], "store": {"url": scoped}}))
    result = CliRunner().invoke(main, ["check", "--config", str(config_file), "--json"])
    store_problems = [p for p in json.loads(result.output)["problems"] if p.startswith("store")]
    assert len(store_problems) == 1
    assert store_problems[0].endswith(
        f"has schema version 0, this amoconnect needs {SCHEMA_VERSION}: run amoconnect migrate"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone()
    assert tables == (0,)
    assert CliRunner().invoke(main, ["migrate", "--config", str(config_file)]).exit_code == 0
    result = CliRunner().invoke(main, ["check", "--config", str(config_file), "--json"])
    assert not [p for p in json.loads(result.output)["problems"] if p.startswith("store")]
