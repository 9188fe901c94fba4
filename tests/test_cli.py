from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import tomli_w
from click.testing import CliRunner
from rig import MESSENGERS, base_config

from amoconnect.cli import main
from amoconnect.config import load_config
from amoconnect.store import opened_store
from amoconnect.store.base import NewJob


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


def test_jobs_list_retry_purge(config_file: Path, tmp_path: Path) -> None:
    async def seed() -> None:
        async with opened_store(load_config(config_file).store) as store:
            await store.enqueue([NewJob("amocrm", "k1", b"{}", "s"), NewJob("amocrm", "k2", b"{}", "s")])
            for job in await store.claim(10):
                await store.bury(job.id, error="amojo answered HTTP 400")

    anyio.run(seed)
    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "list", "--config", str(config_file), "--json"])
    data = json.loads(listed.output)
    assert data["counts"]["dead"] == 2
    assert data["dead"][0]["error"] == "amojo answered HTTP 400"
    assert runner.invoke(main, ["jobs", "retry", "--config", str(config_file)]).exit_code == 2
    retried = runner.invoke(main, ["jobs", "retry", "--config", str(config_file), str(data["dead"][0]["id"])])
    assert "re-queued 1 job(s)" in retried.output
    purged = runner.invoke(main, ["jobs", "purge", "--config", str(config_file), "--all"])
    assert "purged 1 job(s)" in purged.output
    text = runner.invoke(main, ["jobs", "list", "--config", str(config_file)])
    assert "queued 1, running 0, dead 0" in text.output


def test_check_offline_reports_unknown_plugins(config_file: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--offline", "--config", str(config_file)])
    assert result.exit_code == 1
    assert "plugin 'loopback' is not installed" in result.output


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
