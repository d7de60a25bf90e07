"""Where tailored keeps things outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["dataset_dir", "tailored_home"]


def tailored_home() -> Path:
    """``$TAILORED_HOME``, default ``~/.cache/tailored``: fetched data, keys, caches."""
    return Path(os.environ.get("TAILORED_HOME", Path.home() / ".cache" / "tailored")).expanduser()


def dataset_dir(name_or_path: str | Path) -> Path:
    """A dataset given by path, or by name under ``$TAILORED_HOME/datasets``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() or p.is_absolute() or "/" in str(name_or_path):
        return p
    return tailored_home() / "datasets" / str(name_or_path)
