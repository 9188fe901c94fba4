"""A plugin's settings schema as a form, and a submitted form back as settings.

Every field of the plugin's ``settings`` Struct becomes one input, so a third-party plugin gets its
form for free:

- the label is ``msgspec.Meta(title=...)`` of the field's annotation, else its name in words;
- the help text is ``msgspec.Meta(description=...)``, else the field's docstring (the string right
  under it in the class body, as the plugins write them);
- ``str`` is a text input, ``int``/``float`` a number, ``bool`` a checkbox, a ``Literal`` or ``Enum`` a
  choice, anything else (tables, lists) JSON in a text area;
- a secret (a name holding token, secret, password, key: :mod:`amoconnect.secretnames`) is a password
  input that is never filled in: the stored value never goes back to the browser; left empty when
  changing a source, it keeps the stored value.

The settings are then checked by the same schema (:meth:`amoconnect.tenants.Tenants.add_source`).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import itertools
import json
import re
import textwrap
from typing import Any, Literal

import msgspec

from ..secretnames import is_secret

__all__ = ["Field", "fields_of", "settings_of"]

Kind = Literal["text", "secret", "number", "bool", "choice", "json"]


@dataclasses.dataclass(frozen=True)
class Field:
    """One input of a settings form."""

    name: str
    kind: Kind
    title: str
    help: str
    required: bool
    default: Any = None
    choices: tuple[str, ...] = ()
    integer: bool = False

    def shown(self, settings: dict[str, Any] | None) -> str:
        """The input's value: the stored setting (never a secret's), else the default."""
        if self.kind == "secret":
            return ""
        value = settings.get(self.name, self.default) if settings is not None else self.default
        if value is None:
            return ""
        if self.kind == "json":
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    def checked(self, settings: dict[str, Any] | None) -> bool:
        value = settings.get(self.name, self.default) if settings is not None else self.default
        return bool(value)


def fields_of(schema: type[msgspec.Struct]) -> list[Field]:
    """The form of a plugin's settings ``schema``."""
    docs = _docstrings(schema)
    found = []
    info_of = msgspec.inspect.type_info(schema)
    assert isinstance(info_of, msgspec.inspect.StructType)
    for info in info_of.fields:
        kind, choices, integer = _kind(info.name, info.type)
        meta_title, meta_help = _meta(info.type)
        default = None if info.default is msgspec.NODEFAULT else info.default
        found.append(
            Field(
                name=info.encode_name,
                kind=kind,
                title=meta_title or info.name.replace("_", " ").capitalize(),
                help=meta_help or docs.get(info.name, ""),
                required=info.required,
                default=default,
                choices=choices,
                integer=integer,
            )
        )
    return found


def _kind(name: str, kind: msgspec.inspect.Type) -> tuple[Kind, tuple[str, ...], bool]:
    if isinstance(kind, msgspec.inspect.Metadata):
        return _kind(name, kind.type)
    if isinstance(kind, msgspec.inspect.UnionType):
        others = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(others) == 1:
            return _kind(name, others[0])
        return "json", (), False
    if isinstance(kind, msgspec.inspect.StrType):
        return ("secret" if is_secret(name) else "text"), (), False
    if isinstance(kind, msgspec.inspect.BoolType):
        return "bool", (), False
    if isinstance(kind, msgspec.inspect.IntType):
        return "number", (), True
    if isinstance(kind, msgspec.inspect.FloatType):
        return "number", (), False
    if isinstance(kind, msgspec.inspect.LiteralType) and all(isinstance(v, str) for v in kind.values):
        return "choice", tuple(str(v) for v in kind.values), False
    if isinstance(kind, msgspec.inspect.EnumType) and issubclass(kind.cls, enum.Enum):
        return "choice", tuple(str(m.value) for m in kind.cls), False
    return "json", (), False


def _meta(kind: msgspec.inspect.Type) -> tuple[str, str]:
    if isinstance(kind, msgspec.inspect.Metadata):
        extra = kind.extra_json_schema or {}
        return str(extra.get("title", "")), str(extra.get("description", ""))
    return "", ""


@functools.cache
def _docstrings(schema: type) -> dict[str, str]:
    """The docstrings under a class's fields (from its source; none when the source is not there)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(schema)))
    except (OSError, TypeError, SyntaxError):
        return {}
    found: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for field, after in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[field.target.id] = _plain(after.value.value)
    return found


def _plain(doc: str) -> str:
    """A docstring as plain text: reStructuredText's literal and role markup dropped, lines joined."""
    text = " ".join(doc.split())
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def settings_of(
    fields: list[Field], form: dict[str, str], stored: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The settings a submitted ``form`` says (fields named ``settings.NAME``), and the problems it has
    that the schema cannot say (JSON that does not parse). An empty optional field keeps its default;
    an empty secret keeps the ``stored`` one."""
    settings: dict[str, Any] = {}
    problems: list[str] = []
    for field in fields:
        raw = form.get(f"settings.{field.name}")
        if field.kind == "bool":
            settings[field.name] = raw is not None
            continue
        raw = (raw or "").strip() if field.kind != "secret" else (raw or "")
        if raw == "":
            if field.kind == "secret" and stored is not None and field.name in stored:
                settings[field.name] = stored[field.name]
            elif field.required:
                settings[field.name] = raw  # the schema says what is wrong with it
            continue
        if field.kind == "number":
            try:
                settings[field.name] = int(raw) if field.integer else float(raw)
            except ValueError:
                settings[field.name] = raw
        elif field.kind == "json":
            try:
                settings[field.name] = json.loads(raw)
            except ValueError:
                problems.append(f"settings.{field.name}: not JSON")
        else:
            settings[field.name] = raw
    return settings, problems
