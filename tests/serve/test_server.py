"""The gRPC service over a real channel on loopback, against a real bundle (MovieLens-100k),
real SQLite online state and real onnxruntime/FAISS: what a website sees."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tailored.bundle.format import latest_bundle
from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.errors import ConfigError
from tailored.retrieval import faiss_gpu_count
from tailored.serve.bundles import LiveBundle
from tailored.serve.client import Client
from tailored.serve.recommender import Request
from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import TEST_KEY
from tests.serve.helpers import TOKEN, Running

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

_ONNX_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def running(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(serve_bundle, tmp_path_factory.mktemp("state") / "state.db")
    yield r
    r.stop()


def _catalog(bundles: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Item id -> title, and genre -> item ids, from the dataset the bundle was built on."""
    version = latest_bundle(bundles)
    assert version is not None
    manifest = json.loads((version / "manifest.json").read_text())
    items = pq.read_table(Path(manifest["data"]["path"]) / "items.parquet").to_pylist()
    by_genre: dict[str, list[str]] = {}
    for it in items:
        for g in it["genres"] or []:
            by_genre.setdefault(g, []).append(it["item_id"])
    return {it["item_id"]: it["title"] for it in items}, by_genre


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


def _click(user: str, item: str) -> pb.Event:
    return pb.Event(user_id=user, item_id=item, type=pb.CLICK)


def test_a_known_user_gets_k_personalized_items_with_reasons(running: Running) -> None:
    resp = running.client.recommend("1", 10)
    assert resp.strategy == "personalized"
    assert resp.bundle_version == running.service.bundle.version
    assert len(resp.request_id) == 32
    ids = [i.item_id for i in resp.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert all(i.reason.startswith("because you watched ") for i in resp.items)
    assert all(i.title for i in resp.items)
    # nothing the user already rated comes back (user "1" rated 272 of the 1,682 movies)
    bundle = running.service.bundle.current.bundle
    assert bundle.users is not None
    row = bundle.users.row(Pseudonymizer(TEST_KEY)("1"))
    assert row is not None
    seen = {str(bundle.item_ids[r - 1]) for r in bundle.users.history.of(row)[0]}
    assert not seen & set(ids)
    assert running.client.recommend("1", 10).request_id != resp.request_id


def test_nothing_a_heavy_user_ever_rated_comes_back(running: Running) -> None:
    """Beyond the 200 most recent positives the bundle keeps for the ranker's features: user
    "13" rated 636 movies; none of them is recommended, even among 100."""
    from tailored.config import from_dict
    from tailored.train.runs import load_data

    bundle = running.service.bundle.current.bundle
    data = load_data(from_dict(bundle.manifest.config, where="manifest"))
    u = int(np.flatnonzero(data.user_ids == Pseudonymizer(TEST_KEY)("13"))[0])
    rated = {str(data.item_ids[i - 1]) for i in data.item[data.user == u]}
    assert len(rated) > 2 * 200  # most of them older than the snapshot's 200
    ids = [i.item_id for i in running.client.recommend("13", 100).items]
    assert len(ids) == 100 and not rated & set(ids)


def test_clicks_change_the_next_page_without_retraining(
    running: Running, serve_bundle: Path
) -> None:
    titles, by_genre = _catalog(serve_bundle)
    user = "2"
    before = running.client.recommend(user, 10)
    before50 = running.client.recommend(user, 50)
    shown = {i.item_id for i in before.items}
    horror = [i for i in by_genre["Horror"] if i not in shown][:8]
    ack = running.client.track([_click(user, i) for i in horror])
    assert (ack.accepted, ack.dropped) == (8, 0)
    after = running.client.recommend(user, 10)
    ids = [i.item_id for i in after.items]
    assert ids != [i.item_id for i in before.items]
    assert not set(horror) & set(ids)  # clicked: already interacted
    clicked_titles = {titles[i] for i in horror}
    assert any(i.reason.removeprefix("because you watched ") in clicked_titles for i in after.items)

    def horror_share(resp: pb.RecommendResponse) -> int:
        return sum(i.item_id in set(by_genre["Horror"]) for i in resp.items)

    # the page moves toward horror; read over 50 items, as the session's small ranker (2
    # epochs, 300 users) may keep the first 20 as they were (it did in a new environment,
    # the code unchanged: no horror film in the top 20 before or after, 1 -> 4 in the top 50)
    assert horror_share(running.client.recommend(user, 50)) > horror_share(before50)


def test_items_passed_over_are_hidden_and_the_popular_control_skips_what_was_consumed(
    serve_bundle: Path, tmp_path: Path
) -> None:
    r = Running(serve_bundle, tmp_path / "s.db", hide_after_impressions=2)
    try:
        user = "3"
        first = [i.item_id for i in r.client.recommend(user, 10).items]
        shown = [pb.Event(user_id=user, item_id=i, type=pb.IMPRESSION) for i in first]
        r.client.track(shown[:5])
        again = [i.item_id for i in r.client.recommend(user, 10).items]
        assert set(first[:5]) <= set(again)  # shown once, not yet passed over
        clicked = first[0]
        r.client.track([*shown[:5], _click(user, clicked)])
        after = {i.item_id for i in r.client.recommend(user, 10).items}
        assert not after & set(first[:5])  # passed over twice, or clicked: gone
        assert set(first[5:]) & after  # the rest stay
        # the experiment's popularity control: popular, less what this user engaged with
        # or passed over; a user without consent gets the plain list
        plain = [i.item_id for i in r.client.recommend("no-history-user", 10).items]
        r.client.track([_click(user, plain[0])])
        rec = r.service.bundle.current
        state = r.service.state.user(r.service.pseudonym(user), 200)
        control = rec.recommend(
            Request(
                user=r.service.pseudonym(user),
                k=10,
                surface="home",
                time=r.service.now(),
                personalized=True,
                online=state.events,
                variant={"popularity": True},
            )
        )
        assert control.strategy == "popular" and plain[0] not in control.item_ids
        assert not set(control.item_ids) & set(first[:5])
    finally:
        r.stop()


def test_a_site_s_own_event_types_are_tracked_by_name_and_play_their_roles(
    running: Running,
) -> None:
    user = "7"
    first = [i.item_id for i in running.client.recommend(user, 10).items]
    named = [
        pb.Event(user_id=user, item_id=first[0], type_name="hide"),
        pb.Event(user_id=user, item_id=first[1], type_name="add_to_cart"),
    ]
    assert running.client.track(named).accepted == 2
    after = [i.item_id for i in running.client.recommend(user, 10).items]
    # hidden: never again; put in the cart: a positive, so consumed
    assert first[0] not in after and first[1] not in after
    # shared: no role, so neither consumed nor hidden (the cart changed the page above, so
    # the share is of an item of the new one)
    share = pb.Event(user_id=user, item_id=after[0], type_name="share")
    assert running.client.track([share]).accepted == 1
    stored = running.service.state.user(running.service.pseudonym(user), 10).events
    assert [e.type for e in stored] == ["hide", "add_to_cart", "share"]
    assert after[0] in [i.item_id for i in running.client.recommend(user, 10).items]
    with pytest.raises(grpc.RpcError) as err:
        running.client.track([pb.Event(user_id=user, item_id="50", type_name="wishlist")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].type_name" in (err.value.details() or "")
    assert "'wishlist' is not an event type of the served bundle" in (err.value.details() or "")
    both = pb.Event(user_id=user, item_id="50", type=pb.CLICK, type_name="hide")
    with pytest.raises(grpc.RpcError) as err:
        running.client.track([both])
    assert "give type or type_name, not both" in (err.value.details() or "")


def test_without_consent_nothing_is_personalized_or_kept(running: Running) -> None:
    user = "3"
    assert running.client.track([_click(user, "50"), _click(user, "181")]).accepted == 2
    resp = running.client.set_consent(user, [])
    assert resp.events_forgotten == 2 and list(resp.purposes) == []
    rec = running.client.recommend(user, 5)
    assert rec.strategy == "popular"
    assert {i.reason for i in rec.items} == {"popular right now"}
    dropped = running.client.track([_click(user, "1")])
    assert (dropped.accepted, dropped.dropped) == (0, 1)
    pseudonym = Pseudonymizer(TEST_KEY)(user)
    assert running.service.state.user(pseudonym, 100).events == ()
    before = running.client.recommend("4", 5)  # a bundle user who keeps their data
    assert before.strategy == "personalized"
    running.client.set_consent(user, ["personalization"])
    # granted again, they start afresh: what the bundle held of them (their history, their
    # segment, their trained id) is not theirs any more (a tombstone says so)
    again = running.client.recommend(user, 5)
    assert again.strategy == "popular"
    assert running.service.state.user(pseudonym, 100).forgotten
    running.client.track([_click(user, "181")])
    fresh = running.client.recommend(user, 5)
    assert fresh.strategy == "personalized"
    # their one new click is all their history: every reason names it
    (reason,) = {i.reason for i in fresh.items}
    assert reason.startswith("because you watched ")
    from tailored.serve.page import page_features
    from tailored.serve.recommender import Request

    served = running.service.bundle.current
    req = Request(user=pseudonym, k=5, surface="home", time=0.0, personalized=True)
    assert served.segment(req) is not None  # the bundle still has a row for the pseudonym...
    gone = Request(
        user=pseudonym, k=5, surface="home", time=0.0, personalized=True, bundle_rows=False
    )
    assert served.segment(gone) is None  # ...which a tombstoned user is not given
    assert "segment=none" in page_features(served, gone, ["segment"])


def test_unknown_users_start_cold_and_never_fail(running: Running) -> None:
    nobody = running.client.recommend("never-seen-1", 5)
    assert nobody.strategy == "popular" and len(nobody.items) == 5
    profiled = running.client.recommend(
        "never-seen-2", 5, profile={"gender": "F", "age": "31", "occupation": "writer"}
    )
    assert profiled.strategy == "cold_start" and len(profiled.items) == 5
    # the people like them: the segment nearest their embedding, named in the reason
    segments = running.service.bundle.current.bundle.segments
    assert segments is not None
    (reason,) = {i.reason for i in profiled.items}
    label = reason.removeprefix("popular with people like you (").removesuffix(")")
    assert reason.startswith("popular with people like you (") and label in segments.labels
    # a new user who clicks becomes personalized at once
    running.client.track([_click("never-seen-3", "50")])
    first = running.client.recommend("never-seen-3", 5)
    assert first.strategy == "personalized"
    assert "50" not in {i.item_id for i in first.items}


def test_a_cold_profile_is_encoded_as_the_bundle_encoded_its_users(running: Running) -> None:
    """A profile sent with the request fills the numeric field's bucket column too, as the
    bundle's own users were encoded (their table's width and codes)."""
    served = running.service.bundle.current
    enc = served.user_encoder
    assert "age" in enc.edges and len(enc.edges["age"]) >= 2  # the bundle has age buckets
    cat, num, given = served._profile({"gender": "F", "age": "31", "occupation": "writer"})
    assert given
    snap = served.bundle.users
    assert snap is not None and cat.shape[1] == snap.categorical.shape[1] == len(enc.columns)
    bucket = enc.columns.index("age:bucket")
    assert cat[0, bucket] == enc.bucket("age", np.array([31.0]))[0] > 0
    # the same code a known user of that age has in the bundle's own table
    ages = snap.numeric[:, enc.numeric.index("age")]
    mean, std = enc.stats["age"]
    row = int(np.argmin(np.abs(ages * std + mean - 31.0)))
    assert abs(float(ages[row]) * std + mean - 31.0) < 1e-3
    assert snap.categorical[row, bucket] == cat[0, bucket]
    assert num[0, enc.numeric.index("age")] == pytest.approx(float(ages[row]), abs=1e-6)
    # no age given: bucket 0 (unknown), as a missing value
    cat, _, _ = served._profile({"gender": "M"})
    assert cat[0, bucket] == 0


def test_excluded_and_unavailable_items_are_never_returned(running: Running) -> None:
    top = [i.item_id for i in running.client.recommend("4", 10).items]
    excluded = running.client.recommend("4", 10, exclude=top[:3])
    assert not set(top[:3]) & {i.item_id for i in excluded.items}
    admin = running.client.admin
    meta = (("authorization", f"Bearer {TOKEN}"),)
    resp = admin.SetItemAvailability(
        pb.SetItemAvailabilityRequest(item_ids=top[3:5], available=False), metadata=meta
    )
    assert resp.unavailable_total == 2
    hidden = {i.item_id for i in running.client.recommend("4", 10).items}
    assert not set(top[3:5]) & hidden
    admin.SetItemAvailability(
        pb.SetItemAvailabilityRequest(item_ids=top[3:5], available=True), metadata=meta
    )
    assert set(top[3:5]) <= {i.item_id for i in running.client.recommend("4", 10).items}


@pytest.mark.parametrize(
    ("request_kwargs", "argument"),
    [
        ({"user_id": "", "k": 5, "surface": "home"}, "user_id"),
        ({"user_id": "a\x00b", "k": 5, "surface": "home"}, "user_id"),
        ({"user_id": "x" * 300, "k": 5, "surface": "home"}, "user_id"),
        ({"user_id": "1", "k": 0, "surface": "home"}, "k:"),
        ({"user_id": "1", "k": 101, "surface": "home"}, "k:"),
        ({"user_id": "1", "k": 5, "surface": "checkout"}, "surface"),
        ({"user_id": "1", "k": 5, "surface": "home", "profile": {"shoe": "9"}}, "profile"),
        ({"user_id": "u", "k": 5, "surface": "home", "profile": {"age": "old"}}, "profile"),
    ],
)
def test_bad_recommend_arguments_are_invalid_and_named(
    running: Running, request_kwargs: dict[str, object], argument: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        running.client.personalization.Recommend(pb.RecommendRequest(**request_kwargs))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert argument in (err.value.details() or "")


@pytest.mark.parametrize(
    ("event", "argument"),
    [
        (pb.Event(user_id="1", item_id="50"), "events[1].type"),
        (pb.Event(user_id="1", item_id="", type=pb.CLICK), "events[1].item_id"),
        (pb.Event(user_id="", item_id="50", type=pb.CLICK), "events[1].user_id"),
        (pb.Event(user_id="1", item_id="50", type=pb.VIEW, value=-3), "events[1].value"),
        (pb.Event(user_id="1", item_id="50", type=pb.CLICK, time_unix_ms=-1), "time_unix_ms"),
    ],
)
def test_a_malformed_event_rejects_the_whole_call(
    running: Running, event: pb.Event, argument: str
) -> None:
    user = "malformed-events-user"
    with pytest.raises(grpc.RpcError) as err:
        running.client.track([_click(user, "50"), event])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert argument in (err.value.details() or "")
    pseudonym = Pseudonymizer(TEST_KEY)(user)
    assert running.service.state.user(pseudonym, 10).events == ()  # nothing half-stored


def test_admin_needs_the_bearer_token(running: Running) -> None:
    admin = running.client.admin
    assert _code(lambda: admin.Status(pb.StatusRequest())) == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer nope"),)
    assert (
        _code(lambda: admin.Status(pb.StatusRequest(), metadata=wrong))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    status = running.client.status()
    assert status.items == 1682 and status.users == 943 and status.ranker
    assert status.state_backend == "sqlite" and list(status.surfaces) == ["home", "item", "search"]
    # the bundle's exact index: nothing to tune, its build-time search time reported
    assert dict(status.index_search) == {} and status.index_recall == 1.0
    assert status.index_search_ms > 0 and status.index_search_source == "bundle"
    # the CPU builds of onnxruntime and FAISS (the default install) serve on the CPU; the gpu
    # extra on a CUDA machine would say CUDAExecutionProvider and gpu
    assert status.onnx_provider == "CPUExecutionProvider" or _ONNX_CUDA
    assert status.index_device == "cpu" or faiss_gpu_count() > 0


@pytest.mark.skipif(_ONNX_CUDA, reason="this onnxruntime has CUDAExecutionProvider")
def test_onnx_device_cuda_without_cuda_is_refused_naming_the_setting(serve_bundle: Path) -> None:
    cfg = load_serve_config(overrides={"onnx_device": "cuda"})
    with pytest.raises(ConfigError) as err:
        LiveBundle(serve_bundle, cfg)  # what a server starting on this configuration does
    message = str(err.value)
    assert message.startswith('[serve] onnx_device: "cuda", but onnxruntime')
    assert "pip install '.[gpu]'" in message


def test_a_bad_bundle_is_refused_and_the_old_one_keeps_serving(
    running: Running, serve_bundle: Path, tmp_path: Path
) -> None:
    version = latest_bundle(serve_bundle)
    assert version is not None
    bad = tmp_path / "bad" / "v000007"
    shutil.copytree(version, bad)
    emb = bad / "items" / "embeddings.npy"
    emb.write_bytes(emb.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # one float altered
    before = running.service.bundle.version
    with pytest.raises(grpc.RpcError) as err:
        running.client.reload(str(bad))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sha256" in (err.value.details() or "")
    assert running.client.recommend("1", 3).bundle_version == before
    assert running.client.status().failed_reloads >= 1


def test_reload_swaps_under_load_without_failing_a_request(
    running: Running, serve_bundle: Path, tmp_path: Path
) -> None:
    version = latest_bundle(serve_bundle)
    assert version is not None
    other = tmp_path / "other" / version.name
    shutil.copytree(version, other)
    failures: list[BaseException] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with Client(running.target) as c:
            while not stop.is_set():
                try:
                    versions.add(c.recommend("5", 10).bundle_version)
                except grpc.RpcError as e:
                    failures.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for path in (other, version, other):
            resp = running.client.reload(str(path))
            assert resp.bundle_version == version.name and resp.load_seconds > 0
            assert running.service.bundle.current.bundle.manifest.path == path
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions == {version.name}


def test_health_reflection_and_metrics(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.client.channel)
    for name in ("", "tailored.v1.Personalization", "tailored.v1.Admin"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(running.client.channel)
    answers = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"tailored.v1.Personalization", "tailored.v1.Admin", "grpc.health.v1.Health"} <= names
    running.client.recommend("1", 3)
    with pytest.raises(grpc.RpcError):
        running.client.recommend("1", 0)
    server, port = running.service.metrics.serve_http(0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        server.shutdown()
    assert 'tailored_requests_total{code="OK",method="Recommend"}' in text
    assert 'tailored_requests_total{code="INVALID_ARGUMENT",method="Recommend"}' in text
    assert 'tailored_request_seconds_bucket{le="0.015",method="Recommend"}' in text
    assert f'tailored_bundle_info{{version="{running.service.bundle.version}"}} 1.0' in text


def test_deadlines_are_honoured(running: Running) -> None:
    stub = running.client.personalization
    req = pb.RecommendRequest(user_id="1", k=10, surface="home")
    assert _code(lambda: stub.Recommend(req, timeout=1e-6)) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_mmr_and_category_cap_diversify(serve_bundle: Path, tmp_path: Path) -> None:
    plain = Running(serve_bundle, tmp_path / "a.db", diversity="none")
    capped = Running(serve_bundle, tmp_path / "b.db", diversity="category_cap", cap_per_value=1)
    try:
        a = plain.client.recommend("6", 10)
        b = capped.client.recommend("6", 10)
        bundle = capped.service.bundle.current.bundle
        cats = capped.service.bundle.current.categories
        row = {str(v): i + 1 for i, v in enumerate(bundle.item_ids)}
        first_genre = [int(cats[row[i.item_id]]) for i in b.items]
        assert len(set(first_genre)) == len(first_genre)  # one per first genre
        assert [i.item_id for i in a.items] != [i.item_id for i in b.items]
        scores = [i.score for i in a.items]
        assert scores == sorted(scores, reverse=True)  # no diversity: ranker order
    finally:
        plain.stop()
        capped.stop()
    assert np.isfinite(scores).all()


def test_index_search_parameters_apply_at_load_and_bad_ones_are_named() -> None:
    from tailored.errors import TailoredError
    from tailored.retrieval import ExactIndex, IVFFlatIndex, IVFPQIndex
    from tailored.serve.bundles import apply_search_params

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 8)).astype(np.float32)
    ivf = IVFPQIndex(8, nlist=16, m=4, nbits=4, nprobe=1, k_factor=2)
    ivf.build(vectors, np.arange(2000))
    apply_search_params(ivf, {"nprobe": 16, "k_factor": 200})
    assert (ivf.params["nprobe"], ivf.params["k_factor"]) == (16, 200)
    exact = ExactIndex(8)
    exact.build(vectors, np.arange(2000))
    # every cell probed, every item re-scored exactly: the same top 10 as exact search
    assert (ivf.search(vectors[:5], 10)[1] == exact.search(vectors[:5], 10)[1]).all()
    with pytest.raises(TailoredError, match=r"\[serve\] index_search: .*'efSearch' is not one of"):
        apply_search_params(ivf, {"efSearch": 64})
    with pytest.raises(TailoredError, match="exact index has no search-time parameters"):
        apply_search_params(exact, {"nprobe": 4})
    # IVF-Flat, the default above 100k items, has nprobe alone: IVF-PQ's k_factor is refused
    flat = IVFFlatIndex(8, nlist=16, nprobe=1)
    flat.build(vectors, np.arange(2000))
    apply_search_params(flat, {"nprobe": 16})
    assert (flat.search(vectors[:5], 10)[1] == exact.search(vectors[:5], 10)[1]).all()
    with pytest.raises(TailoredError, match=r"index_search: ivfflat: 'k_factor' is not one of"):
        apply_search_params(flat, {"nprobe": 16, "k_factor": 4})


def test_status_reports_the_tuned_index_and_a_serve_override(
    serve_bundle: Path, tmp_path: Path
) -> None:
    """A bundle whose index is IVF-Flat, tuned at build within a search budget: Status shows
    the setting served, the recall and time the build measured for it, and whether
    ``[serve] index_search`` replaced it."""
    from tailored.retrieval import build_index
    from tests.helpers import reseal

    version = latest_bundle(serve_bundle)
    assert version is not None
    bundle = tmp_path / "bundles" / "v000001"
    shutil.copytree(version, bundle)
    items = np.load(bundle / "items" / "embeddings.npy")[1:]
    users = np.load(bundle / "users" / "embeddings.npy")
    built = build_index(
        items,
        np.arange(1, len(items) + 1, dtype=np.int64),
        kind="ivfflat",
        params={"nlist": 16, "nprobe": 1},
        sample_queries=users[:200],
        k=50,
        target_recall=0.95,
        budget_ms=100.0,
    )
    shutil.rmtree(bundle / "index")
    built.index.save(bundle / "index")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["metrics"]["index"] = built.describe()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    reseal(bundle)
    tuned = built.index.params["nprobe"]
    assert built.recall_tolerant is not None and built.search_ms is not None
    for overrides, nprobe, source in (({}, tuned, "bundle"), ({"nprobe": 16}, 16, "serve config")):
        running = Running(bundle.parent, tmp_path / f"state-{source}.db", index_search=overrides)
        try:
            status = running.client.status()
            assert status.index_kind == "ivfflat"
            assert dict(status.index_search) == {"nprobe": nprobe}
            assert status.index_search_source == source
            # the build's measurement of its own setting, whichever setting is served
            assert status.index_recall == pytest.approx(built.recall_tolerant)
            assert status.index_search_ms == pytest.approx(built.search_ms, abs=1e-4)
        finally:
            running.stop()
