"""The plugin template, tested by running what it generates.

A rendered project is installed into a throwaway virtual environment that sees this one's
packages (the local amoconnect among them), so nothing is installed here and nothing is
downloaded but, without hatchling at hand, the build backend; then its own tests run there,
amoconnect's conformance suite among them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import amoconnect
from amoconnect.capabilities import Capability
from amoconnect.errors import AmoconnectError
from amoconnect.scaffold import new_plugin, render_plugin, template_dir

TEMPLATE = Path(__file__).parent.parent / "plugin_template"
EVERYTHING = [str(capability) for capability in Capability]


@pytest.fixture(autouse=True)
def _cookiecutter() -> None:
    if importlib.util.find_spec("cookiecutter") is None:
        pytest.fail("the template tests need cookiecutter: python -m pip install -e '.[test]'")


def render(tmp_path: Path, name: str, capabilities: list[str] | None, **context: str) -> Path:
    """Render the template without reading or writing the user's cookiecutter files."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(f"cookiecutters_dir: {tmp_path / 'cc'}\nreplay_dir: {tmp_path / 'replay'}\n")
    return render_plugin(
        name, tmp_path / "out", capabilities=capabilities, context=dict(context), config_file=str(config)
    )


def test_the_template_is_found_and_names_this_amoconnect() -> None:
    assert template_dir() == TEMPLATE.resolve()
    defaults = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    assert defaults["__amoconnect_version"] == amoconnect.__version__
    asked = {key.removeprefix("with_") for key in defaults if key.startswith("with_")}
    assert asked == set(EVERYTHING)
    assert set(defaults["__prompts__"]) == {key for key in defaults if not key.startswith("_")}


def test_a_rendered_project_is_complete_and_has_no_loose_ends(tmp_path: Path) -> None:
    project = render(tmp_path, "Web Chat", ["media", "templates"], author_name='Ann "A." O\'Neil')
    assert project.name == "amoconnect-web-chat"
    files = {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}
    assert files == {
        ".github/workflows/ci.yml",
        ".gitignore",
        "CONTRIBUTING.md",
        "README.md",
        "amoconnect_web_chat/__init__.py",
        "amoconnect_web_chat/adapter.py",
        "amoconnect_web_chat/fake.py",
        "amoconnect_web_chat/plugin.py",
        "amoconnect_web_chat/py.typed",
        "pyproject.toml",
        "tests/test_adapter.py",
        "tests/test_conformance.py",
        "tests/test_plugin.py",
        "tox.ini",
    }
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "TODO" not in text, path
            assert not re.search(r"\{%|(?<!\$)\{\{", text), f"{path} has template syntax left"
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["entry-points"]["amoconnect"] == {"web_chat": "amoconnect_web_chat.plugin"}
    assert meta["dependencies"] == [f"amoconnect>={amoconnect.__version__},<0.2"]
    assert meta["authors"] == [{"name": 'Ann "A." O\'Neil', "email": "you@example.com"}]
    adapter = (project / "amoconnect_web_chat" / "adapter.py").read_text(encoding="utf-8")
    assert re.findall(r"Capability\.(\w+),", adapter) == ["media", "templates"]
    assert "${{ matrix.python-version }}" in (project / ".github/workflows/ci.yml").read_text(encoding="utf-8")


def test_names_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(AmoconnectError, match="messenger name 'Bad!' must be"):
        render(tmp_path, "Bad!", None)
    with pytest.raises(AmoconnectError, match="refused the names"):
        render(tmp_path, "Fine", None, package_name="class")
    with pytest.raises(AmoconnectError, match="unknown capabilities"):
        render(tmp_path, "Fine", ["telepathy"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_new_plugin_renders_and_says_what_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # cookiecutter keeps its replay files there
    runner = CliRunner()
    args = ["Viber", "-o", str(tmp_path), "-c", "media", "-c", "reactions", "--author", "Ann", "--package", "viberkit"]
    result = runner.invoke(new_plugin, args)
    assert result.exit_code == 0, result.output
    assert f"Created {tmp_path / 'amoconnect-viber'}" in result.output
    assert "python -m pytest" in result.output
    assert (tmp_path / "amoconnect-viber" / "viberkit" / "adapter.py").is_file()
    again = runner.invoke(new_plugin, ["Viber", "-o", str(tmp_path)])
    assert again.exit_code == 1
    assert "already exists; choose another --output-dir, or pass --overwrite" in again.output
    assert runner.invoke(new_plugin, ["Viber", "-o", str(tmp_path), "--overwrite"]).exit_code == 0
    unknown = runner.invoke(new_plugin, ["Viber", "-c", "telepathy"])
    assert unknown.exit_code == 2
    assert "'telepathy' is not one of" in unknown.output


def test_new_plugin_without_cookiecutter_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cookiecutter.main", None)
    result = CliRunner().invoke(new_plugin, ["Viber"])
    assert result.exit_code == 1
    assert "needs cookiecutter: python -m pip install 'cookiecutter>=2.6'" in result.output


# -- running what it generates -------------------------------------------------------------------


def _venv(where: Path) -> Path:
    """A virtual environment whose Python also sees this environment's packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(where)], check=True)
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A venv made from inside another venv sees the base interpreter's packages, not ours: add ours
    # (with their .pth files, so an editable amoconnect stays editable), after the venv's own.
    parents = [path for path in site.getsitepackages() if Path(path).is_dir()]
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in parents)
    (Path(purelib) / "_amoconnect_parent_env.pth").write_text(lines, encoding="utf-8")
    return python


def _run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "capabilities"),
    [("Every Chat", EVERYTHING), ("Plain Chat", [])],
    ids=["every-capability", "text-only"],
)
def test_a_generated_plugin_installs_and_passes_its_tests(tmp_path: Path, name: str, capabilities: list[str]) -> None:
    project = render(tmp_path, name, capabilities)
    python = _venv(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", project]
    if importlib.util.find_spec("hatchling") is not None:
        install.insert(5, "--no-build-isolation")  # build with the hatchling at hand, offline
    installed = _run(install, tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    tested = _run([python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:randomly"], project)
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output
    assert "tests/test_plugin.py::test_the_entry_point_registers_the_messenger PASSED" in output
    assert "tests/test_conformance.py::TestConformance::test_client_text_reaches_amocrm PASSED" in output
    conformance = re.findall(r"tests/test_conformance\.py::TestConformance::(\w+) (PASSED|SKIPPED)", output)
    skipped = [test for test, outcome in conformance if outcome == "SKIPPED"]
    if capabilities == EVERYTHING:
        assert not skipped, f"a plugin declaring everything skipped {skipped}"
    else:
        assert len(skipped) == len(conformance) - 3  # all but text both ways and the refused request


@pytest.mark.slow
def test_generated_code_is_lint_and_type_clean(tmp_path: Path) -> None:
    ruff = shutil.which("ruff")
    if ruff is None or importlib.util.find_spec("mypy") is None:
        pytest.skip("ruff and mypy are not installed (python -m pip install -e '.[dev]')")
    for name, capabilities in (("Every Chat", EVERYTHING), ("The Longest Messenger Name There", [])):
        project = render(tmp_path / name.replace(" ", "-"), name, capabilities)
        for command in ([ruff, "check", "."], [ruff, "format", "--check", "."], [sys.executable, "-m", "mypy"]):
            done = _run(command, project)
            assert done.returncode == 0, f"{command} in {project.name}:\n{done.stdout}{done.stderr}"
