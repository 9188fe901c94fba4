"""The commented starter ``amoconnect.toml`` of ``amoconnect init`` (modelled on docs/amoconnect.example.toml)."""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import textwrap
from typing import Any

import msgspec

__all__ = ["starter_config"]

_COLUMN = 40

_HEAD = """\
# amoconnect.toml, written by `amoconnect init`. Check it with `amoconnect check --offline`,
# then `amoconnect check` (which also reaches amoCRM). Any string may be "env:NAME" to read
# the environment variable NAME; the values below that do are the ones to supply.
# Every key: README "Configuration"; a complete example: docs/amoconnect.example.toml.

log_level = "info"                      # debug | info | warning | error

[channel]                               # issued by amoCRM when it registers the channel
id = "env:AMOCONNECT_CHANNEL_ID"
secret = "env:AMOCONNECT_CHANNEL_SECRET"
# bot_id = ""                           # the channel bot's id: sender of business messages written
                                        # outside amoCRM; required with VK or WhatsApp (echoes)
# title = "amoconnect"
amojo_url = "https://amojo.amocrm.ru"   # or https://amojo.amocrm.com, https://amojo.kommo.com

[server]
host = "127.0.0.1"                      # 0.0.0.0 to listen on every address
port = 8080
public_url = ""                         # e.g. "https://connector.example.com": where amoCRM and
                                        # messengers reach this server (webhooks, media links)

[store]
path = "amoconnect.sqlite3"             # the SQLite file; created by `amoconnect run`
# url = "env:AMOCONNECT_STORE_URL"      # postgresql://user:password@host:5432/db for several
                                        # processes (docs/deploy.md)

[[accounts]]                            # one amoCRM account connected to the channel
name = "main"
amojo_id = "env:AMOCRM_AMOJO_ID"        # GET /api/v4/account?with=amojo_id
# scope_id = ""                         # printed by `amoconnect connect`; the default is
                                        # {{channel id}}_{{amojo_id}}
# subdomain = "mycompany"               # the REST API at https://mycompany.amocrm.ru
# token = "env:AMOCRM_TOKEN"            # long-lived token of the REST API
# chat_policy = "create_lead"           # create_lead | link_existing

[[sources]]                             # one messenger instance (a bot, a number, a community)
name = "{name}"{name_pad}# webhook path /hooks/{plugin}/{name}
plugin = "{plugin}"
account = "main"
default = true                          # outbound messages of the account go through it

[sources.settings]                      # {plugin}'s own settings
"""


def starter_config(plugin: str, settings: type[msgspec.Struct]) -> str:
    """A commented configuration with one account and one source of ``plugin`` (settings from its schema)."""
    name = re.sub(r"[^a-z0-9_-]", "-", plugin.lower()) or "messenger"
    line = f'name = "{name}"'
    head = _HEAD.format(name=name, plugin=plugin, name_pad=" " * max(1, _COLUMN - len(line)))
    return head + "".join(_setting_lines(plugin, settings))


def _setting_lines(plugin: str, settings: type[msgspec.Struct]) -> list[str]:
    docs = _field_docs(settings)
    lines = []
    for field in msgspec.structs.fields(settings):
        doc = docs.get(field.name, "")
        if field.required:
            value = _placeholder(plugin, field.name, field.type)
            lines.append(_commented(f"{field.encode_name} = {value}", f"(required) {doc}".rstrip()))
            continue
        default = field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
        shown = _toml(default)
        if shown is not None:
            lines.append(_commented(f"# {field.encode_name} = {shown}", doc))
    return lines


def _placeholder(plugin: str, name: str, annotation: Any) -> str:
    if annotation is str:
        return json.dumps(f"env:{plugin.upper()}_{name.upper()}")
    if annotation is int or annotation is float:
        return "0"
    if annotation is bool:
        return "false"
    return '""'


def _toml(value: Any) -> str | None:
    """``value`` as a TOML literal, or ``None`` when it has no short one."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple) and all(_toml(v) is not None for v in value):
        return "[" + ", ".join(str(_toml(v)) for v in value) + "]"
    return None


def _commented(line: str, doc: str) -> str:
    """``line`` with ``doc`` beside it (wrapped at 100 columns), or above it when the line is too long for that."""
    if not doc:
        return line + "\n"
    if len(line) > _COLUMN + 10:
        return "".join(f"# {part}\n" for part in textwrap.wrap(doc, 98)) + line + "\n"
    first, *rest = textwrap.wrap(doc, 100 - 3 - max(len(line), _COLUMN - 1))
    out = f"{line.ljust(_COLUMN - 1)} # {first}\n"
    return out + "".join(f"{'':{_COLUMN - 1}} # {more}\n" for more in rest)


def _field_docs(cls: type) -> dict[str, str]:
    """The first sentence of the docstring under each field of ``cls`` (as Sphinx reads them)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(following.value.value.split()).replace("``", "")
            docs[node.target.id] = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return docs
