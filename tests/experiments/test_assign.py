"""Assignment is a pure function of the pseudonymous user id: the declared shares are what
users get, experiments of a layer never share a user, layers and experiments are
independent, and the holdout is in none."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats

from tailored.experiments import Assigner, parse_experiments, unit

NOW = dt.datetime(2026, 12, 15, tzinfo=dt.UTC).timestamp()
USERS = [f"{i:032x}" for i in range(40_000)]  # pseudonyms are hex digests


def _experiment(name: str, layer: str, weights: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "layer": layer,
        "salt": f"salt-{name}",
        "start": "2026-12-01T00:00:00+00:00",
        "end": "2027-01-01T00:00:00+00:00",
        "variant": [{"name": f"v{i}", "weight": w} for i, w in enumerate(weights)],
        **extra,
    }


ASSIGNER = Assigner(
    parse_experiments(
        {
            "holdout": {"share": 0.1, "salt": "hold"},
            "experiment": [
                _experiment("a", "one", [0.5, 0.5], traffic=0.3),
                _experiment("b", "one", [0.2, 0.3, 0.5], traffic=0.7, traffic_offset=0.3),
                _experiment("c", "two", [0.5, 0.5]),
                _experiment(
                    "later",
                    "three",
                    [0.5, 0.5],
                    start="2027-01-01T00:00:00+00:00",
                    end="2027-02-01T00:00:00+00:00",
                ),
            ],
        }
    )
)
ASSIGNED = {u: {a.experiment: a.variant for a in ASSIGNER.assign(u, NOW)} for u in USERS}


def test_the_same_user_always_gets_the_same_variants() -> None:
    again = Assigner(ASSIGNER.experiments)
    for u in USERS[:2000]:
        assert {a.experiment: a.variant for a in again.assign(u, NOW)} == ASSIGNED[u]
    assert 0.0 <= unit("variant", "s", "u") < 1.0
    assert unit("variant", "s", "u") == unit("variant", "s", "u")
    assert unit("variant", "s", "u") != unit("variant", "t", "u")


def test_the_holdout_is_in_no_experiment_and_has_its_share() -> None:
    held = [u for u in USERS if ASSIGNER.in_holdout(u)]
    assert all(ASSIGNED[u] == {} for u in held)
    assert stats.binomtest(len(held), len(USERS), 0.1).pvalue > 0.001
    # everyone else is in exactly one experiment of layer "one", and in "c"
    rest = [u for u in USERS if not ASSIGNER.in_holdout(u)]
    assert all(("a" in ASSIGNED[u]) != ("b" in ASSIGNED[u]) for u in rest)
    assert all("c" in ASSIGNED[u] for u in rest)


def test_experiments_of_one_layer_split_it_by_their_traffic() -> None:
    rest = [u for u in USERS if not ASSIGNER.in_holdout(u)]
    in_a = sum("a" in ASSIGNED[u] for u in rest)
    assert stats.binomtest(in_a, len(rest), 0.3).pvalue > 0.001


def test_variants_get_their_weights() -> None:
    for name, weights in (("b", [0.2, 0.3, 0.5]), ("c", [0.5, 0.5])):
        counts = Counter(ASSIGNED[u][name] for u in USERS if name in ASSIGNED[u])
        observed = [counts[f"v{i}"] for i in range(len(weights))]
        expected = np.array(weights) * sum(observed)
        assert stats.chisquare(observed, expected).pvalue > 0.001, (name, observed)


def test_layers_are_independent() -> None:
    # which half of layer "one" (a or b) and which variant of "c": a contingency table
    table = Counter(
        ("a" in ASSIGNED[u], ASSIGNED[u]["c"]) for u in USERS if not ASSIGNER.in_holdout(u)
    )
    grid = [[table[(x, v)] for v in ("v0", "v1")] for x in (True, False)]
    assert stats.chi2_contingency(grid).pvalue > 0.001
    # and variants of two experiments with different salts do not move together
    pairs = Counter((ASSIGNED[u]["b"], ASSIGNED[u]["c"]) for u in USERS if "b" in ASSIGNED[u])
    grid = [[pairs[(x, y)] for y in ("v0", "v1")] for x in ("v0", "v1", "v2")]
    assert stats.chi2_contingency(grid).pvalue > 0.001


def test_only_running_experiments_assign() -> None:
    assert all("later" not in a for a in ASSIGNED.values())
    after = dt.datetime(2027, 1, 15, tzinfo=dt.UTC).timestamp()
    got = [{a.experiment for a in ASSIGNER.assign(u, after)} for u in USERS[:500]]
    assert all(g <= {"later"} for g in got) and any(g == {"later"} for g in got)
    assert set(itertools.chain.from_iterable(got)) == {"later"}


def test_the_control_is_marked() -> None:
    for a in ASSIGNER.assign(USERS[0], NOW):
        assert a.control == (a.variant == "v0")
