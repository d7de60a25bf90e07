"""Admission: at most ``limit`` calls run at once, a call that waited too long for a thread is
refused, the refusals are counted, and a request that does not decode is the caller's error.

gRPC's own ``maximum_concurrent_rpcs`` counts the calls waiting for a worker thread as
running, so with more of them allowed than there are threads, calls queued inside the
servicer's pool (at concurrency 64 against 8 threads, the median call waited behind 56
others); and the calls it refuses never reach the servicer, so no metric sees them.
:class:`Admission` is a server interceptor that wraps each of tailored's RPCs: when a pool
thread takes the call, it runs if fewer than ``limit`` calls are running and it waited no
longer than ``max_queue_seconds`` for that thread, and is otherwise answered
RESOURCE_EXHAUSTED, counted in ``tailored_requests{code="RESOURCE_EXHAUSTED"}`` by method.
Deciding when the thread takes the call, not when it arrives, means a call cancelled before
that holds no place. gRPC's Python server hands every call to one first-in-first-out pool;
:class:`TimedPool` is that pool with each task's time in the queue known to it, so that
under overload a call either starts within ``max_queue_seconds`` of its arrival or is
refused at once, and the queue drains at the cost of refusals instead of answers. The health
and reflection services pass through untouched.

A request whose bytes are not the method's message (truncated, or a string field holding
invalid UTF-8) would fail in gRPC's own deserializer and be answered INTERNAL "Exception
deserializing request!", as if the server were at fault. The wrapped handler decodes it
itself and answers INVALID_ARGUMENT saying what did not decode, counted like the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent import futures
from typing import Any

import grpc

__all__ = ["Admission", "TimedPool", "queued_seconds"]

_task = threading.local()


def queued_seconds() -> float:
    """How long the task running on this thread waited in its :class:`TimedPool` (0 on a
    thread of no such pool)."""
    return float(getattr(_task, "queued", 0.0))


class TimedPool(futures.Executor):
    """A thread pool (``concurrent.futures.ThreadPoolExecutor``) whose tasks know how long
    they waited for a thread: :func:`queued_seconds` on the task's thread."""

    def __init__(self, threads: int, name: str = "rpc") -> None:
        self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        return self._pool.submit(_timed, time.monotonic(), fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _timed(since: float, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    _task.queued = time.monotonic() - since
    try:
        return fn(*args, **kwargs)
    finally:
        _task.queued = 0.0


class Admission(grpc.ServerInterceptor):
    """At most ``limit`` calls of ``services`` running at once, each started within
    ``max_queue_seconds`` of its arrival (when the server's pool is a :class:`TimedPool`);
    ``count(method, code)`` counts each call answered here (refused, or undecodable)."""

    def __init__(
        self,
        limit: int,
        services: Collection[str],
        count: Callable[[str, str], None],
        max_queue_seconds: float = 0.0,
    ) -> None:
        self.limit = limit
        self.max_queue_seconds = max_queue_seconds  # 0: a call may wait any time
        self.services = frozenset(services)
        self.count = count
        self.peak = 0  # the most calls running at once so far (tests read it)
        self._lock = threading.Lock()
        self._running = 0

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        service, _, method = str(details.method).lstrip("/").rpartition("/")
        if handler is None or service not in self.services or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._admitted(method, handler.unary_unary),
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _enter(self) -> bool:
        with self._lock:
            if self._running >= self.limit:
                return False
            self._running += 1
            self.peak = max(self.peak, self._running)
            return True

    def _leave(self) -> None:
        with self._lock:
            self._running -= 1

    def _admitted(self, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            waited = queued_seconds()
            if self.max_queue_seconds and waited > self.max_queue_seconds:
                self.count(method, "RESOURCE_EXHAUSTED")
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: the call waited {waited * 1e3:.0f} ms for a thread, more "
                    f"than [serve] max_queue_ms ({self.max_queue_seconds * 1e3:.0f}); retry "
                    "with backoff",
                )
            if not self._enter():
                self.count(method, "RESOURCE_EXHAUSTED")
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.limit} calls running ([serve] max_concurrent_rpcs); "
                    "retry with backoff",
                )
            try:
                if isinstance(request, _Undecodable):
                    self.count(method, "INVALID_ARGUMENT")
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {method} message: {request.reason}",
                    )
                return behavior(request, context)
            finally:
                self._leave()

        return run


class _Undecodable:
    """A request whose bytes did not decode, and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoding(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError, or invalid UTF-8 in a string field
            return _Undecodable(f"{type(e).__name__}: {e}"[:200])

    return decode
