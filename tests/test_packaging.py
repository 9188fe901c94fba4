"""What the distributions ship and say about themselves, and what the repository keeps out of them.

The core and each first-party plugin are built as a package index would get them: an sdist,
then a wheel built from that sdist (so the sdist is proven complete), each checked with
``twine check --strict`` (the metadata and README rendering PyPI's upload applies).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import msgspec
import pytest
from gitfiles import untracked_after_making

import amoconnect
from amoconnect.config import Config

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(path for path in (ROOT / "plugins").glob("*") if (path / "pyproject.toml").is_file())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
REPOSITORY = PROJECT["urls"]["Repository"]
SDIST_TOP = {"PKG-INFO", "pyproject.toml", ".gitignore", "README.md", "CONTRIBUTING.md", "LICENSE"}
SDIST_TOP |= {"amoconnect", "plugin_template", "docs", "tests"}


def _build(project: Path, out: Path) -> tuple[Path, Path]:
    """Build ``project``'s sdist, then a wheel from that sdist, into ``out``, offline."""
    out.mkdir(parents=True, exist_ok=True)
    hatchling = [sys.executable, "-m", "hatchling", "build", "-d", str(out)]
    subprocess.run([*hatchling, "-t", "sdist"], cwd=project, check=True, capture_output=True)
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later; Debian 12's 3.11.2 has no filters
            archive.extractall(out / "unpacked", filter="data")
        else:  # our own freshly built sdist
            archive.extractall(out / "unpacked")
    (unpacked,) = (out / "unpacked").iterdir()
    subprocess.run([*hatchling, "-t", "wheel"], cwd=unpacked, check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def _metadata(wheel: Path) -> HeaderParser:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return HeaderParser().parsestr(archive.read(name).decode())  # type: ignore[return-value]


@pytest.mark.slow
def test_every_distribution_builds_from_its_sdist_and_passes_twine_check(tmp_path: Path) -> None:
    for tool in ("hatchling", "twine"):
        if importlib.util.find_spec(tool) is None:
            pytest.fail(f"the packaging test needs {tool}: python -m pip install -e '.[test]'")
    built = [_build(project, tmp_path / project.name) for project in [ROOT, *PLUGINS]]
    files = [str(path) for pair in built for path in pair]
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True)
    assert twine.returncode == 0, twine.stdout + twine.stderr
    assert twine.stdout.count("PASSED") == len(files)

    sdist, wheel = built[0]
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    assert {name.split("/")[0] for name in names} == SDIST_TOP
    assert not [name for name in names if re.search(r"(^|/)(\.venv|\.ci|bench|__pycache__)(/|$)", name)]
    with zipfile.ZipFile(wheel) as archive:
        assert "amoconnect/_plugin_template/cookiecutter.json" in archive.namelist()  # new-plugin from a wheel
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist())
    urls = dict(value.split(", ", 1) for value in _metadata(wheel).get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    for (plugin_sdist, plugin_wheel), project in zip(built[1:], PLUGINS, strict=True):
        meta = _metadata(plugin_wheel)
        assert meta.get_all("Requires-Dist")[0] == "amoconnect<0.2,>=0.1", project.name
        assert {value.split(", ", 1)[0] for value in meta.get_all("Project-URL")} >= {"Homepage", "Repository"}
        with tarfile.open(plugin_sdist) as archive:
            assert any("/tests/" in name for name in archive.getnames()), project.name
        with zipfile.ZipFile(plugin_wheel) as archive:
            assert any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist()), project.name


def test_first_party_plugins_allow_this_minor_version_of_amoconnect_only() -> None:
    major, minor = amoconnect.__version__.split(".")[:2]
    for project in PLUGINS:
        meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert f"amoconnect>={major}.{minor},<{major}.{int(minor) + 1}" in meta["dependencies"], project.name


@pytest.mark.parametrize("readme", ["README.md", *(f"plugins/{p.name}/README.md" for p in PLUGINS)])
def test_readme_links_work_on_a_package_index(readme: str) -> None:
    """A package index shows the README alone: every link is absolute, and those into the
    repository name files that exist."""
    text = (ROOT / readme).read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        assert re.match(r"https?://|mailto:|#", link), f"{readme}: relative link {link}"
        inside = re.match(re.escape(REPOSITORY) + r"/(?:blob|tree)/main/(.+?)(#.*)?$", link)
        if inside:
            assert (ROOT / inside.group(1)).exists(), f"{readme}: {link} names no file of the repository"


def test_the_repository_ignores_a_venv_file_or_directory(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    assert untracked_after_making(tmp_path, ".venv", "plugins/x/.venv", "bench/out/relay.json", "keep.py") == [
        "keep.py"
    ]


def test_docs_speak_of_the_project_only() -> None:
    """No tracker's issue numbers in the docs, the code or the scripts."""
    texts = [
        path
        for pattern in ("*.md", "**/*.md", "**/*.py", "**/*.toml")
        for path in ROOT.glob(pattern)
        if not {".tox", ".venv", "node_modules"} & set(path.relative_to(ROOT).parts)
    ]
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in texts
        for match in re.finditer(r"\b[Ii]ssues? #?\d+\b", path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert found == []


def test_readme_lists_every_configuration_key() -> None:
    """README's configuration table has a row per section, naming each of its keys."""
    rows = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for section in msgspec.structs.fields(Config):
        kind, many = section.type, False
        if getattr(kind, "__origin__", None) is list:
            kind, many = kind.__args__[0], True
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            continue
        head = f"| `[[{section.name}]]` |" if many else f"| `[{section.name}]` |"
        (row,) = [line for line in rows if line.startswith(head)]
        for key in msgspec.structs.fields(kind):
            named = f"`{key.name}`" in row or f"`[{section.name}.{key.name}]`" in row
            assert named, f"README's {head} row leaves out {key.name}"


def test_benchmarks_keep_the_committed_results_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("_bench_support", ROOT / "bench" / "_support.py")
    if spec is None or spec.loader is None or not (ROOT / "bench").is_dir():
        pytest.skip("the benchmarks are not in this tree (an sdist)")
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    monkeypatch.setattr(support, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(support, "SCRATCH_DIR", tmp_path / "out")
    assert support.write_results("relay", {"a": 1}, save=False) == tmp_path / "out" / "relay.json"
    assert not (tmp_path / "results").exists()
    assert support.write_results("relay", {"a": 1}, save=True) == tmp_path / "results" / "relay.json"
    assert support.SCRATCH_DIR != support.RESULTS_DIR
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    readme = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    count = ["One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"][len(scripts) - 1]
    assert f"{count} scripts, run from the repository root" in readme
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        assert "add_save_option(parser)" in source and "save=args.save" in source, script.name
        assert f"`{script.name}`" in readme, script.name
