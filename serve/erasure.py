"""A server's erasures: ``Forget`` (the admin RPC) and a withdrawal of personalization
consent (``SetConsent``) reach every store the server holds.

On the request: the user's tombstone is written to the tombstone list first (durably: every
later import and training run leaves them out whatever happens next), then the online state
forgets them (events, consent and its history, logged pages; one atomic step per backend,
which also leaves the online tombstone that makes every replica serve them as a new user at
once). Off the request path, one thread removes their rows from every bundle version under
the served root (:class:`tailored.bundle.forget.BundleStore`), coalescing the erasures that
arrive meanwhile into one rewrite per version, and appends one audit record per erasure with
what each store removed. ``Forget`` waits for that (its answer is the audit record);
``SetConsent`` does not.

The same thread enforces the retention limit (``[serve] retention_days``) every
``retention_check_minutes``: the online state's events and logged pages, and the bundles'
user histories, from before the limit (:func:`tailored.privacy.erasure.enforce_retention`,
with the counts in the audit).

At start, and after every bundle swap, the thread sweeps the bundles for every tombstone in
the list: a server that stopped between the two halves of an erasure, or a version built or
copied in while an erasure ran, is cleaned before it has served for long.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from tailored.bundle.forget import BundleStore
from tailored.data.tombstones import TombstoneList, tombstone
from tailored.privacy.audit import AuditLog
from tailored.privacy.erasure import Erasure, Retains, enforce_retention, failures, summary

__all__ = ["Eraser"]

_log = logging.getLogger(__name__)
_BATCH = 1000  # erasures applied to the bundles in one rewrite at most
_SWEEP = "sweep"


@dataclass
class _Job:
    user: str
    reason: str
    online_store: str
    online: dict[str, int]
    done: Future[Erasure]


class Eraser:
    """Erasures for one server process: ``bundles`` the root (or version) it serves, None for
    none on disk; ``erased(reason, n)`` counts them (the metrics)."""

    def __init__(
        self,
        bundles: Path | None,
        *,
        audit: AuditLog | None = None,
        tombstones: TombstoneList | None = None,
        erased: Callable[[str, int], None] = lambda reason, n: None,
        retention: tuple[Retains, float, float] | None = None,
    ) -> None:
        """``retention``: (the online state, days, seconds between runs), or None."""
        self.bundles = BundleStore(bundles) if bundles is not None else None
        self._retention = retention
        self._next_retention = time.monotonic()
        self.audit = audit or AuditLog()
        self.tombstones = tombstones or TombstoneList()
        self._erased = erased
        self._queue: queue.Queue[_Job | str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="eraser", daemon=True)
        self._thread.start()

    def remember(self, user: str) -> None:
        """Write ``user``'s tombstone to the list (before any store forgets them)."""
        self.tombstones.add([tombstone(user)])

    def submit(
        self, user: str, reason: str, online_store: str, online: Mapping[str, int]
    ) -> Future[Erasure]:
        """The online state has forgotten ``user`` (what it removed: ``online``); remove them
        from the bundles and write the audit record. The future holds the record's content."""
        job = _Job(user, reason, online_store, dict(online), Future())
        self._queue.put(job)
        return job.done

    def sweep_soon(self) -> None:
        """Sweep the bundles for every tombstone again (a version was loaded: one built or
        copied in while an erasure ran could hold the user)."""
        self._queue.put(_SWEEP)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        self._sweep()
        while True:
            wait = None
            if self._retention is not None:
                wait = self._next_retention - time.monotonic()
                if wait <= 0:
                    self._enforce()
                    continue
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if first is None:
                return
            if isinstance(first, str):
                self._sweep()
                continue
            jobs = [first]
            while len(jobs) < _BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or isinstance(nxt, str):
                    self._queue.put(nxt)  # after this batch
                    break
                jobs.append(nxt)
            self._apply(jobs)

    def _apply(self, jobs: list[_Job]) -> None:
        removed: dict[str, dict[str, int]] = {}
        failed = ""
        if self.bundles is not None:
            try:
                removed = self.bundles.forget_many([j.user for j in jobs])
            except Exception as e:  # recorded, and swept again at the next start
                _log.exception("erasure: the bundles under %s failed", self.bundles.root)
                failed = f"{type(e).__name__}: {e}"
        for j in jobs:
            out = Erasure(j.user, {j.online_store: j.online})
            if self.bundles is not None:
                if failed:
                    out.failed[self.bundles.store] = failed
                else:
                    out.removed[self.bundles.store] = removed[j.user]
            try:
                self.audit.append(
                    j.reason,
                    pseudonym=j.user,
                    removed=out.removed,
                    failed=out.failed,
                    held=out.held,
                )
            except Exception as e:
                _log.exception("erasure: the audit record could not be written")
                out.failed["audit"] = f"{type(e).__name__}: {e}"
            self._erased(j.reason, 1)
            j.done.set_result(out)

    def _enforce(self) -> None:
        assert self._retention is not None
        state, days, every = self._retention
        self._next_retention = time.monotonic() + every
        stores: list[Retains] = [state]
        if self.bundles is not None:
            stores.append(self.bundles)
        try:
            done = enforce_retention(stores, days=days, audit=self.audit)
        except Exception:
            _log.exception("retention: enforcing %g days failed; trying again later", days)
            return
        if done.failed:
            _log.error("retention: %s", failures(done.failed))
        _log.info("retention (%g days): %s", days, summary(done.removed))

    def _sweep(self) -> None:
        if self.bundles is None:
            return
        try:
            stones = self.tombstones.read()
            if not stones:
                return
            got = self.bundles.forget_tombstoned(stones)
            if got["user_rows"]:
                self.audit.append("sweep", removed={self.bundles.store: got}, failed={})
                _log.info(
                    "erasure: %d user row(s) of tombstoned users removed from %s",
                    got["user_rows"],
                    self.bundles.root,
                )
        except Exception:
            _log.exception("erasure: sweeping the bundles under %s failed", self.bundles.root)
