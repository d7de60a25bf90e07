"""What the server keeps of its pages, and how the bandit learns from them.

Every ``Page`` answer is logged (:class:`~tailored.serve.state.PageLog`: the request id,
the features the policy saw, every candidate module in the policy's order with its
propensity, position and items) to the online state, off the request path
(:class:`~tailored.serve.background.GroupWriter`), and kept ``[serve] page_log_days``.
With ``[serve] bandit_learn_from = "served"`` the same write adds each shown module's
``x x^T`` to ``A`` (a module returned counts as a module shown).

``Track`` events that name a page and module (``Event.request_id`` and ``module``) are
checked against the log before anything is stored: a kept page must have been shown to the
event's user (for a user with personalization consent; other users' pages hold no
pseudonym), the module shown on it and the item in that module; otherwise the call is
INVALID_ARGUMENT and nothing is stored or learned. An event naming a page that is not kept
(expired, lost with a failed write, still unwritten on another replica) is stored as any
event and teaches nothing (counted in ``tailored_page_feedback{new="unknown_page"}``).
Then the first click (or purchase) of a module on a page adds its features ``x`` to ``b``,
and, with ``"impressions"``, the first impression of a module its ``x x^T`` to ``A``
(:meth:`PageLearner.feedback`). Each is marked
in the store in the same step as its update, so a retried Track teaches nothing twice.
Only pages of users with personalization consent, whose policy learns, teach anything.

The statistics (one model per page type) are shared by every replica on one store
(additions are atomic); a process reads them again at most every ``[serve]
bandit_refresh_ms`` (the last known while the store is unreachable).

Request ids of pages start with the time in milliseconds (12 hex digits), so that a Track
for a page this process logged moments ago, still in the writer's queue, waits for the
write instead of being refused.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailored.config import ServeConfig
from tailored.experiments.bandit import ArmStats, BanditSettings, LinearBandit, module_features
from tailored.serve.background import GroupWriter
from tailored.serve.page import model_key
from tailored.serve.recommender import RequestError
from tailored.serve.state import ArmUpdate, Feedback, OnlineState, PageLog, StateError

__all__ = ["PageLearner", "PageRef", "new_request_id", "settings_of"]

_log = logging.getLogger(__name__)
_RECENT_MS = 2_000  # a page younger than this may still be in the writer's queue
_FLUSH_WAIT = 0.25  # seconds a Track waits at most for such a page to be written
CLICKS = frozenset({"click", "purchase"})  # what marks a module clicked


def new_request_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms:012x}{secrets.token_hex(10)}"


def _request_ms(request_id: str) -> int | None:
    try:
        return int(request_id[:12], 16) if len(request_id) == 32 else None
    except ValueError:
        return None


def settings_of(cfg: ServeConfig) -> BanditSettings:
    return BanditSettings(
        exploration=cfg.bandit_exploration,
        epsilon=cfg.bandit_epsilon,
        temperature=cfg.bandit_temperature,
        scale=cfg.bandit_thompson_scale,
        ridge=cfg.bandit_ridge,
        max_features=cfg.bandit_max_features,
    )


@dataclass(frozen=True)
class PageRef:
    """A Track event that names a page: ``where`` the event in the call (``events[3]``)."""

    where: str
    user: str  # pseudonym
    request_id: str
    module: str
    item_id: str
    type: str


_Logged = tuple[PageLog, list[ArmUpdate]]


class PageLearner:
    """The page log and the bandit's statistics of one server process."""

    def __init__(
        self,
        state: OnlineState,
        cfg: ServeConfig,
        call: Callable[..., Any] | None = None,
        on_result: Callable[[str, int], None] = lambda outcome, n: None,
    ) -> None:
        self.state = state
        self.cfg = cfg
        self.settings = settings_of(cfg)
        self.ttl_ms = int(cfg.page_log_days * 86_400_000)
        self._call = call or (lambda fn, *a, **kw: fn(*a, **kw))
        self._on_result = on_result
        self._lock = threading.Lock()
        self._stats: dict[str, ArmStats] = {}  # by page type, as last read
        self._read_at: dict[str, float] = {}
        self._bandits: dict[str, LinearBandit] = {}
        # a batch's increments run in one script on Redis: 500 pages keep it short
        self.writer: GroupWriter[_Logged] = GroupWriter(
            "page-log", self._store, self._lost, batch=500
        )

    # -- the policy -----------------------------------------------------------------------
    def bandit(self, page_type: str) -> LinearBandit:
        """The bandit of ``page_type`` as the store had it at most ``bandit_refresh_ms``
        ago (the last known if the store cannot be read now)."""
        key = model_key(page_type)
        now = time.monotonic()
        if now - self._read_at.get(key, -1e18) >= self.cfg.bandit_refresh_ms / 1e3:
            try:
                fresh = self._call(self.state.arms, [key])
            except StateError:
                fresh = None
            if isinstance(fresh, dict):
                stats = fresh.get(key, ArmStats())
                with self._lock:
                    self._read_at[key] = now
                    changed = stats != self._stats.get(key) or key not in self._bandits
                if changed:  # solved once per change, outside the lock
                    solved = self._solve(key, stats)
                    with self._lock:
                        self._stats[key] = stats
                        self._bandits[key] = solved
        with self._lock:
            bandit = self._bandits.get(key)
            if bandit is None:  # never read (the store is down): the prior
                bandit = self._bandits[key] = LinearBandit(None, self.settings)
            return bandit

    def _solve(self, key: str, stats: ArmStats) -> LinearBandit:
        try:
            return LinearBandit(stats, self.settings)
        except np.linalg.LinAlgError as e:  # not expected (A is a sum of x x^T): keep the last
            _log.error("page bandit %r: its statistics do not solve (%s); kept the last", key, e)
            with self._lock:
                return self._bandits.get(key) or LinearBandit(None, self.settings)

    # -- the log --------------------------------------------------------------------------
    def log(self, page: PageLog) -> None:
        """Keep ``page`` (off the request path), with what it teaches when shown."""
        updates: list[ArmUpdate] = []
        if page.learn and page.user and self.cfg.bandit_learn_from == "served":
            updates = [
                ArmUpdate(
                    model_key(page.page_type),
                    module_features((m.id, m.type), page.context, m.position),
                    a_weight=1,
                )
                for m in page.modules
                if m.position >= 0
            ]
        self.writer.put((page, updates))

    def _store(self, batch: list[_Logged]) -> None:
        pages = [p for p, _ in batch]
        updates = {p.request_id: us for p, us in batch if us}
        kept = int(self._call(self.state.log_pages, pages, updates, self.ttl_ms))
        self._on_result("written", kept)
        if kept < len(pages):
            self._on_result("erased", len(pages) - kept)  # the user was erased meanwhile

    def _lost(self, batch: list[_Logged], why: str) -> None:
        self._on_result(why, len(batch))

    def page(self, request_id: str) -> PageLog | None:
        """The logged page; one this process logged moments ago is waited for."""
        got = self._call(self.state.page, request_id)
        if got is None and self.writer.waiting:
            at = _request_ms(request_id)
            if at is not None and abs(time.time() * 1000 - at) < _RECENT_MS:
                self.writer.flush(_FLUSH_WAIT)  # bounded: Track waits that long at most
                got = self._call(self.state.page, request_id)
        return got if isinstance(got, PageLog) else None

    # -- what Track reports ---------------------------------------------------------------
    def check(self, refs: Sequence[PageRef]) -> tuple[list[tuple[PageRef, PageLog]], int]:
        """Each reference with its page, every one checked against it (RequestError names
        the first that contradicts its page), and how many name a page that is not kept
        (older than ``page_log_days``, lost with a failed write, never a page): those are
        stored as events and teach nothing."""
        pages: dict[str, PageLog | None] = {}
        out: list[tuple[PageRef, PageLog]] = []
        unknown = 0
        for r in refs:
            if r.request_id not in pages:
                pages[r.request_id] = self.page(r.request_id)
            page = pages[r.request_id]
            if page is None:
                unknown += 1
                continue
            if page.user and page.user != r.user:
                raise RequestError(
                    f"{r.where}.user_id", f"page {r.request_id!r} was shown to another user"
                )
            module = page.module(r.module)
            if module is None or module.position < 0:
                shown = [m.id for m in page.modules if m.position >= 0]
                raise RequestError(
                    f"{r.where}.module",
                    f"page {r.request_id!r} showed no module {r.module!r} (it showed {shown})",
                )
            if r.item_id not in module.items:
                raise RequestError(
                    f"{r.where}.item_id",
                    f"module {r.module!r} of page {r.request_id!r} did not show this item",
                )
            out.append((r, page))
        return out, unknown

    def feedback(self, checked: Sequence[tuple[PageRef, PageLog]]) -> tuple[int, int]:
        """Mark what the events say of their pages and learn from it (module docstring);
        returns how many clicks and impressions there were, and how many were new."""
        todo: list[Feedback] = []
        for r, page in checked:
            module = page.module(r.module)
            assert module is not None  # checked
            kind = "click" if r.type in CLICKS else "impression" if r.type == "impression" else ""
            if not kind:
                continue
            update = None
            if page.learn and page.user:
                x = module_features((module.id, module.type), page.context, module.position)
                key = model_key(page.page_type)
                if kind == "click":
                    update = ArmUpdate(key, x, b_weight=1.0)
                elif self.cfg.bandit_learn_from == "impressions":
                    update = ArmUpdate(key, x, a_weight=1.0)
            todo.append(Feedback(page.request_id, module.id, kind, update))
        if not todo:
            return 0, 0
        return len(todo), int(self._call(self.state.page_feedback, todo))

    def stats(self, page_type: str) -> ArmStats | None:
        """What this process knows of ``page_type``'s bandit now (for tests)."""
        with self._lock:
            return self._stats.get(model_key(page_type))

    def close(self) -> None:
        self.writer.close()
