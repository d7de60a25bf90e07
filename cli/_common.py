"""What the command groups share."""

from __future__ import annotations

from typing import Any

__all__ = ["Sub"]

Sub = Any  # argparse's _SubParsersAction is private
