"""Where tailored keeps things outside the repository, and how it writes a file whole."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["dataset_dir", "tailored_home", "write_json_atomic"]


def tailored_home() -> Path:
    """``$TAILORED_HOME``, default ``~/.cache/tailored``: fetched data, keys, caches."""
    return Path(os.environ.get("TAILORED_HOME", Path.home() / ".cache" / "tailored")).expanduser()


def dataset_dir(name_or_path: str | Path) -> Path:
    """A dataset given by path, or by name under ``$TAILORED_HOME/datasets``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() or p.is_absolute() or "/" in str(name_or_path):
        return p
    return tailored_home() / "datasets" / str(name_or_path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path`` (its folder created if missing), then
    rename it into place: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
