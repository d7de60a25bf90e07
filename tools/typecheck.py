"""Type-check the package as it is installed: ``tailored.<folder>`` for each mapped folder.

pyproject maps top-level folders (``data/``, ``train/``...) to subpackages of ``tailored``
through setuptools' ``package-dir``. The editable install resolves that with an import hook
that type checkers cannot follow, so this script builds the same layout as a tree of
symbolic links under ``.typecheck/`` and runs mypy on it (plus the tests and benchmarks).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_tree() -> Path:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = cfg["tool"]["setuptools"]["package-dir"]
    out = ROOT / ".typecheck"
    shutil.rmtree(out, ignore_errors=True)
    top = out / "tailored"
    top.mkdir(parents=True)
    for src in (ROOT / mapping["tailored"]).iterdir():
        if src.suffix in (".py", ".typed"):
            (top / src.name).symlink_to(src)
    for package, folder in mapping.items():
        link = out / package.replace(".", "/")
        # a folder inside another mapped folder (serve/v1 in serve/) is already there
        if package != "tailored" and not link.exists():
            link.symlink_to(ROOT / folder, target_is_directory=True)
    return out


def main() -> int:
    tree = build_tree()
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        str(tree / "tailored"),
    ]
    code = subprocess.call(cmd, cwd=tree)
    if code:
        return code
    # tests and benchmarks import the installed package; check them against the tree
    env_path = str(tree)
    return subprocess.call(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "tests",
            "benchmarks",
            "tools",
        ],
        cwd=ROOT,
        env={**__import__("os").environ, "MYPYPATH": env_path},
    )


if __name__ == "__main__":
    raise SystemExit(main())
