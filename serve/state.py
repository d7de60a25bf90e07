"""Online state: what the server knows about users between bundles, with one interface and
two backends (:mod:`~tailored.serve.sqlite_state`, the embedded default, and
:mod:`~tailored.serve.redis_state`, shared by replicas); ``tests/test_state_contract.py``
runs the same suite against both.

Users are keyed by pseudonym (never a raw id); items by the site's item id, so that state
survives a bundle swap that renumbers rows. An event is durable when :meth:`record`
returns; only then does the server acknowledge it.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tailored.data.pseudonym import KeyMap
from tailored.data.tombstones import tombstone
from tailored.errors import TailoredError
from tailored.experiments.bandit import SEP, ArmStats

__all__ = [
    "PERSONALIZATION",
    "ArmUpdate",
    "ConsentChange",
    "Feedback",
    "OnlineState",
    "PageLog",
    "RecordResult",
    "ShownModule",
    "StateError",
    "StoredEvent",
    "UserState",
    "arm_stats",
    "open_state",
    "tombstone",
]

PERSONALIZATION = "personalization"
"""The consent purpose that allows personalized results and keeping behavioural events."""


class StateError(TailoredError):
    """The online state could not be read or written (unreachable, closed, failed)."""


@dataclass(frozen=True)
class StoredEvent:
    """One behavioural event of a user: ``type`` an event type's name (the proto's own or one
    the bundle's configuration names; its role says what it means), ``time_ms`` unix
    milliseconds, ``value`` the rating, dwell seconds or amount (0 if none)."""

    item_id: str
    type: str
    time_ms: int
    value: float = 0.0
    surface: str = ""


@dataclass(frozen=True)
class ConsentChange:
    """One change of a user's consent: when (unix ms) and the purposes granted from then."""

    time_ms: int
    purposes: frozenset[str]


@dataclass(frozen=True)
class UserState:
    """A user's consent (``None``: never set, the server's default applies) and their most
    recent events, oldest first. ``forgotten``: the user was erased or withdrew consent at
    some time (a tombstone), so what a bundle built before holds of them is not theirs."""

    consent: frozenset[str] | None
    events: tuple[StoredEvent, ...]
    forgotten: bool = False

    def allows(self, purpose: str, *, default: bool) -> bool:
        return default if self.consent is None else purpose in self.consent


@dataclass(frozen=True)
class RecordResult:
    accepted: int  # stored durably
    dropped: int  # not stored: the user's consent does not allow personalization


@dataclass(frozen=True)
class ShownModule:
    """One candidate module of a logged page (a page's are kept in the request's order):
    ``slot`` its place in the policy's order, ``position`` where the page showed it (-1: it
    had no items and was not shown), ``propensity`` the policy's probability of choosing it
    there given the modules above, ``items`` the item ids it showed, ``type`` its source
    (``recommended``, ``category``...)."""

    id: str
    slot: int
    position: int
    propensity: float
    items: tuple[str, ...]
    type: str = ""


@dataclass(frozen=True)
class PageLog:
    """A page's decisions, kept for the ``Track`` events that name it (clicks and
    impressions of its modules) and for off-policy evaluation. ``user`` is the pseudonym
    ("" for a user without personalization consent: the page is learned from by no one);
    ``context`` the features the policy saw, position aside
    (:mod:`tailored.experiments.bandit`); ``learn`` whether its clicks teach the bandit;
    ``clicked`` and ``seen``, as read back, the modules with a click and an impression;
    ``variants`` the user's experiment variants on the page ("EXPERIMENT:VARIANT")."""

    request_id: str
    user: str
    time_ms: int
    page_type: str
    policy: str
    learn: bool
    context: Mapping[str, float]
    modules: tuple[ShownModule, ...]
    clicked: frozenset[str] = frozenset()
    seen: frozenset[str] = frozenset()
    variants: tuple[str, ...] = ()
    served_ms: int = 0  # the server's wall clock when it answered (``time_ms``: the request's)

    def module(self, module_id: str) -> ShownModule | None:
        return next((m for m in self.modules if m.id == module_id), None)

    def outcome(self, slots: int | None = None) -> tuple[int, int]:
        """The modules shown, and how many of them had a click (among the first ``slots``
        of the policy's order if given)."""
        shown = [m for m in self.modules if m.position >= 0 and (slots is None or m.slot < slots)]
        return len(shown), sum(m.id in self.clicked for m in shown)

    def encode(self) -> str:
        """The record as stored (JSON; the feedback flags are kept beside it)."""
        doc: dict[str, Any] = {
            "r": self.request_id,
            "u": self.user,
            "t": self.time_ms,
            "pt": self.page_type,
            "p": self.policy,
            "l": self.learn,
            "x": dict(self.context),
            "m": [
                [m.id, m.slot, m.position, m.propensity, list(m.items), m.type]
                for m in self.modules
            ],
            "v": list(self.variants),
            "w": self.served_ms,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def decode(text: str, marks: Iterable[str] = ()) -> PageLog:
        """A stored record, with the feedback marks kept beside it (:attr:`Feedback.mark`)."""
        parts = [m.partition(":") for m in marks]
        clicked = [module for kind, _, module in parts if kind == "click"]
        seen = [module for kind, _, module in parts if kind == "impression"]
        d = json.loads(text)
        return PageLog(
            request_id=str(d["r"]),
            user=str(d["u"]),
            time_ms=int(d["t"]),
            page_type=str(d["pt"]),
            policy=str(d["p"]),
            learn=bool(d["l"]),
            context={str(k): float(v) for k, v in d["x"].items()},
            modules=tuple(
                ShownModule(str(i), int(s), int(pos), float(p), tuple(items), str(kind))
                for i, s, pos, p, items, kind in d["m"]
            ),
            clicked=frozenset(clicked),
            seen=frozenset(seen),
            variants=tuple(str(v) for v in d.get("v", ())),
            served_ms=int(d.get("w", 0)),
        )


@dataclass(frozen=True)
class ArmUpdate:
    """What one observation adds to an arm's statistics: ``a_weight * x x^T`` to A and
    ``b_weight * x`` to b."""

    arm: str
    x: Mapping[str, float]
    a_weight: float = 0.0
    b_weight: float = 0.0

    def increments(self) -> list[tuple[str, float]]:
        """(field, amount) pairs: ``a<TAB>F<TAB>G`` and ``b<TAB>F``."""
        out = []
        if self.a_weight:
            out += [
                (f"a{SEP}{f}{SEP}{g}", v)
                for (f, g), v in ArmStats.outer(self.x, self.a_weight).items()
            ]
        if self.b_weight:
            out += [(f"b{SEP}{f}", self.b_weight * v) for f, v in sorted(self.x.items())]
        return out


def arm_stats(fields: Iterable[tuple[str, float]]) -> ArmStats:
    """An arm's statistics from its stored ``(field, value)`` pairs."""
    a: dict[tuple[str, str], float] = {}
    b: dict[str, float] = {}
    for key, value in fields:
        kind, _, rest = key.partition(SEP)
        if kind == "a":
            f, _, g = rest.partition(SEP)
            a[(f, g)] = float(value)
        elif kind == "b":
            b[rest] = float(value)
    return ArmStats(a, b)


@dataclass(frozen=True)
class Feedback:
    """A ``Track`` event that names a logged page's module: ``kind`` "click" or
    "impression"; ``update`` applied to the bandit's statistics only the first time this
    (page, module, kind) is seen."""

    request_id: str
    module: str
    kind: str
    update: ArmUpdate | None = None

    @property
    def mark(self) -> str:
        """What the store keeps of it beside the page: ``KIND:MODULE``."""
        return f"{self.kind}:{self.module}"


class OnlineState(ABC):
    """Per-user events, consent and tombstones, the set of unavailable items, the logged
    pages and the page bandit's statistics.

    Implementations are safe to call from many threads at once.
    """

    backend: ClassVar[str]

    @abstractmethod
    def record(
        self, events: Mapping[str, Sequence[StoredEvent]], *, default_allows: bool
    ) -> RecordResult:
        """Store events per user pseudonym, durably, in one step; a user whose consent does
        not include :data:`PERSONALIZATION` (or who has none and ``default_allows`` is
        false) has their events dropped, atomically with the consent check."""

    @abstractmethod
    def user(self, user: str, limit: int) -> UserState:
        """``user``'s consent and last ``limit`` events by time (ties by arrival)."""

    @abstractmethod
    def scan(self, types: Collection[str] | None = None) -> Iterator[tuple[str, StoredEvent]]:
        """Every kept event as (user pseudonym, event), of ``types`` only if given; users one
        after another, each user's events by time (for analyses such as experiment
        metrics, not for requests)."""

    @abstractmethod
    def set_consent(self, user: str, purposes: Iterable[str]) -> int:
        """Replace ``user``'s consent, and record the change in their consent history;
        without :data:`PERSONALIZATION` their stored events and logged pages are forgotten in
        the same step, and their :func:`tombstone` left. Returns the number of events
        forgotten."""

    @abstractmethod
    def forget(self, user: str) -> dict[str, int]:
        """Erase everything about ``user`` (events, consent and its history, their logged
        pages), leaving their :func:`tombstone`; returns how many of each were removed
        (``tailored.privacy.erasure.Forgettable``)."""

    @abstractmethod
    def purge(self, before_ms: int) -> dict[str, int]:
        """Remove every event (and logged page) from before ``before_ms`` (unix ms): the
        retention limit. Returns how many of each were removed."""

    @abstractmethod
    def consent_history(self, user: str) -> list[ConsentChange]:
        """``user``'s consent changes, oldest first (empty: never set, or erased)."""

    @abstractmethod
    def consents(self) -> dict[str, frozenset[str]]:
        """Every user who set their consent, and its purposes now."""

    @abstractmethod
    def user_pages(self, user: str) -> list[PageLog]:
        """``user``'s logged pages still kept, by time."""

    @property
    @abstractmethod
    def store(self) -> str:
        """What the audit calls this store (backend and place; no secret)."""

    @abstractmethod
    def set_available(self, item_ids: Iterable[str], available: bool) -> int:
        """Mark items (un)available for recommendation; returns how many are unavailable."""

    @abstractmethod
    def unavailable(self) -> frozenset[str]:
        """The site ids of items that must not be recommended."""

    # -- pages and the bandit's statistics (tailored.serve.page) -----------------------------
    @abstractmethod
    def log_pages(
        self,
        pages: Sequence[PageLog],
        updates: Mapping[str, Sequence[ArmUpdate]],
        ttl_ms: int,
    ) -> int:
        """Keep ``pages`` for ``ttl_ms`` milliseconds (then they are purged) and apply each
        page's ``updates[request_id]`` to the statistics, in one step. A page whose user was
        erased (or withdrew consent) at or after its ``served_ms`` is neither kept nor
        learned from: the erasure won the race with the writer. Returns the pages kept."""

    @abstractmethod
    def page(self, request_id: str) -> PageLog | None:
        """The logged page, with its feedback flags; None if unknown or expired."""

    @abstractmethod
    def page_feedback(self, feedback: Sequence[Feedback]) -> int:
        """Mark each (page, module, kind) and apply its update the first time only, all in
        one step; feedback on a page that is not (or no longer) kept is skipped. Returns how
        many were new."""

    @abstractmethod
    def arms(self, arms: Collection[str]) -> dict[str, ArmStats]:
        """The statistics of ``arms`` (those never updated are left out)."""

    @abstractmethod
    def pages(self) -> Iterator[PageLog]:
        """Every kept page with its flags, by time (for off-policy evaluation)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and threads; the state on disk or in Redis stays."""

    @abstractmethod
    def key_fingerprint(self) -> str | None:
        """The fingerprint of the key its pseudonyms are under (None: never re-keyed, taken to
        be the key it was first written with)."""

    @abstractmethod
    def rekey(self, keys: KeyMap) -> dict[str, int]:
        """Move every pseudonym ``keys`` maps to the new key, record the new key's
        fingerprint, and return how many users moved and how many the map lacked
        (``tailored.privacy.rekey``); a state already under the new key is left as is."""

    def export(self, user: str, limit: int = 100_000) -> dict[str, Any]:
        """Everything kept of ``user`` (``tailored.privacy.export.Exportable``): consent and
        its history, their events (at most ``limit``, the most recent), their logged pages,
        and whether they were erased or withdrew consent before."""
        st = self.user(user, limit)
        return {
            "consent": None if st.consent is None else sorted(st.consent),
            "consent_history": [
                {"time_ms": c.time_ms, "purposes": sorted(c.purposes)}
                for c in self.consent_history(user)
            ],
            "events": [dataclasses.asdict(e) for e in st.events],
            "pages": [
                {
                    "request_id": g.request_id,
                    "time_ms": g.time_ms,
                    "page_type": g.page_type,
                    "policy": g.policy,
                    "variants": list(g.variants),
                    "modules": [
                        {"id": m.id, "position": m.position, "items": list(m.items)}
                        for m in g.modules
                    ],
                    "clicked": sorted(g.clicked),
                }
                for g in self.user_pages(user)
            ],
            "erased_or_withdrawn_before": st.forgotten,
        }

    def __enter__(self) -> OnlineState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_state(url: str, *, timeout: float | None = None) -> OnlineState:
    """The backend for ``url``: ``sqlite:///PATH`` (or a plain path) or ``redis://HOST:PORT/DB``
    (a ``?prefix=NAME`` query keeps several deployments apart on one Redis). ``timeout``:
    seconds a call to a remote backend may take (connecting or answering) before it fails
    with :class:`StateError`."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tailored.serve.redis_state import RedisState

        return RedisState.from_url(url, timeout=timeout)
    from pathlib import Path

    from tailored.serve.sqlite_state import SQLiteState

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SQLiteState(Path(path))
