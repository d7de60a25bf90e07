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

The write is off the request path (:class:`ExposureWriter`): the request hands its exposure
to a writer thread, which sleeps 50 ms after the first one arrives and then writes all that
came in one call to the state (one transaction, one sync: a group commit). Writing in the
request cost a first page 4.7 ms at p50; waking the writer for each exposure, 0.7 ms (its
Python work holding the interpreter while that request ranked): see
``benchmarks/experiments/serving_cost``. The exposure keeps the request's
time. An exposure that cannot be written (the state is down, the queue is full, the process
stops hard) is forgotten by the in-process memory, so the user's next request writes it
again, stamped then: the analysis misses what that user did in between, never counts them
twice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailored.bundle.format import resolve_bundle
from tailored.config import ServeConfig
from tailored.errors import TailoredError
from tailored.experiments import Assigner, Assignment, ExperimentError, Experiments
from tailored.experiments import load_experiments as read_experiments
from tailored.serve.background import GroupWriter
from tailored.serve.recommender import Recommender
from tailored.serve.state import StoredEvent

__all__ = [
    "EXPOSURE",
    "ExposureWriter",
    "ServedExperiments",
    "exposure_id",
    "load_served",
    "reserved_versions",
]

EXPOSURE = "exposure"  # the event type of an exposure
_REMEMBERED = 1_000_000  # exposures remembered per process, least recent forgotten first
_PENDING = 100_000  # exposures waiting for the writer; beyond, written on a later request
_BATCH = 5_000  # users' exposures in one write at most
_LINGER = 0.05  # seconds the writer gathers exposures after the first before it writes
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
        # what promoted variants changed, for everyone (a variant's own changes win)
        self.defaults: dict[str, Any] = self.experiments.defaults()
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

    def forget_user(self, user: str) -> None:
        """An erased user: this process remembers nothing of them (their next request writes
        their exposures again, as for a new user)."""
        with self._lock:
            for key in [k for k in self._written if k[0] == user]:
                del self._written[key]

    def forget_written(self, user: str, assignments: Iterable[Assignment]) -> None:
        """Exposures that could not be stored are written again next time."""
        with self._lock:
            for a in assignments:
                self._written.pop((user, a.experiment), None)


def load_served(
    path: str | Path,
    bundles_dir: Path,
    cfg: ServeConfig,
    current: Recommender,
    loaded_before: Mapping[str, Recommender] | None = None,
) -> ServedExperiments:
    """Check the experiments file at ``path`` (with its decisions) and load the bundles its
    running or scheduled variants name (each a version under ``bundles_dir``, verified and
    loaded like the served one; the served version, and those in ``loaded_before``, are not
    loaded again)."""
    from tailored.serve.bundles import load_recommender

    experiments = read_experiments(path)
    before = dict(loaded_before or {})
    loaded: dict[str, Recommender] = {}
    for e in experiments.experiments:
        if e.decided is not None:
            continue  # its variants serve no one any more
        for v in e.variants:
            version = v.changes.get("bundle")
            if version is None or version in loaded:
                continue
            where = f"{path}: experiment {e.name!r}, variant {v.name!r}: bundle {version!r}"
            if version == current.bundle.version:
                loaded[version] = current
                continue
            if version in before:
                loaded[version] = before[version]
                continue
            try:
                loaded[version] = load_recommender(resolve_bundle(bundles_dir / version), cfg)
            except TailoredError as err:
                raise ExperimentError(f"{where}: {err}") from err
            _log.info("experiment %s, variant %s: bundle %s loaded", e.name, v.name, version)
    return ServedExperiments(experiments, loaded, str(path))


def reserved_versions(path: str | Path | None) -> frozenset[str]:
    """The bundle versions that the experiments file at ``path`` (with its decisions) keeps
    from being everyone's: a server starting from a bundles root serves the latest other
    one (:meth:`tailored.experiments.Experiments.reserved`)."""
    return read_experiments(path).reserved() if path else frozenset()


_Pending = tuple[str, list[StoredEvent], Callable[[], None]]


class ExposureWriter(GroupWriter[_Pending]):
    """Writes exposures to the online state from one thread, in groups (see the module
    docstring). ``record`` stores ``{user: events}`` durably or raises; ``on_result`` is
    told how many exposures each write stored or lost."""

    def __init__(
        self,
        record: Callable[[dict[str, list[StoredEvent]]], object],
        on_result: Callable[[str, int], None] = lambda outcome, n: None,
    ) -> None:
        self._record = record
        self._on_result = on_result
        super().__init__(
            "exposures", self._store, self._give_up, pending=_PENDING, batch=_BATCH, linger=_LINGER
        )

    def put(self, user: str, events: list[StoredEvent], forget: Callable[[], None]) -> None:  # type: ignore[override]
        """Write ``events`` of ``user`` soon; ``forget`` is called if they cannot be."""
        super().put((user, events, forget))

    def _store(self, batch: list[_Pending]) -> None:
        by_user: dict[str, list[StoredEvent]] = {}
        for user, events, _ in batch:
            by_user.setdefault(user, []).extend(events)
        self._record(by_user)
        self._on_result("written", sum(len(events) for _, events, _ in batch))

    def _give_up(self, batch: list[_Pending], why: str) -> None:
        """Any failure (or a full queue): each user's exposure is written next time."""
        for _, _, forget in batch:
            forget()
        self._on_result(why, sum(len(events) for _, events, _ in batch))
