"""The plugin template, tested by running what it generates.

A rendered project is installed into a throwaway virtual environment that sees this one's
packages (the local amoconnect among them), so nothing is installed here and nothing is
downloaded but, without hatchling at hand, the build backend; then its own tests run there,
amoconnect's conformance suite among them.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import random
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner
from gitfiles import untracked_after_making

import amoconnect
from amoconnect.capabilities import Capability
from amoconnect.cli import main
from amoconnect.errors import AmoconnectError
from amoconnect.scaffold import CAPABILITY_PREFIX, render_plugin, template_dir
from amoconnect.testing.conformance import MessengerConformance

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
    pyproject = tomllib.loads((TEMPLATE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert defaults["__amoconnect_repository"] == pyproject["project"]["urls"]["Repository"]
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
    ci = (project / ".github/workflows/ci.yml").read_text(encoding="utf-8")
    assert "${{ matrix.python-version }}" in ci
    # until amoconnect is on PyPI, tox takes it from AMOCONNECT_SPEC (.ci/run runs a generated tox so)
    assert 'AMOCONNECT_SPEC: "amoconnect @ git+https://github.com/amoconnect/amoconnect@main"' in ci
    tox = (project / "tox.ini").read_text(encoding="utf-8")
    assert tox.count("{env:AMOCONNECT_SPEC:}") == 2  # the tests' environment and mypy's
    assert untracked_after_making(project, ".venv", ".venv-dir/.venv/bin/python", "build/x.whl") == []


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
    result = runner.invoke(main, ["new-plugin", *args])
    assert result.exit_code == 0, result.output
    assert f"Created {tmp_path / 'amoconnect-viber'}" in result.output
    assert "python -m pytest" in result.output
    assert (tmp_path / "amoconnect-viber" / "viberkit" / "adapter.py").is_file()
    again = runner.invoke(main, ["new-plugin", "Viber", "-o", str(tmp_path)])
    assert again.exit_code == 1
    assert "already exists; choose another --output-dir, or pass --overwrite" in again.output
    assert runner.invoke(main, ["new-plugin", "Viber", "-o", str(tmp_path), "--overwrite"]).exit_code == 0
    unknown = runner.invoke(main, ["new-plugin", "Viber", "-c", "telepathy"])
    assert unknown.exit_code == 2
    assert "'telepathy' is not one of" in unknown.output


def test_new_plugin_without_cookiecutter_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cookiecutter.main", None)
    result = CliRunner().invoke(main, ["new-plugin", "Viber"])
    assert result.exit_code == 1
    assert "needs cookiecutter: python -m pip install 'cookiecutter>=2.6'" in result.output


# -- running what it generates -------------------------------------------------------------------
#
# 13 yes/no capabilities make 8,192 projects. Every pair of capabilities, in each of its four
# yes/no combinations, changes the template together somewhere, so the full checks (install,
# ruff check and format, mypy strict, the project's own tests with the conformance suite) run on
# a covering array: 7 projects in which every pair of capabilities takes all four combinations
# (the first is text-only), and beside them the project with every capability and the template's
# defaults (what `amoconnect new-plugin NAME` renders). Lint alone is cheap: it runs on those and
# on a fixed-seed random sample of 40 more combinations.


def covering_array(factors: int) -> list[list[bool]]:
    """Rows of yes/no values for ``factors`` columns in which every pair of columns shows all four
    combinations (a strength-2 covering array; the first row is all no).

    Column j is the j-th subset of size ceil(N/2) of rows 1..N-1, for the smallest N with enough
    such subsets: two distinct subsets of one size each hold a row the other lacks, and two subsets
    of more than half the rows share one, while row 0 is no everywhere.
    """
    rows = 2
    while math.comb(rows - 1, math.ceil(rows / 2)) < factors:
        rows += 1
    columns = list(itertools.combinations(range(1, rows), math.ceil(rows / 2)))[:factors]
    return [[row in column for column in columns] for row in range(rows)]


def _chosen(row: list[bool]) -> list[str]:
    return [capability for capability, yes in zip(EVERYTHING, row, strict=True) if yes]


COVERING = [_chosen(row) for row in covering_array(len(EVERYTHING))]
CHECKED: list[tuple[str, list[str] | None]] = [
    *((f"Cover {i}", capabilities) for i, capabilities in enumerate(COVERING)),
    ("Every Chat", EVERYTHING),
    ("Default Chat", None),
]
"""The projects the full checks run on: (messenger name, capabilities; None for the defaults)."""


def test_the_checked_projects_cover_every_pair_of_capabilities() -> None:
    assert len(COVERING) == 7
    assert COVERING[0] == []
    for a, b in itertools.combinations(EVERYTHING, 2):
        seen = {(a in chosen, b in chosen) for chosen in COVERING}
        assert seen == {(False, False), (False, True), (True, False), (True, True)}, (a, b)


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


def _run(command: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environ.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **env)
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def _checked(done: subprocess.CompletedProcess[str], what: str) -> None:
    assert done.returncode == 0, f"{what}:\n{done.stdout}{done.stderr}"


def _ruff(projects: list[Path], cwd: Path) -> None:
    """ruff check and ruff format --check over the projects, each under its own pyproject's settings."""
    for command in (["check"], ["format", "--check"]):
        _checked(_run([sys.executable, "-m", "ruff", *command, *projects], cwd), f"ruff {' '.join(command)}")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The checked projects rendered, linted and installed (editable) into one throwaway venv:
    its python, and each project by messenger name."""
    for tool in ("ruff", "mypy"):
        if importlib.util.find_spec(tool) is None:
            pytest.fail(f"the template tests need {tool}: python -m pip install -e '.[test]'")
    where = tmp_path_factory.mktemp("generated")
    projects = {name: render(where / name.replace(" ", "-"), name, capabilities) for name, capabilities in CHECKED}
    _ruff(list(projects.values()), where)
    python = _venv(where / "venv")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    if importlib.util.find_spec("hatchling") is not None:
        install.append("--no-build-isolation")  # build with the hatchling at hand, offline
    for project in projects.values():
        install += ["-e", project]
    _checked(_run(install, where), "pip install")
    return python, projects


@pytest.mark.slow
def test_a_random_sample_of_combinations_is_lint_clean(tmp_path: Path) -> None:
    sample = random.Random(15).sample(range(2 ** len(EVERYTHING)), 40)
    projects = [
        render(tmp_path / str(bits), f"Sample {bits}", [c for i, c in enumerate(EVERYTHING) if bits >> i & 1])
        for bits in sample
    ]
    _ruff(projects, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "capabilities"), CHECKED, ids=[name for name, _ in CHECKED])
def test_a_generated_plugin_passes_its_types_and_tests(
    generated: tuple[Path, dict[str, Path]], name: str, capabilities: list[str] | None
) -> None:
    python, projects = generated
    project = projects[name]
    cache = str(project.parent.parent / "mypy-cache")  # shared: amoconnect's own modules are checked once
    _checked(_run([python, "-m", "mypy"], project, MYPY_CACHE_DIR=cache), f"mypy in {project.name}")

    report = project / "report.xml"
    tested = _run(
        [python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", f"--junitxml={report}"], project
    )
    _checked(tested, f"pytest in {project.name}")
    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        outcomes[f"{case.get('classname')}.{case.get('name')}"] = (
            "passed" if skipped is None else f"skipped: {skipped.get('message')}"
        )
    assert outcomes["tests.test_plugin.test_the_entry_point_registers_the_messenger"] == "passed"
    declared = set(EVERYTHING if capabilities == EVERYTHING else capabilities or [])
    if capabilities is None:
        defaults = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
        declared = {c for c in EVERYTHING if defaults[CAPABILITY_PREFIX + c]}
    for test, needed in _conformance_needs().items():
        outcome = outcomes[f"tests.test_conformance.TestConformance.{test}"]
        missing = sorted(needed - declared)
        if missing:
            assert outcome.startswith("skipped:") and "does not declare capability" in outcome, (test, outcome)
        else:  # a test may skip for what the messenger lacks beside capabilities, never for a declared one
            assert "does not declare" not in outcome, (test, outcome)


def _conformance_needs() -> dict[str, set[str]]:
    """Each conformance test by name: the capabilities it needs."""
    return {
        name: {str(capability) for capability in getattr(test, "conformance_needs", ())}
        for name, test in vars(MessengerConformance).items()
        if name.startswith("test_")
    }
