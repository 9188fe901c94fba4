from __future__ import annotations

from pathlib import Path

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
    with pytest.raises(ConfigError, match=r"channel\.secret reads environment variable .MY_SECRET., which is not set"):
        parse_config(data, "x.toml")
    monkeypatch.setenv("MY_SECRET", "from-env-0123456789")
    assert parse_config(data).channel.secret == "from-env-0123456789"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["server"].update(port="eighty"), "Expected `int`, got `str` - at `server.port`"),
        (lambda d: d.update(serverr={}), "unknown field `serverr`"),
        (lambda d: d["channel"].pop("secret"), "missing required field `secret`"),
        (lambda d: d["sources"][0].update(account="nope"), "sources[0].account 'nope' is not one of the accounts"),
        (lambda d: d["sources"][1].update(name="lb"), "sources[1].name 'lb' is used twice"),
        (lambda d: d["sources"][0].update(name="Bad Name"), "must be lower-case letters"),
        (lambda d: d["sources"][0].update(external_id="x" * 41), "1-40 printable ASCII"),
        (lambda d: d["sources"][1].update(default=True), "more than one default source"),
        (lambda d: d["relay"].update(max_attempts=0), "relay.max_attempts must be positive"),
        (lambda d: d["store"].update(synchronous="OFF"), "store.synchronous"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = base_config(tmp_path)
    data.setdefault("server", {})
    data.setdefault("relay", {})
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "amoconnect.toml")
    assert str(info.value).startswith("amoconnect.toml: ")
    assert message in str(info.value)


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
