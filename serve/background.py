"""Writes off the request path: :class:`GroupWriter` hands what requests give it to one
thread, which sleeps ``linger`` seconds after the first item arrives and then writes
everything that came in one call (one transaction, one sync for many requests: a group
commit). Exposures (:class:`tailored.serve.experiments.ExposureWriter`) and the page log
(:mod:`tailored.serve.page_learning`) are written this way.

Waking the thread per item would cost the request that hands it over its share of the
interpreter while the thread runs; sleeping first costs a write up to ``linger`` of delay.
A write that fails is not retried here: ``lost`` is told, and decides (an exposure is
written on the user's next request; a page's decisions are counted as lost).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupWriter"]

T = TypeVar("T")
_log = logging.getLogger(__name__)


class GroupWriter(Generic[T]):
    """``write(batch)`` stores a batch or raises; ``lost(batch, why)`` is called for a batch
    that could not be written (``why`` "failed"), and for an item refused because ``pending``
    are waiting or the writer is closed ("dropped")."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        lost: Callable[[list[T], str], None] = lambda batch, why: None,
        *,
        pending: int = 100_000,
        batch: int = 5_000,
        linger: float = 0.05,
    ) -> None:
        self.name = name
        self._write_batch = write
        self._lost = lost
        self._batch = batch
        self._linger = linger
        self._queue: queue.Queue[T | None] = queue.Queue(pending)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> bool:
        """Write ``item`` soon; False (and ``lost`` told) if it cannot be queued."""
        if self._closed:
            self._lost([item], "dropped")
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._lost([item], "dropped")
            return False
        return True

    @property
    def waiting(self) -> int:
        """Items handed over and not yet written (or given up)."""
        return self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first] if first is not None else []
            if first is not None:  # asleep, not waiting on the queue: a put wakes no one
                time.sleep(self._linger)
            while first is not None and len(batch) < self._batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    first = None  # stop after this write
                    break
                batch.append(item)
            if batch:
                try:
                    self._write_batch(batch)
                except Exception as e:  # the thread outlives anything a callback raises
                    _log.debug("%s: a batch of %d not written (%s)", self.name, len(batch), e)
                    try:
                        self._lost(batch, "failed")
                    except Exception:
                        _log.exception("%s: a batch of %d was lost", self.name, len(batch))
            for _ in range(len(batch) + (first is None)):
                self._queue.task_done()
            if first is None:
                return

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until nothing handed over is waiting (written or given up); at most
        ``timeout`` seconds if given. Returns whether nothing was left waiting."""
        if timeout is None:
            self._queue.join()
            return True
        end = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                done.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (for at most ``timeout`` seconds), then stop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            _log.error("%s: still %d pending at close", self.name, self._queue.qsize())
            return
        self._thread.join(timeout)
