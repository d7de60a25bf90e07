"""Check the import contracts of ``pyproject.toml`` (``[tool.importlinter]``) with
import-linter, on the package laid out as it is installed.

The editable install maps top-level folders to subpackages through an import hook that
import-linter's graph builder cannot follow, so this runs it on the tree of symbolic links
that :mod:`tools.typecheck` builds (``.typecheck/tailored``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from typecheck import ROOT, build_tree


def main() -> int:
    tree = build_tree()
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [str(lint), str(ROOT / "pyproject.toml")]
    return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
