"""Experiments in the server: the running configuration, the bundles its variants name, and
exposures logged once.

:class:`ServedExperiments` is swapped whole (``ReloadExperiments``, or at start from
``[serve] experiments``): a request reads one, so it sees one configuration. Loading one
checks the file (:func:`tailored.experiments.load_experiments`) and verifies and loads every
bundle a variant names, from the directory of the bundle being served; any failure leaves
the configuration running as it was.

A user's first request under an experiment writes an exposure event (type ``exposure``,
item id ``EXPERIMENT:VARIANT``) to the online state with their other events, where the
metrics read it. "Once" is kept by the user's events read for the request (an exposure
among them is not written again) and by a bounded in-process memory of the exposures
written; a replica that has not seen one, or a user with more events than one request reads
(``[serve] history_events``), may write it again, and the analysis takes each user's first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailored.bundle.format import resolve_bundle
from tailored.config import ServeConfig
from tailored.errors import TailoredError
from tailored.experiments import Assigner, Assignment, ExperimentError, Experiments
from tailored.experiments import load_experiments as read_experiments
from tailored.serve.recommender import Recommender
from tailored.serve.state import StoredEvent

__all__ = ["EXPOSURE", "ServedExperiments", "exposure_id", "load_served"]

EXPOSURE = "exposure"  # the event type of an exposure
_REMEMBERED = 1_000_000  # exposures remembered per process, least recent forgotten first
_log = logging.getLogger(__name__)


def exposure_id(experiment: str, variant: str) -> str:
    return f"{experiment}:{variant}"


@dataclass
class ServedExperiments:
    """A checked experiments file, its assigner and the bundles its variants serve."""

    experiments: Experiments
    bundles: Mapping[str, Recommender] = field(default_factory=dict)
    path: str = ""

    def __post_init__(self) -> None:
        self.assigner = Assigner(self.experiments)
        self._written: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def assign(self, user: str, now: float) -> tuple[Assignment, ...]:
        return self.assigner.assign(user, now)

    @staticmethod
    def changes(assignments: Iterable[Assignment]) -> dict[str, Any]:
        """What the variants change, merged (the file's check keeps them apart)."""
        out: dict[str, Any] = {}
        for a in assignments:
            out.update(a.changes)
        return out

    def recommender(self, changes: Mapping[str, Any], default: Recommender) -> Recommender:
        version = changes.get("bundle")
        return self.bundles.get(str(version), default) if version is not None else default

    def exposures(
        self,
        user: str,
        assignments: Iterable[Assignment],
        events: Iterable[StoredEvent],
        now_ms: int,
        surface: str,
    ) -> list[StoredEvent]:
        """The exposure events to write for ``user`` now: one per experiment they have no
        exposure of yet (among ``events``, their events read for this request, and the
        exposures this process wrote)."""
        out: list[StoredEvent] = []
        with self._lock:
            todo = [a for a in assignments if (user, a.experiment) not in self._written]
        if not todo:  # the usual request: this process wrote them all already
            return out
        logged = {e.item_id.partition(":")[0] for e in events if e.type == EXPOSURE}
        with self._lock:
            for a in todo:
                key = (user, a.experiment)
                if key in self._written:
                    continue
                self._written[key] = None  # written now, or found in the state: not again
                if len(self._written) > _REMEMBERED:
                    self._written.popitem(last=False)
                if a.experiment in logged:
                    continue
                item = exposure_id(a.experiment, a.variant)
                out.append(StoredEvent(item, EXPOSURE, now_ms, 0.0, surface))
        return out

    def forget_written(self, user: str, assignments: Iterable[Assignment]) -> None:
        """Exposures that could not be stored are written again next time."""
        with self._lock:
            for a in assignments:
                self._written.pop((user, a.experiment), None)


def load_served(
    path: str | Path, bundles_dir: Path, cfg: ServeConfig, current: Recommender
) -> ServedExperiments:
    """Check the experiments file at ``path`` and load the bundles its variants name (each
    a version under ``bundles_dir``, verified and loaded like the served one; the served
    version itself is not loaded twice)."""
    from tailored.serve.bundles import load_recommender

    experiments = read_experiments(path)
    loaded: dict[str, Recommender] = {}
    for e in experiments.experiments:
        for v in e.variants:
            version = v.changes.get("bundle")
            if version is None or version in loaded:
                continue
            where = f"{path}: experiment {e.name!r}, variant {v.name!r}: bundle {version!r}"
            if version == current.bundle.version:
                loaded[version] = current
                continue
            try:
                loaded[version] = load_recommender(resolve_bundle(bundles_dir / version), cfg)
            except TailoredError as err:
                raise ExperimentError(f"{where}: {err}") from err
            _log.info("experiment %s, variant %s: bundle %s loaded", e.name, v.name, version)
    return ServedExperiments(experiments, loaded, str(path))
