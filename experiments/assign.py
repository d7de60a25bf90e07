"""Assignment: which experiments a user is in and which variant they see, from the
pseudonymous user id alone, the same on every server and every request.

A user's place in a layer is ``unit("layer", layer, user)``: a number in [0, 1) from a keyed
hash (BLAKE2b). Each running experiment of the layer takes the users in its
``[traffic_offset, traffic_offset + traffic)``, so experiments of one layer never share a
user, and layers, each hashed under its own name, are independent. Within an experiment the
variant is drawn by ``unit("variant", salt, user)`` against the cumulative weights. A global
holdout (``unit("holdout", salt, user) < share``) is kept out of every experiment.

Assignment does not look at consent: the caller serves a user without personalization
consent the control experience and neither reports nor counts them (see
``tailored.serve``).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tailored.experiments.config import Experiment, Experiments

__all__ = ["Assigner", "Assignment", "unit"]

_SCALE = float(2**64)


def unit(kind: str, salt: str, user: str) -> float:
    """A uniform number in [0, 1) from ``kind``, ``salt`` and ``user`` (BLAKE2b, 64 bits)."""
    digest = hashlib.blake2b(
        f"{kind}\x00{salt}\x00{user}".encode(), digest_size=8, person=b"tailored-ab"
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class Assignment:
    """A user's variant of one experiment, and what it changes."""

    experiment: str
    variant: str
    control: bool
    changes: Mapping[str, Any]


class Assigner:
    """Assigns users to the running experiments of ``experiments`` (see the module doc)."""

    def __init__(self, experiments: Experiments) -> None:
        self.experiments = experiments
        by_layer: dict[str, list[Experiment]] = {}
        for e in experiments.experiments:
            by_layer.setdefault(e.layer, []).append(e)
        self._layers = tuple((layer, tuple(es)) for layer, es in by_layer.items())
        self._cumulative = {
            e.name: tuple(itertools.accumulate(e.weights)) for e in experiments.experiments
        }

    def in_holdout(self, user: str) -> bool:
        h = self.experiments.holdout
        return h.share > 0 and unit("holdout", h.salt, user) < h.share

    def assign(self, user: str, now: float) -> tuple[Assignment, ...]:
        """The user's variant in each experiment running at ``now`` (unix seconds) that
        takes them; none in the holdout."""
        if not self._layers or self.in_holdout(user):
            return ()
        out = []
        for layer, experiments in self._layers:
            running = [e for e in experiments if e.running(now)]
            if not running:
                continue
            place = unit("layer", layer, user)
            for e in running:
                if e.traffic_offset <= place < e.traffic_offset + e.traffic:
                    out.append(self._variant(e, user))
                    break
        return tuple(out)

    def _variant(self, e: Experiment, user: str) -> Assignment:
        cumulative = self._cumulative[e.name]
        draw = unit("variant", e.salt, user) * cumulative[-1]
        v = e.variants[min(bisect.bisect_right(cumulative, draw), len(e.variants) - 1)]
        return Assignment(e.name, v.name, v.name == e.control, v.changes)
