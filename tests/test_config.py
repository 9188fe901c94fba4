from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import msgspec
import pytest
from rig import base_config

from amoconnect.config import load_config, parse_config
from amoconnect.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "docs" / "amoconnect.example.toml"


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path))
    main = config.account("main")
    assert main.scope_id == f"{config.channel.id}_{main.amojo_id}"
    assert [s.external_id for s in config.sources] == ["lb", "wa-number", "pl"]
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.store.synchronous == "FULL"


def test_the_documented_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMOCONNECT_CHANNEL_SECRET", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("AMOCRM_TOKEN", "token")
    monkeypatch.setenv("TELEGRAM_TOKEN", "123:abc")
    monkeypatch.setenv("TELEGRAM_SECRET", "s3cret")
    config = load_config(EXAMPLE)
    assert config.channel.secret.startswith("0123")
    assert config.accounts[0].token == "token"


def test_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base_config(tmp_path)
    data["channel"]["secret"] = "env:MY_SECRET"
    with pytest.raises(
        ConfigError, match=r"^x\.toml: channel\.secret reads environment variable .MY_SECRET., which is not set$"
    ):
        parse_config(data, "x.toml")
    monkeypatch.setenv("MY_SECRET", "from-env-0123456789")
    assert parse_config(data).channel.secret == "from-env-0123456789"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["server"].update(port="eighty"), "server.port: expected int, got 'eighty'"),
        (lambda d: d.update(serverr={}), "serverr: unknown key; expected one of channel, accounts, sources, server"),
        (lambda d: d["channel"].pop("secret"), "channel.secret: missing; it is required"),
        (lambda d: d["sources"][0].update(account="nope"), "sources[0].account: 'nope' is not one of the accounts"),
        (lambda d: d["sources"][1].update(name="lb"), "sources[1].name: 'lb' is used twice"),
        (lambda d: d["sources"][0].update(name="Bad Name"), "must be lower-case letters"),
        (lambda d: d["sources"][0].update(external_id="x" * 41), "1-40 printable ASCII"),
        (lambda d: d["sources"][1].update(default=True), "more than one default source"),
        (lambda d: d["relay"].update(max_attempts=0), "relay.max_attempts: must be positive, got 0"),
        (
            lambda d: d["store"].update(synchronous="OFF"),
            "store.synchronous: 'OFF' is not allowed; expected one of 'FULL', 'NORMAL', 'EXTRA'",
        ),
        (
            lambda d: d.update(log_level="verbose"),
            "log_level: 'verbose' is not allowed; expected one of 'debug', 'info', 'warning', 'error'",
        ),
        (
            lambda d: d["accounts"][0].update(chat_policy="link"),
            "accounts[0].chat_policy: 'link' is not allowed; expected one of 'create_lead', 'link_existing'",
        ),
        (
            lambda d: d["channel"].update(amojo_url="amojo.amocrm.ru"),
            "channel.amojo_url: 'amojo.amocrm.ru' is not an http(s) URL; expected one like 'https://amojo.amocrm.ru'",
        ),
        (lambda d: d["server"].update(public_url="connector.example.com"), "server.public_url: 'connector.example"),
        (lambda d: d["accounts"][0].update(rest_url="example.amocrm.ru"), "accounts[0].rest_url: 'example.amocrm"),
        (lambda d: d["accounts"][0].update(subdomain="example.amocrm.ru"), "accounts[0].subdomain: 'example.amocrm"),
        (lambda d: d["store"].update(url="localhost/db"), "store.url: expected a postgresql://"),
        (lambda d: d["sources"][0].update(settings=[1]), "sources[0].settings: expected a table, got a list"),
        (lambda d: d["http"].update(media_allow_networks=["10/x"]), "http.media_allow_networks[0] '10/x'"),
        (lambda d: d.update(origin="x.toml"), "origin: unknown key"),
        (lambda d: d["accounts"][0].update(token=918273645), "accounts[0].token: expected str, got int"),
        (lambda d: d.update(admin={"token": "short"}), "admin.token: too short to guard the admin API"),
        (lambda d: d.update(admin={"tokens": "x"}), "admin.tokens: unknown key"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = base_config(tmp_path)
    data.setdefault("server", {})
    data.setdefault("relay", {})
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "amoconnect.toml")
    assert str(info.value) == f"amoconnect.toml: {info.value.problems[0]}"
    assert message in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["channel"]["secret"] = "env:AMOCONNECT_TEST_UNSET_1"
    data["accounts"][0]["token"] = "env:AMOCONNECT_TEST_UNSET_2"
    data["store"]["synchronous"] = "OFF"
    data["server"]["port"] = "eighty"
    data["log_level"] = "verbose"
    with pytest.raises(ConfigError) as info:
        parse_config(data, "amoconnect.toml")
    assert info.value.problems == [
        "channel.secret reads environment variable 'AMOCONNECT_TEST_UNSET_1', which is not set",
        "accounts[0].token reads environment variable 'AMOCONNECT_TEST_UNSET_2', which is not set",
        "store.synchronous: 'OFF' is not allowed; expected one of 'FULL', 'NORMAL', 'EXTRA'",
        "server.port: expected int, got 'eighty'",
        "log_level: 'verbose' is not allowed; expected one of 'debug', 'info', 'warning', 'error'",
    ]
    assert str(info.value).startswith("amoconnect.toml: 5 problems:\n  - channel.secret reads")


def test_a_file_s_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf.toml"
    path.write_text('log_level = "verbose"\n[channel]\nid = "x"\nsecret = "y"\namojo_url = "amojo.kommo.com"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: 2 problems:")
    assert "log_level: 'verbose' is not allowed" in str(info.value)
    assert "channel.amojo_url: 'amojo.kommo.com' is not an http(s) URL" in str(info.value)


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    mode: Literal["polling", "webhook"] = "webhook"
    limit: int = 1


def test_plugin_settings_errors_name_file_and_key_path(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path), "amoconnect.toml")
    config = msgspec.structs.replace(
        config,
        sources=[
            msgspec.structs.replace(config.sources[0], settings={"mode": "push", "limit": "x", "extra": 1}),
            *config.sources[1:],
        ],
    )
    with pytest.raises(ConfigError) as info:
        config.plugin_settings(0, Settings)
    assert info.value.problems == [
        "sources[0].settings.mode: 'push' is not allowed; expected one of 'polling', 'webhook'",
        "sources[0].settings.limit: expected int, got 'x'",
        "sources[0].settings.extra: unknown key; expected one of token, mode, limit",
        "sources[0].settings.token: missing; it is required",
    ]
    assert str(info.value).startswith("amoconnect.toml (source 'lb', plugin 'loopback'): 4 problems:")
    good = msgspec.structs.replace(
        config, sources=[msgspec.structs.replace(config.sources[0], settings={"token": "t"})]
    )
    assert good.plugin_settings(0, Settings) == Settings(token="t")


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[channel\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


def test_secrets_are_collected_for_redaction(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["accounts"][0]["token"] = "rest-token-123456"
    data["sources"][0]["settings"]["secret"] = "hook-secret-123456"
    secrets = parse_config(data).secrets()
    assert {"rest-token-123456", "hook-secret-123456", data["channel"]["secret"]} <= set(secrets)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"max_connections": 0}, "server.max_connections: must be positive, got 0"),
        ({"max_header_bytes": -1}, "server.max_header_bytes: must be positive"),
        ({"header_timeout": 0}, "server.header_timeout: must be a positive number of seconds, got 0"),
        ({"keepalive_timeout": -1.0}, "server.keepalive_timeout: must be a positive number of seconds"),
        ({"body_timeout": float("nan")}, "server.body_timeout: must be a positive number of seconds, got nan"),
        ({"max_body_memory": 1024}, "server.max_body_memory: must hold at least one webhook"),
        ({"max_connections": "many"}, "server.max_connections"),
    ],
)
def test_server_limits_are_checked(tmp_path: Path, server: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(base_config(tmp_path, server=server), "x.toml")


def test_server_limits_have_sane_defaults(tmp_path: Path) -> None:
    server = parse_config(base_config(tmp_path)).server
    assert (server.max_connections, server.header_timeout, server.keepalive_timeout, server.body_timeout) == (
        1000,
        10.0,
        5.0,
        10.0,
    )
    assert (server.max_header_bytes, server.max_body_memory) == (64 * 1024, 64 * 1024 * 1024)
