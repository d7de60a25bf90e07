"""Where the benchmarks read and write: the repository root and the JSON results folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESULTS", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
