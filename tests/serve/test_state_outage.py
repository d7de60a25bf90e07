"""The online state goes away: Recommend answers degraded (popular in context, marked, counted),
Track refuses with UNAVAILABLE (nothing unstored is acknowledged), health says so, a hung Redis
holds no request for long, and recovery needs nobody. Against a Redis server of the test's
own on another port (never the machine's shared one), stopped and paused for real."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.bundles import LiveBundle
from tailored.serve.client import Client
from tailored.serve.server import STATE_HEALTH, Service, create_server
from tailored.serve.state import open_state
from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import TEST_KEY
from tests.serve.helpers import PrivateRedis

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if PrivateRedis.binary() is None:
        message = "no redis-server binary to start a private Redis with"
        if os.environ.get("TAILORED_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    r = PrivateRedis(tmp_path)
    r.start()
    yield r
    r.stop()


def _health(channel: grpc.Channel, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status)


def test_an_outage_degrades_recommend_refuses_track_and_recovers(
    serve_bundle: Path, private_redis: PrivateRedis
) -> None:
    cfg = load_serve_config(
        overrides={"clock": "bundle", "state_timeout_seconds": 0.3, "state_retry_seconds": 0.5}
    )
    service = Service(
        LiveBundle(serve_bundle, cfg),
        open_state(private_redis.url, timeout=cfg.state_timeout_seconds),
        Pseudonymizer(TEST_KEY),
        cfg,
    )
    server, port = create_server("127.0.0.1:0", service)
    server.start()
    serving, down = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    click = pb.Event(user_id="7", item_id="50", type=pb.CLICK)
    try:
        with Client(f"127.0.0.1:{port}", timeout=3.0) as client:
            channel = client.channel
            whole = client.recommend("7", 10)
            assert not whole.degraded and whole.strategy == "personalized"
            assert client.track([click]).accepted == 1

            private_redis.stop()  # down: connections refused
            degraded = client.recommend("7", 10)
            assert degraded.degraded and degraded.strategy == "popular"
            assert len(degraded.items) == 10
            with pytest.raises(grpc.RpcError) as err:
                client.track([click])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _health(channel, STATE_HEALTH) == down
            assert _health(channel, "") == serving  # the replica still answers

            private_redis.start()  # back: the next try after the retry pause finds it
            time.sleep(cfg.state_retry_seconds + 0.1)
            assert not client.recommend("7", 10).degraded
            assert _health(channel, STATE_HEALTH) == serving

            private_redis.pause(True)  # hung: every call would wait, if nothing bounded it
            for _ in range(5):  # each within the client's 3 s deadline, degraded
                assert client.recommend("7", 10).degraded
            with pytest.raises(grpc.RpcError) as err:
                client.track([click])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            private_redis.pause(False)
            time.sleep(cfg.state_retry_seconds + 0.1)
            assert not client.recommend("7", 10).degraded
            assert client.track([click]).accepted == 1
        text = generate_latest(service.metrics.registry).decode()
        assert 'tailored_degraded_responses_total{method="Recommend"} 6.0' in text
    finally:
        server.stop(None)
        service.close()


def test_errors_of_an_outage_are_logged_once_in_a_while_with_a_count() -> None:
    from tailored.serve.server import LogLimit

    limit = LogLimit(0.2)
    assert limit.due("Track") == 0  # the first is logged
    assert [limit.due("Track") for _ in range(5)] == [None] * 5  # held back, counted
    assert limit.due("Recommend") == 0  # another method has its own
    time.sleep(0.25)
    assert limit.due("Track") == 5  # the next line says how many were held back
    assert limit.due("Track") is None
