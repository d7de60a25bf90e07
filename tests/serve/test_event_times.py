"""Track's events against the serving clock: a time outside the window (the future, the
distant past, nanoseconds for milliseconds) or a nonsensical value is refused, naming the
event; a late event within the window takes effect in time order, never acknowledged and
dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import TEST_KEY
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # the session's serving bundle is trained once for all


@pytest.fixture(scope="module")
def running(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(serve_bundle, tmp_path_factory.mktemp("state") / "state.db")
    yield r
    r.stop()


def _refused(running: Running, event: pb.Event) -> str:
    with pytest.raises(grpc.RpcError) as err:
        running.client.track([pb.Event(user_id="3", item_id="50", type=pb.CLICK), event])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details() or ""


def _now_ms(running: Running) -> int:
    return int(running.service.now() * 1000)


@pytest.mark.parametrize(
    "when",
    [
        lambda now: 2**63 - 1,  # the far future
        lambda now: now * 1_000_000,  # nanoseconds sent for milliseconds
        lambda now: now + 3_600_000,  # an hour ahead
        lambda now: now - 2 * 365 * 86_400_000,  # two years back
        lambda now: 1,  # 1970
    ],
    ids=["int64-max", "nanoseconds", "an-hour-ahead", "two-years-back", "1970"],
)
def test_an_event_time_outside_the_window_is_refused(running: Running, when: object) -> None:
    assert callable(when)
    time_ms = int(when(_now_ms(running)))
    details = _refused(
        running, pb.Event(user_id="3", item_id="51", type=pb.CLICK, time_unix_ms=time_ms)
    )
    assert "events[1].time_unix_ms" in details and "milliseconds" in details


@pytest.mark.parametrize(
    ("event", "argument"),
    [
        (pb.Event(user_id="3", item_id="51", type=pb.RATING, value=-1e300), "a rating"),
        (pb.Event(user_id="3", item_id="51", type=pb.RATING, value=11.0), "a rating"),
        (pb.Event(user_id="3", item_id="51", type=pb.PURCHASE, value=-5.0), "purchase amount"),
        (pb.Event(user_id="3", item_id="51", type=pb.VIEW, value=1e9), "dwell seconds"),
        (pb.Event(user_id="3", item_id="51", type=pb.CLICK, surface="checkout"), "surface"),
    ],
    ids=["rating-huge-negative", "rating-above-max", "negative-purchase", "dwell", "surface"],
)
def test_a_nonsensical_value_is_refused(running: Running, event: pb.Event, argument: str) -> None:
    details = _refused(running, event)
    assert "events[1]" in details and argument in details


def test_refused_future_events_do_not_freeze_a_users_page(running: Running) -> None:
    """Before, 200 clicks stamped int64-max were stored and read as the user's newest events
    for ever after, so real clicks changed nothing."""
    user = "4"
    future = [
        pb.Event(user_id=user, item_id=str(i), type=pb.CLICK, time_unix_ms=2**63 - 1)
        for i in range(1, 201)
    ]
    with pytest.raises(grpc.RpcError):
        running.client.track(future)
    before = [i.item_id for i in running.client.recommend(user, 10).items]
    ack = running.client.track([pb.Event(user_id=user, item_id=before[0], type=pb.CLICK)])
    assert ack.accepted == 1
    after = [i.item_id for i in running.client.recommend(user, 10).items]
    assert before[0] not in after


def test_a_late_event_takes_effect_in_time_order(running: Running) -> None:
    """Ratings stamped with their real times, before the bundle's data ends: acknowledged,
    so they must count (history and the already-seen filter), in time order."""
    user = "5"
    bundle = running.service.bundle.current.bundle
    assert bundle.users is not None and bundle.users.row(Pseudonymizer(TEST_KEY)(user)) is not None
    before = [i.item_id for i in running.client.recommend(user, 10).items]
    end_ms = bundle.last_event_time * 1000
    late = [
        pb.Event(
            user_id=user,
            item_id=item,
            type=pb.RATING,
            value=5.0,
            time_unix_ms=end_ms - (k + 1) * 86_400_000,  # days before the bundle's data ends
        )
        for k, item in enumerate(before[:6])
    ]
    assert running.client.track(late).accepted == 6
    after = [i.item_id for i in running.client.recommend(user, 10).items]
    assert not set(before[:6]) & set(after)
