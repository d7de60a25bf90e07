"""Experiments declared in a TOML file: what runs, on whom, and what each variant changes.

An experiments file::

    [holdout]                 # optional: users kept out of every experiment
    share = 0.05
    salt = "holdout-2026"

    [[experiment]]
    name = "ranker-off"
    layer = "ranking"         # experiments of one layer never share a user; layers are independent
    salt = "ranker-off-1"     # the variant draw; never reused by another experiment
    traffic = 0.5             # the share of the layer's users it takes ...
    traffic_offset = 0.0      # ... starting here in the layer ([offset, offset + traffic))
    start = 2026-12-01T00:00:00Z
    end = 2027-01-01T00:00:00Z
    control = "on"            # default: the first variant

    [[experiment.variant]]
    name = "on"
    weight = 0.5

    [[experiment.variant]]
    name = "off"
    weight = 0.5
    ranker = false            # what the variant changes (see VARIANT_KEYS)

A variant may change only what :data:`VARIANT_KEYS` names. Everything is checked at load and
a refusal names the file, the experiment and the field (:class:`ExperimentError`); a server
that is asked to load a bad file keeps the configuration it has.

Decisions: promoting a variant (``tailored experiment promote``, the admin ``Promote``) is
recorded beside the file, in ``NAME.decisions.json`` (:func:`decisions_path`;
:mod:`tailored.experiments.decisions` writes it). Loading the file applies them: a decided
experiment ends at its decision, the promoted variants' changes become everyone's defaults
(:meth:`Experiments.defaults`, :meth:`Experiments.promoted_bundle`), and the bundles of the
variants that lost stay reserved (:meth:`Experiments.reserved`), never served to everyone by
a bundle watcher or at start. A decision keeps what the variant changed when it was made, so
it outlives the experiment's removal from the file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tailored.errors import TailoredError

__all__ = [
    "VARIANT_KEYS",
    "Decision",
    "Experiment",
    "ExperimentError",
    "Experiments",
    "Holdout",
    "Variant",
    "decisions_path",
    "load_experiments",
    "parse_experiments",
    "read_decisions",
]

# what a variant may change, and the type of each value
VARIANT_KEYS: dict[str, type] = {
    "bundle": str,  # a bundle version (v000003) served instead of the current one
    "ranker": bool,  # the re-ranker on or off
    "candidates": int,  # retrieved per request before ranking
    "mmr_lambda": float,  # diversity strength: 1 = relevance only
    "popularity_penalty": float,  # [ranker] popularity_penalty of the served bundle, replaced
    "popularity_penalty_below": int,  # [ranker] popularity_penalty_below, likewise
    "popularity": bool,  # the non-personalized control: popular in the request's context
    "hide_after_impressions": int,  # [serve] hide_after_impressions for the variant's users
    "new_item_slots": int,  # [serve] new_item_slots: places given to new items
    "page_policy": str,  # how Page orders its modules: "fixed", "random" or "bandit"
    "page_learn": bool,  # whether the variant's pages teach the bandit ([serve] bandit_learn)
}
_EXPERIMENT_KEYS = {
    "name",
    "layer",
    "salt",
    "traffic",
    "traffic_offset",
    "start",
    "end",
    "control",
    "variant",
    "description",
}
_WEIGHT_TOLERANCE = 1e-9


class ExperimentError(TailoredError):
    """An experiments file that cannot be run; the message names the file, experiment and
    field."""


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """A promoted variant: what it changed then, the bundles of the variants it beat, when
    (unix seconds, the deciding server's clock) and why."""

    experiment: str
    variant: str
    at: float
    changes: Mapping[str, Any] = field(default_factory=dict)
    rejected: tuple[str, ...] = ()  # bundle versions of the other variants
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "variant": self.variant,
            "at": dt.datetime.fromtimestamp(self.at, dt.UTC).isoformat(),
            "changes": dict(self.changes),
            "rejected": list(self.rejected),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Experiment:
    name: str
    layer: str
    salt: str
    variants: tuple[Variant, ...]
    control: str
    start: dt.datetime
    end: dt.datetime
    traffic: float = 1.0
    traffic_offset: float = 0.0
    description: str = ""
    decided: Decision | None = None  # promoted: ``end`` is the decision's time

    def running(self, now: float) -> bool:
        """Whether ``now`` (unix seconds) is within [start, end) and nothing was decided (a
        decided experiment serves no one, whatever a clock says)."""
        return self.decided is None and self.start.timestamp() <= now < self.end.timestamp()

    def status(self, now: float) -> str:
        if self.decided is not None:
            return f"promoted {self.decided.variant}"
        if now < self.start.timestamp():
            return "scheduled"
        return "running" if now < self.end.timestamp() else "ended"

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(v.weight for v in self.variants)


@dataclass(frozen=True)
class Holdout:
    share: float = 0.0
    salt: str = "holdout"


@dataclass(frozen=True)
class Experiments:
    """Every experiment of a file, and the global holdout."""

    experiments: tuple[Experiment, ...] = ()
    holdout: Holdout = Holdout()
    source: str = ""
    decisions: tuple[Decision, ...] = ()  # in the order they were made

    def get(self, name: str) -> Experiment:
        for e in self.experiments:
            if e.name == name:
                return e
        known = [e.name for e in self.experiments]
        raise ExperimentError(f"{self.source or 'experiments'}: no experiment {name!r} ({known})")

    def bundles(self) -> frozenset[str]:
        """The bundle versions the variants name (a server loads each beside its own)."""
        return frozenset(
            str(v.changes["bundle"])
            for e in self.experiments
            for v in e.variants
            if "bundle" in v.changes
        )

    def defaults(self) -> dict[str, Any]:
        """What the promoted variants changed, for everyone (a later decision wins), the
        bundle aside (:meth:`promoted_bundle`)."""
        out: dict[str, Any] = {}
        for d in self.decisions:
            out.update({k: v for k, v in d.changes.items() if k != "bundle"})
        return out

    def promoted_bundle(self) -> str | None:
        """The bundle version the latest decision that named one made everyone's."""
        named = [str(d.changes["bundle"]) for d in self.decisions if "bundle" in d.changes]
        return named[-1] if named else None

    def reserved(self) -> frozenset[str]:
        """Versions not to serve to everyone unasked: the candidates of undecided experiments
        (a control's bundle is the current one) and the bundles that lost a decision, unless
        a later one promoted them."""
        out = {
            str(v.changes["bundle"])
            for e in self.experiments
            if e.decided is None
            for v in e.variants
            if "bundle" in v.changes and v.name != e.control
        }
        out.update(b for d in self.decisions for b in d.rejected)
        promoted = self.promoted_bundle()
        return frozenset(out - {promoted} if promoted else out)


def decisions_path(path: str | Path) -> Path:
    """Where the decisions about the experiments of the file at ``path`` are recorded."""
    p = Path(path)
    return p.with_name(f"{p.stem}.decisions.json")


def read_decisions(path: str | Path) -> tuple[Decision, ...]:
    """The decisions recorded for the experiments file at ``path`` (none when there is no
    decisions file); a malformed one is refused, naming the entry and field."""
    where = decisions_path(path)
    try:
        doc = json.loads(where.read_text())
    except FileNotFoundError:
        return ()
    except OSError as e:
        raise ExperimentError(f"{where}: cannot read ({e.strerror or e})") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ExperimentError(f"{where}: not valid JSON ({e})") from e
    raw = doc.get("decisions") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise ExperimentError(f"{where}: expected an object with a 'decisions' list")
    out = []
    for i, d in enumerate(raw):
        at = f"{where}: decision #{i + 1}"
        if not isinstance(d, dict):
            raise ExperimentError(f"{at}: must be an object")
        for key in ("experiment", "variant"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ExperimentError(f"{at}: {key!r} must be a non-empty string")
        when = _time(d, "at", at).timestamp()
        changes = d.get("changes", {})
        rejected = d.get("rejected", [])
        if not isinstance(changes, dict):
            raise ExperimentError(f"{at}: 'changes' must be an object")
        for key, value in changes.items():
            if key not in VARIANT_KEYS:
                raise ExperimentError(f"{at}: changes: unknown key {key!r}")
            _check_change(key, value, f"{at}: changes")
        if not isinstance(rejected, list) or not all(isinstance(b, str) for b in rejected):
            raise ExperimentError(f"{at}: 'rejected' must be a list of bundle versions")
        reason = d.get("reason", "")
        out.append(
            Decision(d["experiment"], d["variant"], when, changes, tuple(rejected), str(reason))
        )
    return tuple(sorted(out, key=lambda d: d.at))


def load_experiments(path: str | Path) -> Experiments:
    """Read and check an experiments file and apply the decisions recorded beside it (see
    the module docstring)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as e:
        raise ExperimentError(f"{p}: cannot read ({e.strerror or e})") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ExperimentError(f"{p}: not valid TOML ({e})") from e
    return parse_experiments(doc, str(p), read_decisions(p))


def parse_experiments(
    doc: Mapping[str, Any], source: str = "experiments", decisions: Sequence[Decision] = ()
) -> Experiments:
    """Check a parsed experiments document (see the module docstring), with ``decisions``
    applied: each decided experiment ends at its decision (earlier than its ``end``)."""
    unknown = set(doc) - {"experiment", "holdout"}
    if unknown:
        raise ExperimentError(
            f"{source}: unknown table(s) {sorted(unknown)}; expected [[experiment]] and [holdout]"
        )
    holdout = _holdout(doc.get("holdout", {}), source)
    raw = doc.get("experiment", [])
    if not isinstance(raw, list):
        raise ExperimentError(f"{source}: 'experiment' must be an array of tables [[experiment]]")
    raw_exps = tuple(_experiment(e, i, source) for i, e in enumerate(raw))
    by_name = {d.experiment: d for d in decisions}
    experiments = tuple(_decided(e, by_name[e.name]) if e.name in by_name else e for e in raw_exps)
    _check_together(experiments, holdout, source)
    return Experiments(experiments, holdout, source, tuple(decisions))


def _decided(e: Experiment, d: Decision) -> Experiment:
    at = dt.datetime.fromtimestamp(max(d.at, e.start.timestamp() + 1e-3), dt.UTC)
    return replace(e, end=min(e.end, at), decided=d)


def _holdout(raw: Any, source: str) -> Holdout:
    if not isinstance(raw, Mapping):
        raise ExperimentError(f"{source}: [holdout] must be a table")
    unknown = set(raw) - {"share", "salt"}
    if unknown:
        raise ExperimentError(f"{source}: [holdout] unknown key(s) {sorted(unknown)}")
    share = _number(raw.get("share", 0.0), f"{source}: [holdout] share")
    if not 0.0 <= share < 1.0:
        raise ExperimentError(f"{source}: [holdout] share: must be in [0, 1), got {share}")
    salt = raw.get("salt", "holdout")
    if not isinstance(salt, str) or not salt:
        raise ExperimentError(f"{source}: [holdout] salt: must be a non-empty string")
    return Holdout(share, salt)


def _experiment(raw: Any, index: int, source: str) -> Experiment:
    if not isinstance(raw, Mapping):
        raise ExperimentError(f"{source}: experiment #{index + 1} must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExperimentError(
            f"{source}: experiment #{index + 1}: 'name' must be a non-empty string"
        )
    where = f"{source}: experiment {name!r}"
    unknown = set(raw) - _EXPERIMENT_KEYS
    if unknown:
        raise ExperimentError(
            f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_EXPERIMENT_KEYS)}"
        )
    for key in ("layer", "salt"):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            raise ExperimentError(f"{where}: {key!r} must be a non-empty string")
    traffic = _number(raw.get("traffic", 1.0), f"{where}: traffic")
    offset = _number(raw.get("traffic_offset", 0.0), f"{where}: traffic_offset")
    if not 0.0 < traffic <= 1.0:
        raise ExperimentError(f"{where}: traffic: must be in (0, 1], got {traffic}")
    if not offset >= 0.0 or offset + traffic > 1.0 + _WEIGHT_TOLERANCE:
        raise ExperimentError(
            f"{where}: traffic_offset + traffic must lie within [0, 1] (the layer's users), "
            f"got [{offset}, {offset + traffic})"
        )
    start, end = _time(raw, "start", where), _time(raw, "end", where)
    if end <= start:
        raise ExperimentError(f"{where}: end ({end.isoformat()}) is not after start")
    variants = _variants(raw.get("variant"), where)
    control = raw.get("control", variants[0].name)
    if control not in {v.name for v in variants}:
        raise ExperimentError(
            f"{where}: control {control!r} is not one of its variants {[v.name for v in variants]}"
        )
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(f"{where}: description must be a string")
    return Experiment(
        name=name,
        layer=raw["layer"],
        salt=raw["salt"],
        variants=variants,
        control=control,
        start=start,
        end=end,
        traffic=traffic,
        traffic_offset=offset,
        description=description,
    )


def _variants(raw: Any, where: str) -> tuple[Variant, ...]:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ExperimentError(
            f"{where}: needs at least two variants ([[experiment.variant]] tables)"
        )
    out = []
    names: set[str] = set()
    for i, v in enumerate(raw):
        if not isinstance(v, Mapping):
            raise ExperimentError(f"{where}: variant #{i + 1} must be a table")
        name = v.get("name")
        if not isinstance(name, str) or not name:
            raise ExperimentError(f"{where}: variant #{i + 1}: 'name' must be a non-empty string")
        if name in names:
            raise ExperimentError(f"{where}: variant {name!r} is declared twice")
        names.add(name)
        at = f"{where}, variant {name!r}"
        weight = _number(v.get("weight"), f"{at}: weight")
        if not weight > 0:
            raise ExperimentError(f"{at}: weight: must be > 0, got {weight}")
        changes = {k: x for k, x in v.items() if k not in ("name", "weight")}
        for key, value in changes.items():
            if key not in VARIANT_KEYS:
                raise ExperimentError(
                    f"{at}: unknown key {key!r}; a variant may change {sorted(VARIANT_KEYS)}"
                )
            _check_change(key, value, at)
        out.append(Variant(name, weight, changes))
    total = sum(v.weight for v in out)
    if abs(total - 1.0) > 1e-6:
        raise ExperimentError(
            f"{where}: variant weights sum to {total:g}, not 1 "
            f"({', '.join(f'{v.name} {v.weight:g}' for v in out)})"
        )
    return tuple(out)


def _check_change(key: str, value: Any, at: str) -> None:
    kind = VARIANT_KEYS[key]
    if kind is float:
        value = _number(value, f"{at}: {key}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ExperimentError(f"{at}: {key}: must be an integer, got {value!r}")
    elif not isinstance(value, kind):
        raise ExperimentError(f"{at}: {key}: must be a {kind.__name__}, got {value!r}")
    if key == "candidates" and value < 1:
        raise ExperimentError(f"{at}: candidates: must be >= 1, got {value}")
    if key == "page_policy" and value not in ("fixed", "random", "bandit"):
        raise ExperimentError(
            f"{at}: page_policy: must be 'fixed', 'random' or 'bandit', got {value!r}"
        )
    if (
        key in ("hide_after_impressions", "new_item_slots", "popularity_penalty_below")
        and value < 0
    ):
        raise ExperimentError(f"{at}: {key}: must be >= 0, got {value}")
    if key == "popularity_penalty" and value < 0:
        raise ExperimentError(f"{at}: popularity_penalty: must be >= 0, got {value}")
    if key == "mmr_lambda" and not 0.0 <= value <= 1.0:
        raise ExperimentError(f"{at}: mmr_lambda: must be in [0, 1], got {value}")
    if key == "bundle" and not value:
        raise ExperimentError(f"{at}: bundle: must name a bundle version, like 'v000003'")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExperimentError(f"{where}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ExperimentError(f"{where}: must be a finite number, got {value}")
    return float(value)


def _time(raw: Mapping[str, Any], key: str, where: str) -> dt.datetime:
    value = raw.get(key)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as e:
            raise ExperimentError(f"{where}: {key}: not an ISO 8601 time ({value!r})") from e
    if not isinstance(value, dt.datetime):
        raise ExperimentError(
            f"{where}: {key}: must be a date-time with its offset, like 2026-12-01T00:00:00Z"
        )
    if value.tzinfo is None:
        raise ExperimentError(
            f"{where}: {key}: {value.isoformat()} has no UTC offset (write ...Z or +01:00)"
        )
    return value


def _check_together(experiments: tuple[Experiment, ...], holdout: Holdout, source: str) -> None:
    """Names and salts unique; within a layer, experiments whose time windows overlap take
    disjoint shares of the layer's users."""
    names: dict[str, int] = {}
    salts: dict[str, str] = {holdout.salt: "[holdout]"} if holdout.share else {}
    for e in experiments:
        if e.name in names:
            raise ExperimentError(f"{source}: experiment {e.name!r} is declared twice")
        names[e.name] = 1
        if e.salt in salts:
            raise ExperimentError(
                f"{source}: experiment {e.name!r}: salt {e.salt!r} is already used by "
                f"{salts[e.salt]}; a reused salt makes assignments correlate across "
                "experiments (give each its own)"
            )
        salts[e.salt] = f"experiment {e.name!r}"
    for i, a in enumerate(experiments):
        for b in experiments[i + 1 :]:
            if a.end <= b.start or b.end <= a.start:
                continue
            if a.layer != b.layer:  # one user may be in both: they must not change one thing
                both = _changed(a) & _changed(b)
                if both:
                    raise ExperimentError(
                        f"{source}: experiments {a.name!r} (layer {a.layer!r}) and {b.name!r} "
                        f"(layer {b.layer!r}) run at the same time and both change "
                        f"{sorted(both)}; put them in one layer to make them exclusive"
                    )
                continue
            lo = max(a.traffic_offset, b.traffic_offset)
            hi = min(a.traffic_offset + a.traffic, b.traffic_offset + b.traffic)
            if hi - lo > _WEIGHT_TOLERANCE:
                raise ExperimentError(
                    f"{source}: experiments {a.name!r} and {b.name!r} run at the same time in "
                    f"layer {a.layer!r} and both take the layer's users in [{lo:g}, {hi:g}); "
                    "give them disjoint traffic_offset / traffic, or different layers"
                )


# keys that act together: two experiments changing one each change the same thing
_ONE_THING = {"popularity_penalty_below": "popularity_penalty"}


def _changed(e: Experiment) -> set[str]:
    return {_ONE_THING.get(key, key) for v in e.variants for key in v.changes}
