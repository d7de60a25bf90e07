"""Overload: beyond ``max_concurrent_rpcs`` running calls, or after waiting longer than
``max_queue_ms`` for a thread, a call is refused with RESOURCE_EXHAUSTED when a thread takes
it, and every refusal is in the metrics (the admission itself: test_admission.py)."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tailored.serve.client import Client
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)


def _scrape(port: int, method: str, code: str) -> float:
    """``tailored_requests_total{method, code}`` from the server's /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tailored_requests_total" and labels == {
                "method": method,
                "code": code,
            }:
                return float(sample.value)
    return 0.0


def test_overload_is_refused_at_once_and_every_refusal_is_counted(
    serve_bundle: Path, tmp_path: Path
) -> None:
    r = Running(serve_bundle, tmp_path / "state.db", workers=2, max_concurrent_rpcs=2)
    _, port = r.service.metrics.serve_http(0)
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def burst() -> None:
        with Client(r.target, own_connection=True) as c:
            for _ in range(12):
                try:
                    c.recommend("1", 50)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                with lock:
                    codes.append(code)

    try:
        threads = [threading.Thread(target=burst) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        answered = codes.count(grpc.StatusCode.OK)
        assert refused + answered == len(codes) == 24 * 12
        assert refused > 0 and answered > 0
        # the client's count of refusals is the server's, and so is the count of answers
        assert _scrape(port, "Recommend", "RESOURCE_EXHAUSTED") == refused
        assert _scrape(port, "Recommend", "OK") == answered
        # never more calls running than admitted: the others did not wait, they were refused
        assert r.service.admission.peak <= 2
    finally:
        r.stop()
