"""The admission interceptor on its own: a call holds a place only while it runs, so calls
cancelled before a thread took them (their handler never runs) hold nothing; one beyond the
limit is refused at once and counted; an undecodable request is INVALID_ARGUMENT."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tailored.serve.admission import Admission


@dataclass
class _Details:
    method: str
    invocation_metadata: tuple[Any, ...] = ()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """What a handler sees of gRPC's ServicerContext here: abort raises, as gRPC's does."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def test_a_call_holds_a_place_only_while_it_runs() -> None:
    counted: list[tuple[str, str]] = []
    admission = Admission(1, {"tailored.v1.Personalization"}, lambda m, c: counted.append((m, c)))
    started, release = threading.Event(), threading.Event()

    def slow(request: Any, context: Any) -> str:
        started.set()
        release.wait(10)
        return "answered"

    def intercepted() -> Any:
        return admission.intercept_service(
            lambda d: grpc.unary_unary_rpc_method_handler(slow),
            _Details("/tailored.v1.Personalization/Recommend"),
        ).unary_unary

    for _ in range(20):  # arrived, then cancelled before a thread took them: never run
        intercepted()
    first = threading.Thread(target=intercepted(), args=(b"", _Context()))
    first.start()
    assert started.wait(10)
    with pytest.raises(_Aborted) as refused:
        intercepted()(b"", _Context())
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    first.join()
    assert intercepted()(b"", _Context()) == "answered"  # its place is free again
    assert counted == [("Recommend", "RESOURCE_EXHAUSTED")]
    assert admission.peak == 1


def test_other_services_pass_through_untouched() -> None:
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: "ok")
    admission = Admission(0, {"tailored.v1.Personalization"}, lambda m, c: None)
    out = admission.intercept_service(lambda d: handler, _Details("/grpc.health.v1.Health/Check"))
    assert out is handler


def test_a_call_that_waited_too_long_for_a_thread_is_refused_when_taken() -> None:
    from tailored.serve.admission import TimedPool, queued_seconds

    counted: list[tuple[str, str]] = []
    admission = Admission(
        4, {"tailored.v1.Personalization"}, lambda m, c: counted.append((m, c)), 0.05
    )
    handler = admission.intercept_service(
        lambda d: grpc.unary_unary_rpc_method_handler(lambda r, c: queued_seconds()),
        _Details("/tailored.v1.Personalization/Recommend"),
    ).unary_unary
    pool = TimedPool(1)
    release = threading.Event()
    try:
        busy = pool.submit(release.wait, 10)  # the only thread, taken
        late = pool.submit(handler, b"", _Context())
        time.sleep(0.2)
        release.set()
        assert busy.result(10) is True
        with pytest.raises(_Aborted) as refused:
            late.result(10)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waited" in str(refused.value) and "max_queue_ms (50)" in str(refused.value)
        assert counted == [("Recommend", "RESOURCE_EXHAUSTED")]
        # a call that finds a thread free starts at once, and sees how long it waited
        waited = pool.submit(handler, b"", _Context()).result(10)
        assert 0.0 <= waited < 0.05 and counted == [("Recommend", "RESOURCE_EXHAUSTED")]
        assert queued_seconds() == 0.0  # not a pool thread
    finally:
        release.set()
        pool.shutdown()
