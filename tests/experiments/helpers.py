"""What the experiment tests (and benchmarks) share: an experiments file's text, a two-variant
experiment and a synthetic event log with a planted lift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailored.experiments import Assigner, parse_experiments
from tailored.experiments.analysis import Event


def experiment_toml(
    name: str,
    layer: str,
    salt: str,
    variants: Sequence[tuple[str, float, Mapping[str, Any]]],
    *,
    control: str | None = None,
    start: str = "1990-01-01T00:00:00Z",
    end: str = "2100-01-01T00:00:00Z",
    traffic: float = 1.0,
) -> str:
    """One ``[[experiment]]`` of an experiments file: ``variants`` as (name, weight, changes);
    by default running over any time a test or a simulation uses, on all of its layer."""
    out = [f'\n[[experiment]]\nname = "{name}"\nlayer = "{layer}"\nsalt = "{salt}"']
    if traffic != 1.0:
        out.append(f"traffic = {traffic}")
    out.append(f"start = {start}\nend = {end}")
    if control is not None:
        out.append(f'control = "{control}"')
    for variant, weight, changes in variants:
        out.append(f'\n[[experiment.variant]]\nname = "{variant}"\nweight = {weight}')
        out += [f"{key} = {_toml_value(value)}" for key, value in changes.items()]
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def personalization(salt: str, *, start: str = "1990-01-01T00:00:00Z") -> str:
    """The popularity control against the personalized page, half and half."""
    return experiment_toml(
        "personalization",
        "content",
        salt,
        [("popular", 0.5, {"popularity": True}), ("personalized", 0.5, {})],
        control="popular",
        start=start,
    )


DAY = 86_400_000
START_MS = 1_764_547_200_000  # 2025-12-01


def experiment(weights: tuple[float, float] = (0.5, 0.5)) -> Any:
    return parse_experiments(
        {
            "experiment": [
                {
                    "name": "ranker",
                    "layer": "l",
                    "salt": "s",
                    "start": "2025-12-01T00:00:00+00:00",
                    "end": "2026-01-01T00:00:00+00:00",
                    "variant": [
                        {"name": "control", "weight": weights[0]},
                        {"name": "treatment", "weight": weights[1], "ranker": False},
                    ],
                }
            ]
        }
    )


def event_log(lift: float, *, users: int = 4000, seed: int = 0, drop: float = 0.0) -> list[Event]:
    """Users exposed over 7 days; each with a propensity that drives their clicks before and
    after exposure (so the pre-period predicts the post-period), treatment clicks x (1+lift);
    ``drop``: that share of the treatment's exposures never logged (a broken pipeline)."""
    exps = experiment()
    assigner = Assigner(exps)
    rng = np.random.default_rng(seed)
    log: list[Event] = []
    for i in range(users):
        user = f"{i:032x}"
        (a,) = assigner.assign(user, START_MS / 1000 + 1)
        if a.variant == "treatment" and rng.random() < drop:
            continue
        exposed = START_MS + int(rng.uniform(0, 7 * DAY))
        rate = rng.gamma(2.0, 1.0)
        for _ in range(rng.poisson(rate)):  # before: the CUPED covariate
            log.append((user, "click", "item", exposed - int(rng.uniform(1, 13 * DAY)), 0.0))
        log.append((user, "exposure", f"ranker:{a.variant}", exposed, 0.0))
        after = rate * (1 + lift if a.variant == "treatment" else 1.0)
        for _ in range(rng.poisson(after)):
            log.append((user, "click", "item", exposed + int(rng.uniform(0, DAY)), 0.0))
        for _ in range(rng.poisson(8)):
            log.append((user, "impression", "item", exposed + 1, 0.0))
        log.append((user, "view", "item", exposed + 2, float(rng.exponential(30))))
    return log
