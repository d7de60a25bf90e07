"""Where tailored keeps things outside the repository, and how it writes a file whole."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "PRIVACY_DIR_ENV",
    "dataset_dir",
    "privacy_dir",
    "tailored_home",
    "write_json_atomic",
    "write_text_atomic",
]

PRIVACY_DIR_ENV = "TAILORED_PRIVACY_DIR"


def tailored_home() -> Path:
    """``$TAILORED_HOME``, default ``~/.cache/tailored``: fetched data, keys, caches."""
    return Path(os.environ.get("TAILORED_HOME", Path.home() / ".cache" / "tailored")).expanduser()


def privacy_dir() -> Path:
    """``$TAILORED_PRIVACY_DIR``, default ``$TAILORED_HOME/privacy``: the tombstone list and
    the audit log, shared by the server, the command line and training on one machine."""
    env = os.environ.get(PRIVACY_DIR_ENV)
    return Path(env).expanduser() if env else tailored_home() / "privacy"


def dataset_dir(name_or_path: str | Path) -> Path:
    """A dataset given by path, or by name under ``$TAILORED_HOME/datasets``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() or p.is_absolute() or "/" in str(name_or_path):
        return p
    return tailored_home() / "datasets" / str(name_or_path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path`` (its folder created if missing), then
    rename it into place: readers see the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` as :func:`write_json_atomic` writes JSON: beside ``path``, then renamed;
    a failure removes the temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
