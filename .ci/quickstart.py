"""Print README's quick-start commands, one a line, as README has them (``1`` or ``2``: only that one).

The commands are the lines of the first ``sh`` block under "## Quick start"; `.ci/run` runs them
verbatim in a fresh clone, so README cannot drift from what works.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start(readme: str) -> list[str]:
    """The commands of the first ``sh`` block of README's "Quick start" section."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    if section is None:
        raise SystemExit("README.md has no '## Quick start' section")
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    if block is None:
        raise SystemExit("README.md's quick start has no ```sh block")
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    if len(commands) != 2:
        raise SystemExit(f"README.md's quick start should hold two commands, not {len(commands)}: {commands}")
    return commands


if __name__ == "__main__":
    commands = quick_start(README.read_text(encoding="utf-8"))
    print(commands[int(sys.argv[1]) - 1] if len(sys.argv) > 1 else "\n".join(commands))
