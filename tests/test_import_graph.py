"""The import graph of the core and the first-party plugins is a tree (no two modules import each
other, directly or round about), and the plugin contract stands on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "amoconnect", *sorted((ROOT / "plugins").glob("*/amoconnect_*"))]
CONTRACT = ("amoconnect.adapter", "amoconnect.model", "amoconnect.capabilities", "amoconnect.errors")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            parts = path.relative_to(package.parent).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules ``name`` imports, at any level (TYPE_CHECKING and function bodies too);
    a package's own ``__init__`` is not counted as imported by its submodules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            candidates = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in modules and c != name and not name.startswith(c + "."))
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for target in graph[node]:
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_module_imports_itself_round_about() -> None:
    graph = _graph()
    assert len(graph) > 50  # the walk found the packages
    cycles = {" → ".join(c) for name in graph if (c := _cycle_from(name, graph))}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_plugin_contract_does_not_reach_into_amojo_or_the_store() -> None:
    graph = _graph()
    reached: set[str] = set()
    todo = list(CONTRACT)
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    inner = sorted(m for m in reached if m.startswith(("amoconnect.amojo", "amoconnect.store")))
    assert not inner, f"the plugin contract imports {inner}"


def test_the_check_sees_a_cycle(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle_from("a", graph) == ["a", "b", "c", "a"]
    assert _cycle_from("d", graph) is None
