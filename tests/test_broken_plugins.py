"""One broken installed plugin: the error names it, and blocking it (CLI, environment, config) gets past it.

The broken plugins are real distributions: a ``*.dist-info`` directory with ``METADATA`` and
``entry_points.txt`` and the package beside it, on ``sys.path``, found by ``importlib.metadata``
as pip-installed ones are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner
from rig import base_config

from amoconnect.cli import main
from amoconnect.errors import PluginError
from amoconnect.plugins import collect_messengers, get_plugin_manager

CRASHY_PLUGIN = """\
import amoconnect


@amoconnect.hookimpl
def register_messengers(register):
    raise RuntimeError("settings file /etc/crashy.ini is missing")
"""


def install(site: Path, distribution: str, version: str, entry_point: str, module: str, source: str) -> None:
    """A distribution as pip leaves it in site-packages: the package and its dist-info."""
    package, _, submodule = module.partition(".")
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("", encoding="utf-8")
    (site / package / f"{submodule}.py").write_text(source, encoding="utf-8")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[amoconnect]\n{entry_point} = {module}\n", encoding="utf-8")


@pytest.fixture
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``amoconnect-viberx`` 0.3 installed, whose plugin module fails to import."""
    site = tmp_path / "site"
    install(site, "amoconnect-viberx", "0.3", "viberx", "amoconnect_viberx.plugin", "import viberbot_sdk_missing\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("AMOCONNECT_BLOCK", raising=False)
    return site


def test_the_error_names_the_plugin_its_entry_point_and_distribution(broken: Path) -> None:
    with pytest.raises(PluginError) as caught:
        get_plugin_manager()
    assert str(caught.value) == (
        "installed plugin 'viberx' failed to load: ModuleNotFoundError: No module named 'viberbot_sdk_missing' "
        "(entry point viberx = 'amoconnect_viberx.plugin' of distribution amoconnect-viberx 0.3); "
        "to run without it, block it: `amoconnect --block viberx COMMAND ...`, AMOCONNECT_BLOCK=viberx or "
        '`[plugins] blocked = ["viberx"]` in the configuration, or fix or uninstall it'
    )
    pm = get_plugin_manager(blocked=["viberx"])
    assert pm.get_plugin("fake") is not None  # the others still load
    assert pm.get_plugin("viberx") is None


def test_a_plugin_failing_in_its_hook_is_named(broken: Path) -> None:
    install(broken, "amoconnect-crashy", "1.0", "crashy", "amoconnect_crashy.plugin", CRASHY_PLUGIN)
    pm = get_plugin_manager(blocked=["viberx"])
    with pytest.raises(PluginError, match=r"^plugin 'crashy' failed in register_messengers: RuntimeError: settings"):
        collect_messengers(pm)
    assert "fake" in collect_messengers(get_plugin_manager(blocked=["viberx", "crashy"]))


def test_plugins_and_run_name_it_and_block_it(broken: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["plugins"])
    assert listed.exit_code == 1
    assert "installed plugin 'viberx' failed to load" in listed.output
    assert "distribution amoconnect-viberx 0.3" in listed.output

    blocked = runner.invoke(main, ["--block", "viberx", "plugins", "--json"])
    assert blocked.exit_code == 0, blocked.output
    assert '"name": "fake"' in blocked.output
    assert "viberx" not in blocked.output
    from_env = runner.invoke(main, ["plugins"], env={"AMOCONNECT_BLOCK": "other viberx"})
    assert from_env.exit_code == 0, from_env.output

    config = tmp_path / "amoconnect.toml"
    config.write_text(tomli_w.dumps(base_config(tmp_path, sources=[])))
    run = ["run", "--config", str(config), "--plugin", "nosuch"]
    failed = runner.invoke(main, run)
    assert failed.exit_code == 1
    assert "installed plugin 'viberx' failed to load" in failed.output
    # past the broken plugin, run gets as far as the next mistake
    past = runner.invoke(main, ["--block", "viberx", *run])
    assert "no messenger plugin named 'nosuch' is installed" in past.output


def test_the_config_blocks_it_too(broken: Path, tmp_path: Path) -> None:
    config = tmp_path / "amoconnect.toml"
    source = {"name": "f", "plugin": "fake", "account": "main", "settings": {"token": "t", "secret": "s"}}
    data = base_config(tmp_path, sources=[source])
    config.write_text(tomli_w.dumps(data))
    check = ["check", "--offline", "--config", str(config)]
    failed = CliRunner().invoke(main, check)
    assert failed.exit_code == 1
    assert "installed plugin 'viberx' failed to load" in failed.output

    config.write_text(tomli_w.dumps({**data, "plugins": {"blocked": ["viberx"]}}))
    passed = CliRunner().invoke(main, check)
    assert passed.exit_code == 0, passed.output
    bad = CliRunner().invoke(main, ["run", "--config", str(config), "--plugin", "nosuch"])
    assert "no messenger plugin named 'nosuch' is installed" in bad.output
