"""Admission at arrival: a call either starts at once or is refused at once, and a request
that does not decode is the caller's error.

gRPC's own ``maximum_concurrent_rpcs`` counts the calls waiting for a worker thread as
running, so with more of them allowed than there are threads, calls queue (at concurrency
64 against 8 threads, the median call waited behind 56 others); and the calls it refuses
never reach the servicer, so no metric sees them. :class:`Admission` is a server
interceptor, run by gRPC as each call arrives: it admits at most ``limit`` of tailored's
RPCs at a time, each of which has a thread waiting for it (the server's pool is larger
than the limit), and answers any other at once with RESOURCE_EXHAUSTED, counted in
``tailored_requests{code="RESOURCE_EXHAUSTED"}`` by method. The health and reflection
services pass through untouched.

A request whose bytes are not the method's message (truncated, or a string field holding
invalid UTF-8) would fail in gRPC's own deserializer and be answered INTERNAL "Exception
deserializing request!", as if the server were at fault. The admitted handler decodes it
itself and answers INVALID_ARGUMENT saying what did not decode, counted like the others.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import grpc

__all__ = ["Admission"]

# an admitted call whose handler has not started after this long was cancelled before a
# thread took it (its handler never runs): its place is given back
_START_GRACE = 5.0


class Admission(grpc.ServerInterceptor):
    """At most ``limit`` calls of ``services`` at once; ``count(method, code)`` counts each
    call answered here (refused, or undecodable)."""

    def __init__(
        self, limit: int, services: Collection[str], count: Callable[[str, str], None]
    ) -> None:
        self.limit = limit
        self.services = frozenset(services)
        self.count = count
        self.peak = 0  # the most calls running at once so far (tests read it)
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: dict[int, float] = {}  # admitted, handler not started: token -> when
        self._tokens = itertools.count()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        service, _, method = str(details.method).lstrip("/").rpartition("/")
        if handler is None or service not in self.services or handler.unary_unary is None:
            return handler
        token = self._admit()
        if token is None:
            self.count(method, "RESOURCE_EXHAUSTED")
            return grpc.unary_unary_rpc_method_handler(self._refuse)
        return grpc.unary_unary_rpc_method_handler(
            self._running_as(token, method, handler.unary_unary),
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _admit(self) -> int | None:
        now = time.monotonic()
        with self._lock:
            for token, since in list(self._waiting.items()):
                if now - since > _START_GRACE:
                    del self._waiting[token]
            if self._running + len(self._waiting) >= self.limit:
                return None
            token = next(self._tokens)
            self._waiting[token] = now
            return token

    def _running_as(
        self, token: int, method: str, behavior: Callable[[Any, Any], Any]
    ) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self._waiting.pop(token, None)
                self._running += 1
                self.peak = max(self.peak, self._running)
            try:
                if isinstance(request, _Undecodable):
                    self.count(method, "INVALID_ARGUMENT")
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {method} message: {request.reason}",
                    )
                return behavior(request, context)
            finally:
                with self._lock:
                    self._running -= 1

        return run

    def _refuse(self, request: bytes, context: grpc.ServicerContext) -> Any:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy: {self.limit} calls running ([serve] max_concurrent_rpcs); "
            "retry with backoff",
        )


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
