"""The admission interceptor on its own: a call holds a place only while it runs, so calls
cancelled before a thread took them (their handler never runs) hold nothing; one beyond the
limit is refused at once and counted; an undecodable request is INVALID_ARGUMENT."""

from __future__ import annotations

import threading
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
