"""The configuration file (``amoconnect.toml``): schema, loading and validation.

Any string value may be written as ``"env:NAME"`` to read it from the environment variable
``NAME`` instead, so secrets need not sit in the file. Every problem of a file is found before
one :class:`~amoconnect.errors.ConfigError` lists them all, each naming the file, the key (as
``sources[0].settings.mode``) and what is allowed. The keys are described in README's "Configuration".
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
import typing
import urllib.parse
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from .errors import ConfigError
from .secretnames import is_secret, secret_values
from .urlguard import parse_networks

__all__ = [
    "LOG_LEVELS",
    "AccountConfig",
    "AdminConfig",
    "ChannelConfig",
    "Config",
    "ConsoleConfig",
    "HttpConfig",
    "OAuthConfig",
    "PluginsConfig",
    "RelayConfig",
    "ServerConfig",
    "SourceConfig",
    "StoreConfig",
    "load_config",
    "parse_config",
    "validate_settings",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
LogLevel = Literal["debug", "info", "warning", "error"]
S = TypeVar("S", bound=msgspec.Struct)

_EXTERNAL_ID = re.compile(r"^[\x20-\x7e]{1,40}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    """``[server]``: where the HTTP server listens and how it is reached from outside."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    """The URL amoCRM and messengers reach this server at (webhooks, media links)."""
    max_body_bytes: int = 1024 * 1024
    """Largest amoCRM webhook accepted; larger bodies get 413."""
    max_messenger_body_bytes: int = 4 * 1024 * 1024
    """Largest messenger webhook accepted (Meta sends up to a few MiB)."""
    media_secret: str = ""
    """Key of the signed ``/media`` links; defaults to a key derived from the channel secret."""
    max_connections: int = 1000
    """Open connections at most. At the cap a new connection takes the place of the one that has waited
    longest without a request in progress (idle, or still sending its headers); with none such it gets 503.
    Lowered at start to fit the process's open-file limit."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's line and headers (from its first byte, or from
    connecting); a slower one is closed."""
    max_header_bytes: int = 64 * 1024
    """Largest request line + headers; a larger one is answered 431 and closed."""
    keepalive_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open."""
    body_timeout: float = 10.0
    """Seconds a webhook's body may take to arrive once its headers have; a slower one gets 408."""
    max_body_memory: int = 64 * 1024 * 1024
    """Bytes the webhook bodies being read or handled may take together; past it a webhook gets 503."""


class StoreConfig(_Section):
    """``[store]``: the durable store."""

    url: str = ""
    """``postgresql://user:password@host:port/db`` for the PostgreSQL store that several processes
    share; empty for the SQLite file at ``path``."""
    path: str = "amoconnect.sqlite3"
    """SQLite file (created if missing)."""
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    pool_size: int = 10
    """PostgreSQL: connections of this process (one more listens for new work)."""
    lease: float = 30.0
    """PostgreSQL: seconds a claimed job (or an account's token refresh) stays a process's without a
    heartbeat; after a crash its conversation (or refresh) waits that long before another process
    takes it over."""
    media: Literal["files", "database"] = "files"
    """Where re-hosted media live: ``files`` in ``media_dir`` (on several nodes, a directory they
    all mount) or ``database``, the PostgreSQL store's ``media`` table."""
    media_dir: str = "media"
    """Directory of re-hosted media files."""
    finished_retention_days: float = 0.0
    """PostgreSQL: keep finished jobs this long in the ``finished`` table (0: delete them at once)."""
    secret_keys: str = ""
    """Fernet keys (comma-separated, write ``"env:NAME"``) that encrypt the secrets of the accounts and
    sources kept in the store: the first encrypts, all decrypt. Empty: kept unencrypted."""


class RelayConfig(_Section):
    """``[relay]``: how jobs are worked and retried."""

    concurrency: int = 64
    """Jobs in flight at once (different conversations run in parallel)."""
    max_attempts: int = 10
    """Attempts of one job before it goes to the dead letters."""
    backoff: float = 1.0
    """First retry delay in seconds; doubles each attempt, with jitter."""
    max_backoff: float = 600.0
    dedup_retention_days: float = 8.0
    """How long dedup keys are kept: at least 7 days, as WhatsApp re-sends a webhook for up to 7 days."""
    shutdown_timeout: float = 10.0
    """Seconds to let in-flight jobs finish on SIGTERM (none is claimed meanwhile) before cancelling them."""


class HttpConfig(_Section):
    """``[http]``: outbound HTTP."""

    transport: Literal["httpx", "aiohttp"] = "aiohttp"
    """``aiohttp`` (the httpx-aiohttp transport: measured several times faster under concurrency) or
    ``httpx`` (httpcore's own pool)."""
    timeout: float = 10.0
    max_in_flight_per_host: int = 32
    attempts: int = 4
    """Attempts of one HTTP call within a job attempt (transport errors, 429, 5xx)."""
    media_allow_networks: list[str] = []
    """CIDRs media downloads may reach despite the SSRF guard (it refuses private, loopback, link-local
    and other non-public addresses; cloud metadata addresses stay refused). Default none."""


class PluginsConfig(_Section):
    """``[plugins]``: which installed plugins load."""

    blocked: list[str] = []
    """Installed plugins that never load (by entry point name), as ``amoconnect --block NAME`` does."""


class AdminConfig(_Section):
    """``[admin]``: the operator's HTTP API under ``/admin/api/`` (accounts and sources at run time)."""

    token: str = ""
    """Bearer token of the admin API (write ``"env:NAME"``); empty: the API is off. At least 32 characters."""


class OAuthConfig(_Section):
    """``[oauth]``: the amoCRM integration (amoМаркет) that accounts install: its keys."""

    client_id: str = ""
    """The integration's id (amoCRM's ``client_uuid`` in its disconnect hook)."""
    client_secret: str = ""
    """The integration's secret (write ``"env:NAME"``): it signs the disconnect hook and goes with code exchanges."""
    redirect_uri: str = ""
    """The integration's redirect URI, as registered with amoCRM: ``{public_url}/oauth/callback``."""


class ConsoleConfig(_Section):
    """``[console]``: the web pages under ``/console/`` for accounts' admins and the operator."""

    session_key: str = ""
    """Key that signs the console's session cookies (write ``"env:NAME"``, at least 32 characters);
    defaults to a key derived from the channel secret. Changing it signs everyone out."""
    session_hours: float = 12.0
    """Hours a console session lasts from sign-in."""
    trust_proxy: bool = False
    """Believe ``X-Forwarded-Proto`` (set it only behind a proxy that overwrites the header): a request
    it says came over HTTPS gets ``Secure`` cookies. Cookies are always ``Secure`` when ``server.public_url``
    is ``https://``."""
    authorize_url: str = ""
    """amoCRM's authorisation page that "sign in with amoCRM" sends the browser to; empty: amoCRM's own
    (``https://www.amocrm.ru/oauth``, or ``https://www.kommo.com/oauth`` for Kommo accounts)."""


class ChannelConfig(_Section):
    """``[channel]``: the channel amoCRM registered for this integration."""

    id: str
    secret: str
    bot_id: str = ""
    """The channel bot's id: sender of imported messages no amoCRM user can be tied to."""
    title: str = "amoconnect"
    amojo_url: str = "https://amojo.amocrm.ru"
    """``https://amojo.amocrm.ru``, ``https://amojo.amocrm.com``, ``https://amojo.kommo.com`` or a fake."""


class AccountConfig(_Section):
    """``[[accounts]]``: one amoCRM account connected to the channel."""

    name: str
    amojo_id: str
    """The account's amojo id (``GET /api/v4/account?with=amojo_id``)."""
    scope_id: str = ""
    """Returned by ``amoconnect connect``; defaults to ``{channel id}_{amojo_id}``."""
    subdomain: str = ""
    rest_url: str = ""
    """amoCRM REST base URL; defaults to ``https://{subdomain}.amocrm.ru``."""
    token: str = ""
    """Long-lived token (or OAuth access token) of the REST API."""
    time_window_disabled: bool = False
    chat_policy: Literal["create_lead", "link_existing"] = "create_lead"


class SourceConfig(_Section):
    """``[[sources]]``: one messenger instance (a bot, a number, a community) of one account."""

    name: str
    """Instance name: appears in the webhook path ``/hooks/{plugin}/{name}``."""
    plugin: str
    account: str
    external_id: str = ""
    """The amoCRM source external_id (1–40 printable ASCII); defaults to ``name``."""
    title: str = ""
    default: bool = False
    settings: dict[str, Any] = {}
    """The plugin's own settings, validated against its schema."""
    authors: dict[str, str] = {}
    """Who of the business is who in amoCRM: the messenger's id of a person who writes in the
    messenger's own app (a VK community admin) → that amoCRM user's amojo_id. Their messages show
    in amoCRM as that user's; everyone else's as the channel bot's (capability ``echoes``)."""


class Config(_Section):
    """The whole configuration."""

    channel: ChannelConfig
    accounts: list[AccountConfig] = []
    sources: list[SourceConfig] = []
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    relay: RelayConfig = msgspec.field(default_factory=RelayConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    oauth: OAuthConfig = msgspec.field(default_factory=OAuthConfig)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    log_level: LogLevel = "info"
    origin: str = "<config>"
    """Where this configuration was read from (the file's path), for error messages; not a key of the file."""

    def account(self, name: str) -> AccountConfig:
        """The account called ``name``."""
        for account in self.accounts:
            if account.name == name:
                return account
        raise ConfigError(f"no account named {name!r}; configured: {[a.name for a in self.accounts]}")

    def account_by_scope(self, scope_id: str) -> AccountConfig | None:
        """The account connected under ``scope_id``, if any."""
        for account in self.accounts:
            if account.scope_id == scope_id:
                return account
        return None

    def plugin_settings(self, index: int, schema: type[S]) -> S:
        """``sources[index].settings`` validated against a plugin's settings ``schema``.

        Raises :class:`ConfigError` listing every problem, each with the file and the key path."""
        source = self.sources[index]
        problems: list[str] = []
        settings = _validate(source.settings, schema, f"sources[{index}].settings", problems)
        if problems:
            raise _config_error(self.origin, problems, f"(source {source.name!r}, plugin {source.plugin!r})")
        return typing.cast(S, settings)

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for log redaction."""
        found = [
            self.channel.secret,
            self.server.media_secret,
            self.console.session_key,
            self.admin.token,
            self.oauth.client_secret,
            *(a.token for a in self.accounts),
        ]
        found.extend(_url_password(self.store.url))
        found.extend(k.strip() for k in self.store.secret_keys.split(","))
        for source in self.sources:
            found.extend(secret_values(source.settings))
        return [s for s in found if s]


def _url_password(url: str) -> list[str]:
    password = urllib.parse.urlsplit(url).password if url else None
    return [password, urllib.parse.unquote(password)] if password else []


def _config_error(origin: str, problems: list[str], context: str = "") -> ConfigError:
    """One error listing every problem of ``origin``."""
    where = f"{origin} {context}".rstrip()
    if len(problems) == 1:
        return ConfigError(f"{where}: {problems[0]}", problems=problems)
    listed = "".join(f"\n  - {p}" for p in problems)
    return ConfigError(f"{where}: {len(problems)} problems:{listed}", problems=problems)


def validate_settings(settings: Any, schema: type[S], where: str) -> S:
    """A plugin's ``settings`` (of a source kept in the store) validated against its ``schema``.

    Raises :class:`ConfigError` listing every problem (``"settings.key: what is wrong"``), after ``where``."""
    problems: list[str] = []
    converted = _validate(settings, schema, "settings", problems)
    if problems:
        raise _config_error(where, problems)
    return typing.cast(S, converted)


# -- "env:NAME" ---------------------------------------------------------------------------
def _resolve_env(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            problems.append(f"{where} reads environment variable {name!r}, which is not set")
            return value
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, _key(where, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return value


# -- types: every problem, with its key path ---------------------------------------------
def _key(path: str, key: str) -> str:
    name = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)
    return f"{path}.{name}" if path else name


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(values: typing.Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in values)


_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")


def _validate(value: Any, annotation: Any, path: str, problems: list[str]) -> Any:
    """``value`` converted to ``annotation``; each problem found is appended to ``problems``
    as ``"key.path: what is wrong and what is allowed"`` (the result is then meaningless)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return _validate_struct(value, annotation, path, problems)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed or type(value) not in {type(a) for a in allowed}:
            problems.append(f"{path}: {_shown(value)} is not allowed; expected one of {_allowed(allowed)}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [m.value for m in annotation]
        if value not in values:
            problems.append(f"{path}: {_shown(value)} is not allowed; expected one of {_allowed(values)}")
            return value
        return annotation(value)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(annotation) or (Any,)
        return [_validate(v, item, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(annotation) or (str, Any)
        return {k: _validate(v, item, _key(path, str(k)), problems) for k, v in value.items()}
    try:
        return msgspec.convert(value, annotation)
    except msgspec.ValidationError as exc:
        problems.append(_msgspec_problem(str(exc), path, value))
        return value


def _msgspec_problem(message: str, path: str, value: Any) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.x``` as ``path.x: expected int, got 'eighty'``."""
    match = _MSGSPEC_PATH.search(message)
    if match:
        message = message[: match.start()]
        path = f"{path}{match.group(1)}".lstrip(".")
    message = message.replace("`object`", "a table").replace("`array`", "a list").replace("`", "")
    message = message[:1].lower() + message[1:]
    secret = is_secret(path.rsplit(".", 1)[-1])
    if message.startswith("expected") and not isinstance(value, dict | list) and not secret:
        message = re.sub(r", got \w+$", f", got {_shown(value)}", message)
    return f"{path}: {message}"


def _validate_struct(value: Any, cls: type[S], path: str, problems: list[str]) -> S | None:
    """``value`` as ``cls``, its problems appended; built from the keys that are right (defaults in place
    of wrong ones) so that the checks across keys can still run, or ``None`` when it cannot be built."""
    if not isinstance(value, dict):
        problems.append(f"{path or 'the file'}: expected a table, got {_shown(value)}")
        return None
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    if cls is Config:
        fields.pop("origin")
    forbid = cls.__struct_config__.forbid_unknown_fields
    before = len(problems)
    right: dict[str, Any] = {}
    buildable = True
    for key, item in value.items():
        if key in fields:
            known = len(problems)
            _validate(item, fields[key].type, _key(path, str(key)), problems)
            if len(problems) == known:
                right[key] = item
            elif isinstance(item, list):
                buildable = False  # an empty list in its place would make the checks across keys misread it
        elif forbid:
            problems.append(f"{_key(path, str(key))}: unknown key; expected one of {', '.join(fields)}")
        else:
            right[key] = item
    for name, field in fields.items():
        if field.required and name not in value:
            problems.append(f"{_key(path, name)}: missing; it is required")
    if not buildable:
        return None
    try:
        return msgspec.convert(right, cls)  # also the struct's own checks (__post_init__), across fields
    except msgspec.ValidationError as exc:
        if len(problems) == before:
            problems.append(_msgspec_problem(str(exc), path, value))
        return None


# -- what the types cannot say -------------------------------------------------------------
def _check_url(url: str, where: str, example: str, problems: list[str], *, empty_ok: bool = False) -> None:
    if not url and empty_ok:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{where}: {url!r} is not an http(s) URL; expected one like {example!r}")


def _check(config: Config, problems: list[str]) -> Config:
    """The rules across keys; appends a problem for each broken one."""
    if not config.channel.id or not config.channel.secret:
        problems.append(
            "channel.id and channel.secret: both are required (amoCRM issues them when it registers the channel)"
        )
    _check_url(config.channel.amojo_url, "channel.amojo_url", "https://amojo.amocrm.ru", problems)
    _check_url(config.server.public_url, "server.public_url", "https://connector.example.com", problems, empty_ok=True)
    if config.store.secret_keys:
        from .secretbox import SecretBox

        try:
            SecretBox(config.store.secret_keys)
        except ConfigError as exc:
            problems.append(str(exc))
    if config.admin.token and len(config.admin.token) < 32:
        problems.append("admin.token: too short to guard the admin API; use at least 32 random characters")
    if config.console.session_key and len(config.console.session_key) < 32:
        problems.append("console.session_key: too short to sign sessions; use at least 32 random characters")
    if config.console.session_hours <= 0:
        problems.append("console.session_hours: must be more than 0")
    _check_url(
        config.console.authorize_url, "console.authorize_url", "https://www.amocrm.ru/oauth", problems, empty_ok=True
    )
    names: set[str] = set()
    scopes: set[str] = set()
    accounts = []
    for i, account in enumerate(config.accounts):
        if account.name in names:
            problems.append(f"accounts[{i}].name: {account.name!r} is used twice")
        names.add(account.name)
        scope_id = account.scope_id or f"{config.channel.id}_{account.amojo_id}"
        if scope_id in scopes:
            problems.append(f"accounts[{i}].scope_id: {scope_id!r} is used twice")
        scopes.add(scope_id)
        if account.subdomain and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", account.subdomain):
            problems.append(
                f"accounts[{i}].subdomain: {account.subdomain!r} must be the bare subdomain (letters, digits, '-'), "
                "e.g. 'mycompany' for https://mycompany.amocrm.ru; or set rest_url"
            )
        _check_url(account.rest_url, f"accounts[{i}].rest_url", "https://mycompany.amocrm.ru", problems, empty_ok=True)
        rest_url = account.rest_url or (f"https://{account.subdomain}.amocrm.ru" if account.subdomain else "")
        accounts.append(msgspec.structs.replace(account, scope_id=scope_id, rest_url=rest_url))
    sources = []
    instance_names: set[str] = set()
    external_ids: set[tuple[str, str]] = set()
    defaults: set[str] = set()
    for i, source in enumerate(config.sources):
        where = f"sources[{i}]"
        if not _NAME.match(source.name):
            problems.append(
                f"{where}.name: {source.name!r} must be lower-case letters, digits, '-' or '_' (it is a URL part)"
            )
        if source.name in instance_names:
            problems.append(f"{where}.name: {source.name!r} is used twice")
        instance_names.add(source.name)
        if source.account not in names:
            problems.append(f"{where}.account: {source.account!r} is not one of the accounts {sorted(names)}")
        external_id = source.external_id or source.name
        if not _EXTERNAL_ID.match(external_id):
            problems.append(f"{where}.external_id: {external_id!r} must be 1-40 printable ASCII characters")
        if (source.account, external_id) in external_ids:
            problems.append(f"{where}.external_id: {external_id!r} is used twice in account {source.account!r}")
        external_ids.add((source.account, external_id))
        if source.default:
            if source.account in defaults:
                problems.append(f"{where}.default: account {source.account!r} has more than one default source")
            defaults.add(source.account)
        sources.append(msgspec.structs.replace(source, external_id=external_id))
    if config.store.url and not config.store.url.startswith(("postgresql://", "postgres://")):
        problems.append(
            "store.url: expected a postgresql://user:password@host:5432/db URL (or none, for the SQLite file at "
            "store.path)"
        )
    if not config.store.url and (config.store.media == "database" or config.store.finished_retention_days):
        problems.append(
            "store.media = 'database' and store.finished_retention_days need the PostgreSQL store (store.url)"
        )
    if not config.relay.dedup_retention_days >= 7:
        problems.append(
            f"relay.dedup_retention_days: must be at least 7 (messengers re-send webhooks for up to 7 days), "
            f"got {config.relay.dedup_retention_days}"
        )
    if not config.store.lease > 0:
        problems.append(f"store.lease: must be a positive number of seconds, got {config.store.lease}")
    if not 0 <= config.server.port <= 65535:
        problems.append(f"server.port: must be 0-65535, got {config.server.port}")
    for field, value in (
        ("store.pool_size", config.store.pool_size),
        ("relay.concurrency", config.relay.concurrency),
        ("relay.max_attempts", config.relay.max_attempts),
        ("http.attempts", config.http.attempts),
        ("http.max_in_flight_per_host", config.http.max_in_flight_per_host),
    ):
        if value < 1:
            problems.append(f"{field}: must be positive, got {value}")
    _check_server(config.server, problems)
    try:
        parse_networks(config.http.media_allow_networks)
    except ConfigError as exc:
        problems.append(str(exc))
    return msgspec.structs.replace(config, accounts=accounts, sources=sources)


def _check_server(server: ServerConfig, problems: list[str]) -> None:
    """``[server]``'s limits; appends a problem for each broken one."""
    for name in (
        "max_connections",
        "max_header_bytes",
        "max_body_memory",
        "max_body_bytes",
        "max_messenger_body_bytes",
    ):
        if getattr(server, name) < 1:
            problems.append(f"server.{name}: must be positive, got {getattr(server, name)}")
    for name in ("header_timeout", "keepalive_timeout", "body_timeout"):
        if not getattr(server, name) > 0:
            problems.append(f"server.{name}: must be a positive number of seconds, got {getattr(server, name)}")
    if server.max_body_memory < max(server.max_body_bytes, server.max_messenger_body_bytes):
        problems.append(
            "server.max_body_memory: must hold at least one webhook of max_body_bytes and max_messenger_body_bytes"
        )


def parse_config(data: dict[str, Any], origin: str = "<config>") -> Config:
    """Validate a configuration given as a dict (as read from TOML); ``origin`` names it in errors.

    Raises :class:`ConfigError` listing every problem found."""
    problems: list[str] = []
    data = _resolve_env(data, "", problems)
    config = _validate_struct(data, Config, "", problems)
    if config is not None:
        config = _check(msgspec.structs.replace(config, origin=origin), problems)
    if problems or config is None:
        raise _config_error(origin, problems)
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration file {path}: {exc.strerror} (amoconnect init writes a starter one)"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path))
