"""``tailored page evaluate LOG --policy CONFIG``: a page-ordering policy's value estimated
from the pages a server logged (:mod:`tailored.experiments.offpolicy`), beside the value
each logged policy was observed to have.

``LOG`` is the server's online state (``sqlite:///PATH``, a path, or ``redis://...``), where
every ``Page`` answer is kept ``[serve] page_log_days`` with the clicks Track reported on its
modules. ``CONFIG`` is a TOML file naming the policy::

    policy = "bandit"         # "fixed" (the site's order), "random" or "bandit"
    exploration = "epsilon"   # the bandit's rule and its parameters ([serve] bandit_*)
    epsilon = 0.1
    temperature = 0.05
    scale = 1.0
    ridge = 1.0
    statistics = "store"      # the bandit's arms as LOG's store holds them now, or "log":
                              # fitted on the logged pages (each half by the other's)
    samples = 200             # orders drawn per page for the bandit's marginals

Pages logged by a uniformly random order are used (every slot); ``--logged POLICY`` takes
another exploring policy's pages for the first slot only. With ``statistics = "store"``,
evaluate from pages that did not teach the store's bandit (an experiment variant with
``page_learn = false``, or pages after learning stopped): the output counts those that did,
on which the estimate is optimistic.
"""

from __future__ import annotations

import tomllib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailored.errors import TailoredError
from tailored.experiments.bandit import BanditSettings, LinearBandit
from tailored.experiments.offpolicy import LoggedPage, evaluate, interval, reward_model
from tailored.serve.page import PAGE_POLICIES, model_key
from tailored.serve.state import OnlineState, PageLog

__all__ = ["PolicySpec", "evaluate_log", "read_policy"]

_KEYS = {
    "policy",
    "exploration",
    "epsilon",
    "temperature",
    "scale",
    "ridge",
    "statistics",
    "samples",
}


@dataclass(frozen=True)
class PolicySpec:
    policy: str
    settings: BanditSettings
    statistics: str = "store"
    samples: int = 200


def read_policy(path: Path) -> PolicySpec:
    """The policy file (module docstring), every field checked; errors name the file."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TailoredError(f"{path}: cannot read the policy ({e})") from e
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise TailoredError(f"{path}: unknown field(s) {unknown}; known: {sorted(_KEYS)}")
    policy = doc.get("policy")
    if policy not in PAGE_POLICIES:
        raise TailoredError(f"{path}: policy: must be one of {list(PAGE_POLICIES)}, got {policy!r}")
    try:
        settings = BanditSettings(
            exploration=str(doc.get("exploration", "epsilon")),
            epsilon=float(doc.get("epsilon", 0.1)),
            temperature=float(doc.get("temperature", 0.05)),
            scale=float(doc.get("scale", 1.0)),
            ridge=float(doc.get("ridge", 1.0)),
        )
        settings.check()
    except (TypeError, ValueError) as e:
        raise TailoredError(f"{path}: {e}") from e
    statistics = doc.get("statistics", "store")
    if statistics not in ("store", "log"):
        raise TailoredError(f"{path}: statistics: must be 'store' or 'log', got {statistics!r}")
    samples = doc.get("samples", 200)
    if not isinstance(samples, int) or samples < 1:
        raise TailoredError(f"{path}: samples: must be a positive integer, got {samples!r}")
    return PolicySpec(str(policy), settings, str(statistics), samples)


def _logged(page: PageLog, slots: int) -> LoggedPage:
    modules = tuple((m.id, m.type) for m in page.modules)
    by_slot = sorted(range(len(page.modules)), key=lambda i: page.modules[i].slot)
    n = len(modules)
    chosen, mu, rewards = [], [], []
    for i in by_slot[:slots]:
        m = page.modules[i]
        chosen.append(i)
        mu.append(1.0 / n if page.policy == "random" else m.propensity)  # slot 0: marginal
        rewards.append(1.0 if m.position >= 0 and m.id in page.clicked else 0.0)
    return LoggedPage(
        page.request_id,
        modules,
        dict(page.context),
        tuple(chosen),
        tuple(mu),
        tuple(rewards),
        group=page.user,
    )


def _observed(pages: Sequence[PageLog], slots: int) -> dict[str, Any]:
    """Per logged policy: pages and clicked modules per page in the first ``slots``, the
    interval clustered by user."""
    by: dict[str, tuple[list[float], list[str]]] = {}
    for p in pages:
        values, users = by.setdefault(p.policy, ([], []))
        values.append(float(p.outcome(slots)[1]))
        users.append(p.user)
    return {
        policy: {"pages": len(v), "users": len(set(u)), **interval(np.array(v), u)}
        for policy, (v, u) in sorted(by.items())
    }


def evaluate_log(
    state: OnlineState,
    spec: PolicySpec,
    *,
    page_type: str = "home",
    logged: str = "random",
    slots: int | None = None,
    seed: int = 0,
    since_ms: int = 0,
) -> dict[str, Any]:
    """Estimate ``spec``'s value from the ``logged`` policy's pages of ``page_type`` in
    ``state`` shown at ``since_ms`` or later (module docstring)."""
    if logged == "fixed":
        raise TailoredError(
            "--logged fixed: the fixed order explores nothing, so its pages say nothing of "
            "another order; log a random order (an experiment variant) to evaluate from"
        )
    every = [
        p for p in state.pages() if p.page_type == page_type and p.user and p.time_ms >= since_ms
    ]
    pages = [p for p in every if p.policy == logged and p.modules]
    if not pages:
        seen = sorted({p.policy for p in every})
        raise TailoredError(
            f"no {logged!r} pages of page type {page_type!r} with personalization consent in "
            f"the log (its policies: {seen or 'none'})"
        )
    n_max = max(len(p.modules) for p in pages)
    if slots is None:
        slots = n_max if logged == "random" else 1
    if logged != "random" and slots > 1:
        raise TailoredError(
            f"--slots {slots}: a {logged!r} log knows its marginal probabilities at the first "
            "slot only (evaluate with --slots 1, or from a random order's log)"
        )
    if not 1 <= slots <= n_max:
        raise TailoredError(f"--slots: must be in 1..{n_max}, got {slots}")
    rows = [_logged(p, slots) for p in pages]
    rng = np.random.default_rng(seed)
    target = _target(state, spec, rows, rng, page_type)
    result = evaluate(rows, target, slots=slots, ridge=spec.settings.ridge)
    # pages whose clicks taught the bandit being evaluated (statistics "store"): its estimate
    # on them is optimistic, having been fitted to their rewards
    taught = (
        sum(p.learn for p in pages) if spec.policy == "bandit" and spec.statistics == "store" else 0
    )
    return {
        "policy": {"policy": spec.policy, **vars(spec.settings), "statistics": spec.statistics},
        "pages_that_taught_it": taught,
        "logged": logged,
        "page_type": page_type,
        "estimate": result,
        "observed": _observed(every, slots),
        "module_click_through": {
            k: {kk: vv / slots for kk, vv in result[k].items()}  # type: ignore[attr-defined]
            for k in ("ips", "snips", "dr")
        },
    }


def _target(
    state: OnlineState,
    spec: PolicySpec,
    rows: Sequence[LoggedPage],
    rng: np.random.Generator,
    page_type: str,
) -> Any:
    if spec.policy == "fixed":
        return lambda p: np.eye(len(p.modules))
    if spec.policy == "random":
        return lambda p: np.full((len(p.modules), len(p.modules)), 1.0 / len(p.modules))
    if spec.statistics == "store":
        key = model_key(page_type)
        bandit = LinearBandit(state.arms([key]).get(key), spec.settings)
        return lambda p: bandit.marginals(p.modules, p.context, rng, spec.samples)
    # fitted on the log: each half of the pages ordered by the bandit of the other half
    halves = [[p for p in rows if zlib.crc32(p.key.encode()) % 2 != k] for k in (0, 1)]
    bandits = [
        LinearBandit(reward_model(h, spec.settings.ridge).stats, spec.settings) for h in halves
    ]
    return lambda p: bandits[zlib.crc32(p.key.encode()) % 2].marginals(
        p.modules, p.context, rng, spec.samples
    )
