"""Print the project's dependencies, one per line, from pyproject.toml alone (no source needed), plus those
of the optional extras named in the first argument (``postgres,dkim,html``).

The container build installs them in a layer of their own, so that layer is rebuilt only when the
dependencies change, not on every change to the code:

    python requirements.py postgres,dkim > requirements.txt
"""

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The dependencies of ``pyproject`` and of each extra in ``extras``; SystemExit for an unknown extra."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"unknown extra {', '.join(unknown)}; choose from {', '.join(sorted(optional))}")
    return project["dependencies"] + [dependency for name in extras for dependency in optional[name]]


if __name__ == "__main__":
    names = [name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name]
    print("\n".join(requirements(Path("pyproject.toml"), names)))
