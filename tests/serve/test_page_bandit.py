"""The bandit that orders a page's modules, on the real server (MovieLens-100k bundle): pages
logged with their decisions, Track events naming a page's module checked against the log
(and refused by name when the page never showed it, with nothing stored or learned), clicks
learned once, and two replicas on one Redis learning together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tailored.experiments.bandit import ArmStats, module_features
from tailored.serve.redis_state import RedisState
from tailored.serve.v1 import personalization_pb2 as pb
from tests.serve.helpers import Running, with_prefix

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

MODULES = [
    pb.PageModule(id="for-you", type="recommended"),
    pb.PageModule(id="trending", type="trending"),
    pb.PageModule(id="horror", type="category", param="Horror"),
]
TYPES = {m.id: m.type for m in MODULES}


def _stats(r: Running) -> ArmStats:
    return r.service.state.arms(["home"]).get("home", ArmStats())


@pytest.fixture(scope="module")
def running(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(
        serve_bundle,
        tmp_path_factory.mktemp("bandit") / "state.db",
        page_policy="bandit",
        bandit_refresh_ms=0,
    )
    yield r
    r.stop()


def _click(user: str, resp: pb.PageResponse, shown: str, **over: str) -> pb.Event:
    m = next(m for m in resp.modules if m.id == shown)
    fields = {"request_id": resp.request_id, "module": shown, "item_id": m.items[0].item_id}
    fields.update(over)
    event = pb.Event(user_id=user, type=pb.CLICK)
    event.request_id, event.module, event.item_id = (
        fields["request_id"],
        fields["module"],
        fields["item_id"],
    )
    return event


def test_a_bandit_page_is_logged_with_its_decisions(running: Running) -> None:
    resp = running.client.page("6", MODULES, k=4)
    assert resp.policy == "bandit" and len(resp.request_id) == 32
    assert all(0 < m.propensity <= 1 for m in resp.modules)
    logged = running.service.pages.page(resp.request_id)  # waits for the writer's write
    assert logged is not None and logged.policy == "bandit" and logged.learn
    assert logged.user == running.service.pseudonym("6")
    assert [m.id for m in logged.modules] == [m.id for m in MODULES]  # the request's order
    by_slot = sorted(logged.modules, key=lambda m: m.slot)
    assert [m.id for m in by_slot if m.position >= 0] == [m.id for m in resp.modules]
    assert [m.propensity for m in by_slot] == pytest.approx([m.propensity for m in resp.modules])
    assert any(f.startswith("segment=") for f in logged.context)  # the user's segment
    assert by_slot[0].items == tuple(i.item_id for i in resp.modules[0].items)


def test_a_click_teaches_its_module_once(running: Running) -> None:
    resp = running.client.page("7", MODULES, k=4)
    running.service.pages.writer.flush()
    before = _stats(running)
    top = resp.modules[0].id
    assert running.client.track([_click("7", resp, top)]).accepted == 1
    after = _stats(running)
    logged = running.service.pages.page(resp.request_id)
    assert logged is not None and logged.clicked == {top}
    x = module_features((top, TYPES[top]), logged.context, 0)
    assert after.b["position=0"] == pytest.approx(before.b.get("position=0", 0) + 1)
    assert after.clicks(top) == pytest.approx(before.clicks(top) + 1)
    assert set(after.b) >= set(x) and f"type={TYPES[top]}|bias" in x
    # a retry (or a second click on the module): stored as an event, learned from no more
    assert running.client.track([_click("7", resp, top)]).accepted == 1
    assert _stats(running).clicks(top) == pytest.approx(after.clicks(top))


@pytest.mark.parametrize(
    ("change", "argument", "words"),
    [
        ({"module": "not-on-the-page"}, "events[1].module", "showed no module"),
        ({"item_id": "99999"}, "events[1].item_id", "did not show this item"),
        ({"user_id": "8"}, "events[1].user_id", "another user"),
        ({"request_id": ""}, "events[1].request_id", "request_id is needed"),
    ],
)
def test_an_event_naming_what_the_page_never_showed_is_refused_and_nothing_is_learned(
    running: Running, change: dict[str, str], argument: str, words: str
) -> None:
    resp = running.client.page("9", MODULES, k=4)
    running.service.pages.writer.flush()
    before = _stats(running)
    user_before = running.service.state.user(running.service.pseudonym("9"), 1000).events
    good = _click("9", resp, resp.modules[0].id)
    bad = _click(change.pop("user_id", "9"), resp, resp.modules[0].id, **change)
    with pytest.raises(grpc.RpcError) as e:
        running.client.track([good, bad])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert argument in str(e.value.details()) and words in str(e.value.details())
    assert _stats(running) == before  # nothing learned, the good one neither
    assert running.service.state.user(running.service.pseudonym("9"), 1000).events == user_before
    logged = running.service.pages.page(resp.request_id)
    assert logged is not None and logged.clicked == frozenset()


def test_without_consent_a_page_teaches_nothing(running: Running) -> None:
    running.client.set_consent("11", [])
    resp = running.client.page("11", MODULES, k=4)
    logged = running.service.pages.page(resp.request_id)
    assert logged is not None and logged.user == "" and not logged.learn
    assert not any(f.startswith("segment=") for f in logged.context)  # the context alone
    before = _stats(running)
    result = running.client.track([_click("11", resp, resp.modules[0].id)])
    assert result.dropped == 1
    assert _stats(running) == before


def test_a_click_on_one_replica_changes_the_others_policy(
    serve_bundle: Path,
    redis_url: str,
    redis_prefix: str,
) -> None:
    url = with_prefix(redis_url, redis_prefix)
    a, b = (
        Running(
            serve_bundle,
            state=RedisState.from_url(url),
            page_policy="bandit",
            bandit_refresh_ms=0,
        )
        for _ in range(2)
    )
    try:
        resp = a.client.page("6", MODULES, k=3)
        a.service.pages.writer.flush()
        top = resp.modules[0].id
        seen_by_b = b.service.pages.bandit("home")
        logged = b.service.pages.page(resp.request_id)  # the other replica finds the page
        assert logged is not None
        before = seen_by_b.score((top, TYPES[top]), logged.context, 0)
        # the click reaches replica b; replica a's next page reads what it taught
        assert b.client.track([_click("6", resp, top)]).accepted == 1
        after = a.service.pages.bandit("home").score((top, TYPES[top]), logged.context, 0)
        assert after > before + 0.05
        stats = a.service.pages.stats("home")
        assert stats is not None and stats.clicks(top) == pytest.approx(1.0)
    finally:
        a.stop()
        b.stop()


def test_learning_from_impressions_counts_a_module_shown_when_the_site_says_so(
    serve_bundle: Path, tmp_path: Path
) -> None:
    r = Running(
        serve_bundle,
        tmp_path / "s.db",
        page_policy="bandit",
        bandit_learn_from="impressions",
        bandit_refresh_ms=0,
    )
    try:
        resp = r.client.page("6", MODULES, k=3)
        r.service.pages.writer.flush()
        assert r.service.state.arms(["home"]) == {}  # served, but not yet seen
        shown = resp.modules[1]
        seen = pb.Event(
            user_id="6",
            item_id=shown.items[0].item_id,
            type=pb.IMPRESSION,
            request_id=resp.request_id,
            module=shown.id,
        )
        r.client.track([seen, seen])  # twice in one call: seen once
        stats = _stats(r)
        assert stats.shown(shown.id) == pytest.approx(1.0)
        assert sum(stats.shown(m.id) for m in MODULES) == pytest.approx(1.0)
        assert stats.a[("position=1", "position=1")] == pytest.approx(1.0)
        logged = r.service.pages.page(resp.request_id)
        assert logged is not None and logged.seen == {shown.id} and logged.clicked == frozenset()
    finally:
        r.stop()


def test_an_event_naming_a_page_no_longer_kept_is_stored_and_teaches_nothing(
    running: Running,
) -> None:
    resp = running.client.page("12", MODULES, k=4)
    running.service.pages.writer.flush()
    before = _stats(running)
    lost = _click("12", resp, resp.modules[0].id, request_id="0" * 32)  # expired, say
    assert running.client.track([lost]).accepted == 1
    assert _stats(running) == before
    user = running.service.state.user(running.service.pseudonym("12"), 100)
    assert [e.item_id for e in user.events] == [lost.item_id]


def test_context_values_with_control_characters_are_refused(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as e:
        running.client.page("6", MODULES, k=3, context=pb.Context(device="a\tb"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.device" in str(e.value.details())
