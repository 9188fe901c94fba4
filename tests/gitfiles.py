"""What git makes of files in a repository: for the tests of .gitignore files."""

from __future__ import annotations

import subprocess
from pathlib import Path


def untracked_after_making(repository: Path, *files: str) -> list[str]:
    """Make ``files`` in a fresh git repository at ``repository``: those git would offer to commit."""
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    for name in files:
        (repository / name).parent.mkdir(parents=True, exist_ok=True)
        (repository / name).write_text(".tox/type\n", encoding="utf-8")  # a .venv file as some tools write
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *files],
        cwd=repository,
        check=True,
        capture_output=True,
        text=True,
    )
    return [line[3:] for line in status.stdout.splitlines()]
