"""``tailored experiment list | status | report`` on a real SQLite online state holding
exposures and events, as a server writes them: the JSON has every figure, the HTML page is
self-contained, and a bad name or file is a clear error."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from tailored.cli import main
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import StoredEvent
from tests.experiments.helpers import event_log, experiment_toml

EXPERIMENTS = experiment_toml(
    "ranker",
    "l",
    "s",
    [("control", 0.5, {}), ("treatment", 0.5, {"ranker": False})],
    start="2025-12-01T00:00:00Z",
    end="2026-01-01T00:00:00Z",
)
NOW = "2025-12-09T00:00:00+00:00"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("experiment-cli")
    (base / "experiments.toml").write_text(EXPERIMENTS)
    by_user: dict[str, list[StoredEvent]] = defaultdict(list)
    for user, kind, item, time_ms, value in event_log(0.2, users=1500):
        by_user[user].append(StoredEvent(item, kind, time_ms, value, "home"))
    with SQLiteState(base / "state.db") as state:
        state.record(by_user, default_allows=True)
    return base, f"sqlite:///{base / 'state.db'}"


def _args(base: Path, state: str, *rest: str) -> list[str]:
    return [*rest, "--experiments", str(base / "experiments.toml"), "--state", state, "--now", NOW]


def test_list_and_status(setup: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    base, state = setup
    assert (
        main(["experiment", "list", "--experiments", str(base / "experiments.toml"), "--now", NOW])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("ranker\trunning\tlayer l") and "control 0.5, treatment 0.5" in out
    assert main(["experiment", *_args(base, state, "status", "ranker")]) == 0
    out = capsys.readouterr().out
    assert "ranker: running, 1,500 users exposed over" in out
    counts = [
        int(line.rsplit(": ", 1)[1].split()[0].replace(",", "")) for line in out.splitlines()[1:]
    ]
    assert sum(counts) == 1500 and min(counts) > 600


def test_report_json_and_a_self_contained_page(
    setup: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, state = setup
    page = tmp_path / "report.html"
    args = _args(base, state, "report", "ranker", "--json", "--html", str(page))
    assert main(["experiment", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["users"] == 1500 and result["srm"]["mismatch"] is False
    assert result["metrics"]["clicks"]["treatment"]["fixed"]["significant"]
    html = page.read_text()
    assert "<svg" in html and "Verdicts" in html and "clicks per user, treatment" in html
    assert "http" not in html and "<script" not in html  # nothing fetched, nothing run
    assert main(["experiment", *_args(base, state, "report", "ranker")]) == 0
    assert "better than control" in capsys.readouterr().out


def test_a_bad_name_or_file_is_a_clear_error(
    setup: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, state = setup
    assert main(["experiment", *_args(base, state, "report", "nope")]) == 2
    assert "no experiment 'nope' (['ranker'])" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(EXPERIMENTS.replace("weight = 0.5\nranker", "weight = 0.6\nranker"))
    assert main(["experiment", "list", "--experiments", str(bad)]) == 2
    assert "'ranker': variant weights sum to 1.1" in capsys.readouterr().err


def test_users_without_analytics_consent_are_left_out_of_the_metrics(
    setup: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    base, _ = setup
    shutil.copy(base / "state.db", tmp_path / "state.db")
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with SQLiteState(tmp_path / "state.db") as s:
        users = sorted({u for u, _ in s.scan({"exposure"})})
        for u in users[:100]:  # personalization kept: their events stay, but not in analyses
            s.set_consent(u, ["personalization"])
        for u in users[100:150]:
            s.set_consent(u, ["personalization", "analytics"])
    args = _args(base, state, "status", "ranker")
    assert main(["experiment", *args]) == 0
    assert "1,500 users exposed" in capsys.readouterr().out
    assert main(["experiment", *args, "--analytics-purpose", "analytics"]) == 0
    assert "1,400 users exposed" in capsys.readouterr().out
