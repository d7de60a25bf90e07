"""``--set SECTION.KEY=TOML_VALUE`` for the benchmarks that explore configuration variants."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

__all__ = ["add_set_argument", "parse_override"]


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.dim=128"`` -> ``("model.dim", 128)``; the value is read as TOML."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.KEY=TOML_VALUE")
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not TOML ({e})") from e


def add_set_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=parse_override,
        metavar="SECTION.KEY=VALUE",
        help="configuration override, the value in TOML, e.g. model.dim=128 (repeatable)",
    )
