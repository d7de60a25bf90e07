"""Exposures are written off the request path: handed to one writer thread that stores
whatever is waiting in one write (a real SQLite state), writes what is pending before it
stops, and on a failed write forgets the exposures so that the next request writes them."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from tailored.serve.experiments import EXPOSURE, ExposureWriter
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import StoredEvent


def _exposure(t: int) -> list[StoredEvent]:
    return [StoredEvent("exp:a", EXPOSURE, t, 0.0, "home")]


def test_exposures_arriving_together_go_in_one_write_and_close_writes_the_rest(
    tmp_path: Path,
) -> None:
    """20 exposures 1 ms apart, within the writer's 50 ms: one write (one transaction);
    what is handed over at close is written before close returns."""
    import time

    with SQLiteState(tmp_path / "s.db") as state:
        writes: list[int] = []

        def record(batch: dict[str, list[StoredEvent]]) -> None:
            writes.append(len(batch))
            state.record(batch, default_allows=True)

        outcomes: dict[str, int] = {}
        writer = ExposureWriter(record, lambda o, n: outcomes.update({o: outcomes.get(o, 0) + n}))
        forgotten: list[str] = []
        for i in range(20):
            writer.put(f"u{i}", _exposure(1000 + i), partial(forgotten.append, f"u{i}"))
            time.sleep(0.001)
        writer.flush()
        assert writes == [20]  # grouped: one write, not 20
        writer.put("late", _exposure(2000), partial(forgotten.append, "late"))
        writer.close()
        assert writes == [20, 1] and outcomes == {"written": 21} and forgotten == []
        stored = {u for u, e in state.scan({EXPOSURE})}
        assert stored == {*(f"u{i}" for i in range(20)), "late"}
        writer.put("after", _exposure(3000), partial(forgotten.append, "after"))
        assert forgotten == ["after"]  # closed: written on the user's next request


def test_a_failed_write_forgets_its_exposures_for_the_next_request(tmp_path: Path) -> None:
    calls = 0

    def record(batch: dict[str, list[StoredEvent]]) -> None:
        nonlocal calls
        calls += 1
        raise OSError("disk full")

    outcomes: dict[str, int] = {}
    writer = ExposureWriter(record, lambda o, n: outcomes.update({o: outcomes.get(o, 0) + n}))
    forgotten: list[str] = []
    for user in ("a", "b", "c"):
        writer.put(user, _exposure(1), partial(forgotten.append, user))
    writer.flush()
    assert sorted(forgotten) == ["a", "b", "c"] and outcomes == {"failed": 3} and calls >= 1
    writer.close()
