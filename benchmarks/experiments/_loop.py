"""The closed loop the experiment benchmarks share: ``tailored serve`` with an experiments
file, ``tailored simulate`` against it, and the events the server stored."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.serving._bundle import env
from benchmarks.serving._procs import ServerProcess, _serving_port
from tailored.experiments.analysis import Event
from tailored.serve.simulator import SimulationReport

__all__ = ["TOKEN", "serve_and_simulate"]

TOKEN = "experiments-admin-token"  # the simulator reads the server's clock through Status


def serve_and_simulate(
    bundle: Path,
    dataset: Path,
    experiments: Path,
    work: Path,
    *,
    users: int,
    days: float,
    seed: int = 0,
    fatigue: float = 0.5,
    event_types: set[str] | None = None,
    serve_toml: str = "",
    modules: Sequence[Any] = (),
    k: int = 10,
) -> tuple[list[Event], SimulationReport]:
    """Serve ``bundle`` (a version; its state a new SQLite file in ``work``) with the
    ``experiments`` file, simulate ``users`` of ``dataset`` for ``days`` days against it, stop
    it, and return the events it stored (of ``event_types`` if given) and the simulation's
    report. ``serve_toml``: a serving configuration's text, for ``--config``; ``modules``:
    simulate pages of these (``Page``, ``k`` items each) instead of ``Recommend`` lists."""
    from tailored.serve.simulator import simulate
    from tailored.serve.sqlite_state import SQLiteState

    state = work / "state.db"
    cmd = [sys.executable, "-m", "tailored.cli", "serve", str(bundle), "--port", "0"]
    cmd += ["--state", f"sqlite:///{state}", "--clock", "bundle", "--no-watch"]
    cmd += ["--experiments", str(experiments)]
    if serve_toml:
        (work / "serve.toml").write_text(serve_toml)
        cmd += ["--config", str(work / "serve.toml")]
    e = {**env(), "TAILORED_ADMIN_TOKEN": TOKEN}
    server = ServerProcess(cmd, work / "server.log", e, _serving_port).wait_ready(600)
    try:
        report = simulate(
            server.target,
            dataset,
            users=users,
            days=days,
            seed=seed,
            fatigue=fatigue,
            token=TOKEN,
            modules=modules,
            k=k,
        )
    finally:
        server.stop()
    with SQLiteState(state) as s:
        events = [(u, ev.type, ev.item_id, ev.time_ms, ev.value) for u, ev in s.scan(event_types)]
    return events, report
