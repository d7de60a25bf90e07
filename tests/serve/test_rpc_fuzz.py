"""Fuzzing every RPC (Recommend, Track, SetConsent; Admin ReloadBundle, Status,
SetItemAvailability) with hypothesis, over a real channel to the real server on loopback, on a
real MovieLens-100k bundle and real SQLite online state.

Each generated request, well-formed or not, gets its expected status from an oracle written
here, independently of ``serve/edge.py``, from the API's documented rules
(``serve/v1/personalization.proto`` and the limits the edge documents): ids are 1..256
characters with no control characters; ``k`` is in 1..max_k; the surface is a configured one;
at most 1,000 excluded ids; profile and context maps hold at most 64 entries, keyed by ids,
with values of at most 256 characters and no control characters (the context's device and
locale too: the page bandit names features by them); the context's time is >= 0; a profile names the
bundle's user fields, numeric ones as decimal text of a finite number (whoever the user is: a
request is malformed or not by itself, not by the server's state); a Track call holds
1..1,000 events with a real event type, ids, a time >= 0, a finite value and (for a view) a
dwell >= 0; purposes match ``[a-z][a-z0-9_]{0,31}``, at most 16; admin calls need
``authorization: Bearer TOKEN``. The test asserts the server answers exactly that status, and
checks what an OK answer holds against a model of the server's state (consent, stored events,
unavailable items, reloads) that the oracle keeps from the answers it has seen. Bytes that do
not parse as the method's message (a truncated field, invalid UTF-8 in a string) are the
caller's error: INVALID_ARGUMENT, "the request is not a valid <method> message: ..."
(grpc's own deserializer would answer INTERNAL); INTERNAL is expected nowhere.

Cases the fuzzing found (C1 control characters, a profile number beyond float32, a malformed
profile of a user without consent, an event's context) have a test of their own at the end.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow.parquet as pq
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tailored.bundle.format import latest_bundle
from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.bundles import LiveBundle
from tailored.serve.server import Service, create_server
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.v1 import personalization_pb2 as pb
from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc
from tests.helpers import TEST_KEY

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
REFUSED = grpc.StatusCode.FAILED_PRECONDITION
INTERNAL = grpc.StatusCode.INTERNAL
# what grpc itself answers when the request bytes do not parse as the method's message
UNDECODABLE = (INVALID, "the request is not a valid ")  # code, start of the details

TOKEN = "t0ken"
SURFACES = ("home", "item", "search")  # the configured surfaces (the [serve] defaults)
MAX_K = 100
MAX_ID = 256
MAX_EXCLUDE = 1000
MAX_MAP = 64
MAX_EVENTS = 1000
# the serving clock runs from the bundle's data end (MovieLens-100k's last rating; the fixture
# checks it) and Track takes events within [now - 365 days, now + 300 s] (the defaults)
ML100K_END_MS = 893_286_638_000
DAY_MS = 86_400_000
MAX_AGE_MS = 365 * DAY_MS
MAX_AHEAD_MS = 300_000
RATINGS = (0.0, 10.0)  # [serve] rating_min, rating_max
MAX_DWELL = 86_400.0  # [serve] max_view_seconds
MAX_PURPOSES = 16
PERSONALIZATION = "personalization"
# MovieLens-100k's user fields (the fixture checks them against the bundle's model.json)
NUMERIC_FIELDS = ("age",)
CATEGORICAL_FIELDS = ("gender", "occupation", "zip")
TIMEOUT = 60.0


def fuzz(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- the oracle ----------------------------------------------------------------------------
def is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc"  # Unicode's control characters: C0, DEL and C1


def id_ok(value: str) -> bool:
    return 1 <= len(value) <= MAX_ID and not any(map(is_control, value))


def text_ok(value: str) -> bool:
    return len(value) <= MAX_ID and not any(map(is_control, value))


def map_ok(values: Any) -> bool:
    return len(values) <= MAX_MAP and all(id_ok(k) and text_ok(v) for k, v in values.items())


_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def decimal_ok(text: str) -> bool:
    """Decimal text (surrounding white space allowed) of a finite number."""
    s = text.strip()
    return _DECIMAL.fullmatch(s) is not None and math.isfinite(float(s))


def purpose_ok(p: str) -> bool:
    tail = string.ascii_lowercase + string.digits + "_"
    return 1 <= len(p) <= 32 and p[0] in string.ascii_lowercase and all(c in tail for c in p)


def context_ok(ctx: pb.Context) -> bool:
    return (
        ctx.time_unix_ms >= 0 and text_ok(ctx.device) and text_ok(ctx.locale) and map_ok(ctx.extra)
    )


@dataclass
class Model:
    """What the oracle knows of the server's state, kept from the answers it has seen."""

    consent: dict[str, frozenset[str]] = field(default_factory=dict)  # raw user id -> purposes
    stored: Counter[str] = field(default_factory=Counter)  # raw user id -> events kept
    unavailable: set[str] = field(default_factory=set)
    reloads: int = 0
    failed_reloads: int = 0

    def personalized(self, user: str) -> bool:
        purposes = self.consent.get(user)  # never set: the default, "granted"
        return purposes is None or PERSONALIZATION in purposes


@dataclass
class World:
    channel: grpc.Channel
    personalization: pb_grpc.PersonalizationStub
    admin: pb_grpc.AdminStub
    bundles: Path
    version_dir: Path
    version: str
    known_users: frozenset[str] = field(repr=False)  # the bundle's user pseudonyms
    catalog: frozenset[str] = field(repr=False)
    pseudonym: Pseudonymizer = field(repr=False)
    now_ms: Callable[[], int] = field(repr=False, default=lambda: 0)  # the serving clock
    model: Model = field(default_factory=Model)

    def known(self, user: str) -> bool:
        return self.pseudonym(user) in self.known_users


def invalid(why: str) -> grpc.StatusCode:
    if currently_in_test_context():  # hypothesis's statistics: what the inputs covered
        event(f"invalid: {why}")
    return INVALID


def expect_recommend(req: pb.RecommendRequest) -> grpc.StatusCode:
    if not id_ok(req.user_id):
        return invalid("user_id")
    if not 1 <= req.k <= MAX_K:
        return invalid("k")
    if req.surface not in SURFACES:
        return invalid("surface")
    if len(req.exclude_item_ids) > MAX_EXCLUDE:
        return invalid("too many exclude_item_ids")
    if not all(map(id_ok, req.exclude_item_ids)):
        return invalid("exclude_item_ids")
    if not context_ok(req.context):
        return invalid("context")
    if not map_ok(req.profile):
        return invalid("profile map")
    return expect_profile(req.profile)


def expect_profile(profile: Any) -> grpc.StatusCode:
    """Profile fields are the bundle's user fields, numeric ones as decimal text; checked for
    every user (the bundle's own users included: a request is malformed or not by itself)."""
    for name, value in profile.items():
        if name in NUMERIC_FIELDS:
            if not decimal_ok(value):
                return invalid("profile number")
        elif name not in CATEGORICAL_FIELDS:
            return invalid("profile field")
    return OK


def time_ok(t: int, now_ms: int) -> bool:
    """0 (the server's clock) or within the window around it (see ML100K_END_MS)."""
    return t == 0 or now_ms - MAX_AGE_MS <= t <= now_ms + MAX_AHEAD_MS


def near_an_edge(t: int, now_ms: int) -> bool:
    """Within a minute of the window's edges: the server's clock has moved on by the time it
    answers, so the oracle cannot tell."""
    return t != 0 and min(abs(t - (now_ms - MAX_AGE_MS)), abs(t - (now_ms + MAX_AHEAD_MS))) < 60_000


def value_ok(e: pb.Event) -> bool:
    if not math.isfinite(e.value):
        return False
    if e.type == pb.RATING:
        return RATINGS[0] <= e.value <= RATINGS[1]
    if e.type == pb.VIEW:  # dwell seconds
        return 0 <= e.value <= MAX_DWELL
    if e.type == pb.PURCHASE:  # an amount
        return e.value >= 0
    return True


def expect_track(req: pb.TrackRequest, now_ms: int) -> grpc.StatusCode:
    if not 1 <= len(req.events) <= MAX_EVENTS:
        return invalid("number of events")
    for e in req.events:
        if not (id_ok(e.user_id) and id_ok(e.item_id)):
            return invalid("event ids")
        if e.type not in (pb.IMPRESSION, pb.CLICK, pb.VIEW, pb.RATING, pb.PURCHASE):
            return invalid("event type")
        if not context_ok(e.context):
            return invalid("event context")
        if not time_ok(e.time_unix_ms, now_ms):
            return invalid("event time")
        if not value_ok(e):
            return invalid("event value")
        if e.surface and e.surface not in SURFACES:
            return invalid("event surface")
    return OK


def expect_consent(req: pb.SetConsentRequest) -> grpc.StatusCode:
    if not id_ok(req.user_id):
        return invalid("user_id")
    if len(req.purposes) > MAX_PURPOSES:
        return invalid("too many purposes")
    return OK if all(map(purpose_ok, req.purposes)) else invalid("purpose")


def expect_auth(metadata: Sequence[tuple[str, str]]) -> grpc.StatusCode:
    """OK for "authorization: Bearer <the token>" (the scheme in any case)."""
    header = dict(metadata).get("authorization")
    m = re.fullmatch(r"bearer (.*)", header or "", re.IGNORECASE | re.DOTALL)
    if m is None:
        return UNAUTHENTICATED
    return OK if m.group(1).strip(" ") == TOKEN else DENIED


def is_this_bundle(path: str, w: World) -> bool:
    """The empty path (the server's own source), or this bundle's root or version."""
    if not path:
        return True
    try:
        return Path(path).resolve() in (w.bundles.resolve(), w.version_dir.resolve())
    except (OSError, ValueError):
        return False


def expect_reload(req: pb.ReloadBundleRequest, metadata: Any, w: World) -> grpc.StatusCode:
    auth = expect_auth(metadata)
    if auth is not OK:
        return auth
    return OK if is_this_bundle(req.path, w) else REFUSED


def expect_availability(req: pb.SetItemAvailabilityRequest, metadata: Any) -> grpc.StatusCode:
    auth = expect_auth(metadata)
    if auth is not OK:
        return auth
    return OK if all(map(id_ok, req.item_ids)) else invalid("item_ids")


# -- checking what comes back, and keeping the model --------------------------------------
def check_recommended(req: pb.RecommendRequest, resp: pb.RecommendResponse, w: World) -> None:
    ids = [i.item_id for i in resp.items]
    assert len(ids) <= req.k
    assert len(set(ids)) == len(ids), ids
    assert not set(ids) & set(req.exclude_item_ids)
    assert not set(ids) & w.model.unavailable
    assert set(ids) <= w.catalog
    assert resp.bundle_version == w.version
    assert resp.request_id
    assert resp.strategy in ("personalized", "cold_start", "popular")
    if not w.model.personalized(req.user_id):
        assert resp.strategy == "popular"


def check_tracked(req: pb.TrackRequest, resp: pb.TrackResponse, w: World) -> None:
    kept = Counter(e.user_id for e in req.events if w.model.personalized(e.user_id))
    assert (resp.accepted, resp.dropped) == (kept.total(), len(req.events) - kept.total())
    w.model.stored.update(kept)


def check_consented(req: pb.SetConsentRequest, resp: pb.SetConsentResponse, w: World) -> None:
    purposes = frozenset(req.purposes)
    assert list(resp.purposes) == sorted(purposes)
    forgotten = 0 if PERSONALIZATION in purposes else w.model.stored.pop(req.user_id, 0)
    assert resp.events_forgotten == forgotten
    w.model.consent[req.user_id] = purposes


def check_status(resp: pb.StatusResponse, w: World) -> None:
    assert resp.bundle_version == w.version
    assert Path(resp.bundle_path).resolve() == w.version_dir.resolve()
    assert resp.items == len(w.catalog)
    assert resp.users == len(w.known_users)
    assert resp.state_backend == "sqlite"
    assert tuple(resp.surfaces) == SURFACES
    assert (resp.reloads, resp.failed_reloads) == (w.model.reloads, w.model.failed_reloads)


def check_reloaded(resp: pb.ReloadBundleResponse, w: World) -> None:
    assert (resp.bundle_version, resp.previous_version) == (w.version, w.version)
    assert resp.load_seconds >= 0
    w.model.reloads += 1


def check_availability(
    req: pb.SetItemAvailabilityRequest, resp: pb.SetItemAvailabilityResponse, w: World
) -> None:
    if req.available:
        w.model.unavailable.difference_update(req.item_ids)
    else:
        w.model.unavailable.update(req.item_ids)
    assert resp.unavailable_total == len(w.model.unavailable)


def call(method: Any, request: Any, metadata: Any = ()) -> tuple[grpc.StatusCode, Any, str]:
    try:
        return OK, method(request, timeout=TIMEOUT, metadata=tuple(metadata)), ""
    except grpc.RpcError as e:
        return e.code(), None, e.details()


# -- the server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # no queue limit: the fuzzing checks each argument's answer, and on a busy machine a call
    # once waited 682 ms for a thread and was refused as overload (test_admission and
    # test_overload check the limits themselves)
    cfg = load_serve_config(
        overrides={"clock": "bundle", "erase_bundle_rows": False, "max_queue_ms": 0}
    )
    assert (cfg.surfaces, cfg.max_k, cfg.max_events_per_track) == (SURFACES, MAX_K, MAX_EVENTS)
    assert cfg.consent_default == "granted"
    version_dir = latest_bundle(serve_bundle)
    assert version_dir is not None
    encoder = json.loads((version_dir / "model" / "model.json").read_text())["user_encoder"]
    kinds = {f["name"]: f["kind"] for f in encoder["fields"]}
    assert tuple(n for n, k in kinds.items() if k == "numeric") == NUMERIC_FIELDS
    assert tuple(n for n, k in kinds.items() if k == "categorical") == CATEGORICAL_FIELDS
    users = pq.read_table(version_dir / "users" / "users.parquet", columns=["user_id"])
    items = pq.read_table(version_dir / "items" / "items.parquet", columns=["item_id"])
    service = Service(
        LiveBundle(serve_bundle, cfg),
        SQLiteState(tmp_path_factory.mktemp("fuzz-state") / "state.db"),
        Pseudonymizer(TEST_KEY),
        cfg,
        admin_token=TOKEN,
    )
    assert service.bundle.current.bundle.last_event_time * 1000 == ML100K_END_MS
    server, port = create_server("127.0.0.1:0", service)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield World(
            channel=channel,
            personalization=pb_grpc.PersonalizationStub(channel),
            admin=pb_grpc.AdminStub(channel),
            bundles=serve_bundle,
            version_dir=version_dir,
            version=version_dir.name,
            known_users=frozenset(users.column("user_id").to_pylist()),
            catalog=frozenset(items.column("item_id").to_pylist()),
            pseudonym=Pseudonymizer(TEST_KEY),
            now_ms=lambda: int(service.now() * 1000),
        )
    finally:
        channel.close()
        server.stop(None)
        service.close()


# -- strategies ----------------------------------------------------------------------------
def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], n: int = 4) -> Any:
    """``usual`` about n times in n + 1, else ``odd``: a request keeps most of its fields
    well-formed, so that each malformed one is the reason for the answer often enough."""
    return st.sampled_from([usual] * n + [odd]).flatmap(lambda s: s)


# control characters: C0, DEL and C1 (U+0080..U+009F), all Unicode category Cc
_C0 = [chr(c) for c in range(32)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
_SIZED = st.builds(  # lengths around the limit, in 1- to 4-byte characters
    lambda n, c: c * n,
    st.sampled_from([1, 255, 256, 257, 1000, 20_000]),
    st.sampled_from(["u", "é", "字", "😀"]),
)
_WITH_CONTROL = st.builds(lambda a, c, b: a + c + b, _TEXT, st.sampled_from(_C0), _TEXT)
_BAD_IDS = st.one_of(st.just(""), _WITH_CONTROL, st.just("u" * (MAX_ID + 1)))


def ids(usual: st.SearchStrategy[str], n: int = 4) -> st.SearchStrategy[str]:
    """An id: mostly a usual one, else random, empty, long or holding a control character."""
    return mostly(usual, st.one_of(_TEXT, _SIZED, _WITH_CONTROL, st.just("")), n)


USER_IDS = ids(
    st.one_of(
        st.integers(1, 943).map(str),  # the bundle's users
        st.integers(944, 1100).map(str),  # new users
        st.sampled_from(["0", "new-user", "zz", " ", "é" * 256, "😀"]),
    )
)
ITEM_IDS = ids(st.integers(0, 1700).map(str))  # the catalog: "1".."1682"
# the serving clock starts a second after ML100K_END_MS and runs while the tests do
_AROUND_NOW = st.integers(ML100K_END_MS - 400 * DAY_MS, ML100K_END_MS + 3_600_000)
TIMES = mostly(
    st.one_of(st.just(0), _AROUND_NOW, st.integers(1, 2**41), st.just(2**63 - 1)),
    st.one_of(st.sampled_from([-1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)),
)


def _big_map(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


def _big_list(n: int, odd: Any, at: int) -> list[Any]:
    out = [str(1 + i % 1700) for i in range(n)]
    if odd is not None:
        out[at % n] = odd
    return out


MAPS = mostly(
    st.dictionaries(st.sampled_from(["age", "gender", "x", "page"]), _TEXT, max_size=4),
    st.one_of(
        st.dictionaries(ids(_TEXT, 1), st.one_of(_TEXT, _SIZED), max_size=5),
        st.sampled_from([MAX_MAP - 1, MAX_MAP, MAX_MAP + 1, 200]).map(_big_map),
    ),
)
CONTEXTS = mostly(
    st.one_of(
        st.none(),
        st.builds(
            pb.Context,
            device=st.sampled_from(["mobile", "desktop", ""]),
            locale=st.sampled_from(["en-GB", ""]),
            time_unix_ms=st.one_of(st.just(0), st.integers(0, 2**41)),
        ),
    ),
    st.builds(
        pb.Context,
        device=st.one_of(st.sampled_from(["mobile", ""]), _TEXT, _SIZED),
        locale=st.one_of(st.sampled_from(["en-GB", ""]), _TEXT, _SIZED),
        time_unix_ms=TIMES,
        extra=MAPS,
    ),
    n=2,
)
# |x| <= 1e30: far larger values overflow the model's float32 inputs, refused as out of range
# (test_a_huge_finite_numeric_profile_value_is_not_a_server_outage)
NUMERIC_TEXT = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(-1e30, 1e30).map(repr),
    st.sampled_from(
        [
            *("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "", " "),
            *("abc", "12abc", "0x10", "1,5", "30 ", " 30", "+5", ".5", "5.", "1e5", "--1"),
            *("١٢", "."),  # Arabic-Indic digits: decimal digits to Unicode and to float()
        ]
    ),
    _TEXT,
)
PROFILE_ENTRIES = mostly(
    st.one_of(
        st.tuples(st.sampled_from(NUMERIC_FIELDS), NUMERIC_TEXT),
        st.tuples(
            st.sampled_from(CATEGORICAL_FIELDS),
            st.one_of(st.sampled_from(["F", "M", "student", "02139", "x", ""]), _TEXT, _SIZED),
        ),
    ),
    st.one_of(
        st.tuples(st.sampled_from(["Age", "agee", "name", "user_id"]), _TEXT),  # unknown
        st.tuples(ids(_TEXT, 1), st.one_of(_TEXT, _SIZED)),  # malformed
    ),
)
PROFILES = mostly(
    st.lists(PROFILE_ENTRIES, max_size=4).map(dict),
    st.sampled_from([MAX_MAP, MAX_MAP + 1]).map(lambda n: {"age": "30", **_big_map(n - 1)}),
    n=6,
)
EXCLUDES = mostly(
    st.lists(ITEM_IDS, max_size=5),
    st.builds(
        _big_list,
        st.sampled_from([MAX_EXCLUDE - 1, MAX_EXCLUDE, MAX_EXCLUDE + 1, 1100]),
        st.one_of(st.none(), _BAD_IDS),
        st.integers(0, 1100),
    ),
)
RECOMMENDS = st.builds(
    pb.RecommendRequest,
    user_id=USER_IDS,
    surface=mostly(st.sampled_from(SURFACES), st.sampled_from(["", "Home", "home ", "x"]) | _TEXT),
    k=mostly(
        st.one_of(st.integers(1, MAX_K), st.sampled_from([1, MAX_K])),
        st.one_of(
            st.sampled_from([0, MAX_K + 1, -1, 2**31 - 1, -(2**31)]),
            st.integers(-(2**31), 2**31 - 1),
        ),
        n=6,
    ),
    context=CONTEXTS,
    exclude_item_ids=EXCLUDES,
    profile=PROFILES,
)

EVENTS = st.builds(
    pb.Event,
    user_id=USER_IDS,
    item_id=ITEM_IDS,
    type=mostly(
        st.sampled_from(range(1, 6)),  # the five real ones
        st.one_of(
            st.sampled_from([0, -1, 6, 99]),  # 0: EVENT_TYPE_UNSPECIFIED
            st.integers(-(2**31), 2**31 - 1),  # an open enum: any int32 reaches the server
        ),
    ),
    time_unix_ms=TIMES,
    value=mostly(
        st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, -0.0, 30.0, 4.0, 1e308])),
        st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -1e308]), st.floats()),
    ),
    surface=mostly(st.sampled_from([*SURFACES, ""]), st.one_of(_TEXT, _SIZED)),
    context=st.one_of(st.none(), CONTEXTS),
)
GOOD_EVENTS = st.builds(
    pb.Event,
    user_id=st.integers(0, 1000).map(str),
    item_id=st.integers(1, 1682).map(str),
    type=st.sampled_from(range(1, 6)),
    time_unix_ms=st.one_of(st.just(0), st.integers(ML100K_END_MS - 300 * DAY_MS, ML100K_END_MS)),
    value=st.floats(0, 5),
    surface=st.sampled_from(SURFACES),
)


def _many(event: pb.Event, n: int, odd: pb.Event | None, at: int) -> list[pb.Event]:
    out = [event] * n
    if odd is not None:
        out[at % n] = odd
    return out


TRACKS = st.builds(
    lambda events: pb.TrackRequest(events=events),
    mostly(
        st.lists(EVENTS, min_size=1, max_size=4),
        st.one_of(
            st.just([]),
            st.builds(
                _many,
                GOOD_EVENTS,
                st.sampled_from([MAX_EVENTS - 1, MAX_EVENTS, MAX_EVENTS + 1, 1100]),
                st.one_of(st.none(), EVENTS),
                st.integers(0, 1100),
            ),
        ),
        n=3,
    ),
)

_GOOD_PURPOSE = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
PURPOSES = mostly(
    st.lists(
        mostly(
            st.one_of(st.sampled_from([PERSONALIZATION, "analytics", "a" * 32]), _GOOD_PURPOSE),
            st.one_of(
                st.sampled_from(["a" * 33, "Personalization", "1abc", "_x", "ab-c", "", "é"]),
                st.sampled_from([PERSONALIZATION + "\n", " analytics", "perso nalization"]),
                _TEXT,
            ),
            n=6,
        ),
        max_size=4,
    ),
    st.lists(_GOOD_PURPOSE, min_size=MAX_PURPOSES - 1, max_size=MAX_PURPOSES + 2),
)
CONSENTS = st.builds(pb.SetConsentRequest, user_id=USER_IDS, purposes=PURPOSES)

_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
AUTHS = mostly(
    st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "]).map(
        lambda v: (("authorization", v),)
    ),
    st.one_of(
        st.just(()),  # no token
        st.just((("x-authorization", f"Bearer {TOKEN}"),)),
        st.one_of(
            st.sampled_from(
                [f"Bearer {TOKEN}2", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN.upper()}"]
            ),
            st.sampled_from(["Bearer", "Bearer ", f"Bearer{TOKEN}", f"Basic {TOKEN}", TOKEN, ""]),
            st.sampled_from([f" Bearer {TOKEN}", f"Token {TOKEN}", f"Bearer {TOKEN} x"]),
            _PRINTABLE.map(lambda s: "Bearer " + s),
            _PRINTABLE,
        ).map(lambda v: (("authorization", v),)),
    ),
    n=2,
)
# placeholders filled in by the test: the server's bundle, and things that are not bundles
_PATH_NAMES = ["{root}", "{root}/", "{version}", "{parent}", "{parent}/run", "{version}/model"]
_PATH_NAMES += ["{version}/manifest.json", "{root}/v999999", "{root}/../bundles"]
PATHS = st.one_of(
    st.sampled_from(_PATH_NAMES),
    st.sampled_from(["", "/nonexistent/bundle", "/", ".", "tests", "/dev/null", "/proc/self"]),
    st.sampled_from(["a\x00b", "x" * 5000, " ", "v000001", "../", "~/bundles", "\n"]),
    _TEXT,
)
RELOADS = st.builds(pb.ReloadBundleRequest, path=PATHS)
AVAILABILITY = st.builds(
    pb.SetItemAvailabilityRequest,
    item_ids=mostly(
        st.lists(ITEM_IDS, max_size=6),
        st.builds(  # many ids, not the catalog's, the last one maybe malformed
            lambda n, odd: [f"x{i}" for i in range(n - 1)] + ["x" if odd is None else odd],
            st.sampled_from([1000, 1100]),
            st.one_of(st.none(), _BAD_IDS),
        ),
    ),
    available=st.booleans(),
)


def fill(path: str, w: World) -> str:
    return (
        path.replace("{root}", str(w.bundles))
        .replace("{version}", str(w.version_dir))
        .replace("{parent}", str(w.bundles.parent))
    )


# -- the fuzz tests ------------------------------------------------------------------------
@fuzz(250)
@given(req=RECOMMENDS)
def test_recommend(world: World, req: pb.RecommendRequest) -> None:
    expected = expect_recommend(req)
    code, resp, details = call(world.personalization.Recommend, req)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_recommended(req, resp, world)


@fuzz(250)
@given(req=TRACKS)
def test_track(world: World, req: pb.TrackRequest) -> None:
    now_ms = world.now_ms()
    assume(not any(near_an_edge(e.time_unix_ms, now_ms) for e in req.events))
    expected = expect_track(req, now_ms)
    code, resp, details = call(world.personalization.Track, req)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_tracked(req, resp, world)


@fuzz(250)
@given(req=CONSENTS)
def test_set_consent(world: World, req: pb.SetConsentRequest) -> None:
    expected = expect_consent(req)
    code, resp, details = call(world.personalization.SetConsent, req)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_consented(req, resp, world)


@fuzz(150)
@given(auth=AUTHS)
def test_admin_status(world: World, auth: Any) -> None:
    expected = expect_auth(auth)
    code, resp, details = call(world.admin.Status, pb.StatusRequest(), auth)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_status(resp, world)


@fuzz(200)
@given(req=AVAILABILITY, auth=AUTHS)
def test_admin_set_item_availability(
    world: World, req: pb.SetItemAvailabilityRequest, auth: Any
) -> None:
    expected = expect_availability(req, auth)
    code, resp, details = call(world.admin.SetItemAvailability, req, auth)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_availability(req, resp, world)


@fuzz(200)
@given(req=RELOADS, auth=AUTHS)
def test_admin_reload_bundle(world: World, req: pb.ReloadBundleRequest, auth: Any) -> None:
    req = pb.ReloadBundleRequest(path=fill(req.path, world))
    expected = expect_reload(req, auth, world)
    code, resp, details = call(world.admin.ReloadBundle, req, auth)
    event(f"expected {expected.name}")
    assert code == expected, details
    if code == OK:
        check_reloaded(resp, world)
    elif code == REFUSED:
        assert details.startswith("bundle refused, still serving"), details
        world.model.failed_reloads += 1


# Raw bytes on the wire: random, or a generated request's encoding truncated, with a byte
# flipped, or with bytes inserted or appended. What parses is judged like any request; what
# does not, grpc answers itself, before the servicer runs.
@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    response: type[Message]
    strategy: st.SearchStrategy[Any]

    @property
    def admin(self) -> bool:
        return self.path.startswith("Admin/")


METHODS = [
    Method("Personalization/Recommend", pb.RecommendRequest, pb.RecommendResponse, RECOMMENDS),
    Method("Personalization/Track", pb.TrackRequest, pb.TrackResponse, TRACKS),
    Method("Personalization/SetConsent", pb.SetConsentRequest, pb.SetConsentResponse, CONSENTS),
    Method("Admin/ReloadBundle", pb.ReloadBundleRequest, pb.ReloadBundleResponse, RELOADS),
    Method("Admin/Status", pb.StatusRequest, pb.StatusResponse, st.builds(pb.StatusRequest)),
    Method(
        "Admin/SetItemAvailability",
        pb.SetItemAvailabilityRequest,
        pb.SetItemAvailabilityResponse,
        AVAILABILITY,
    ),
]


def mutate(data: bytes, how: str, at: int, noise: bytes) -> bytes:
    i = at % (len(data) + 1)
    if how == "truncate":
        return data[:i]
    if how == "flip" and data:
        i %= len(data)
        return data[:i] + bytes([data[i] ^ (noise[0] if noise else 0xFF)]) + data[i + 1 :]
    if how == "insert":
        return data[:i] + noise + data[i:]
    if how == "append":
        return data + noise
    return data


@st.composite
def raw_calls(draw: st.DrawFn) -> tuple[Method, bytes]:
    method = draw(st.sampled_from(METHODS))
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=200))
    message = draw(method.strategy)
    how = draw(st.sampled_from(["none", "truncate", "flip", "insert", "append"]))
    at, noise = draw(st.integers(0, 2**16)), draw(st.binary(min_size=1, max_size=12))
    return method, mutate(message.SerializeToString(), how, at, noise)


def expect_raw(method: Method, data: bytes, auth: Any, w: World) -> tuple[Any, Any]:
    try:
        req: Any = method.request.FromString(data)
    except DecodeError:
        return UNDECODABLE, None
    name = method.path.rsplit("/", 1)[1]
    if name == "Recommend":
        return expect_recommend(req), req
    if name == "Track":
        now_ms = w.now_ms()
        assume(not any(near_an_edge(e.time_unix_ms, now_ms) for e in req.events))
        return expect_track(req, now_ms), req
    if name == "SetConsent":
        return expect_consent(req), req
    if name == "ReloadBundle":
        return expect_reload(req, auth, w), req
    if name == "SetItemAvailability":
        return expect_availability(req, auth), req
    return expect_auth(auth), req


@fuzz(300)
@given(raw=raw_calls(), auth=AUTHS)
def test_raw_bytes(world: World, raw: tuple[Method, bytes], auth: Any) -> None:
    method, data = raw
    expected, req = expect_raw(method, data, auth, world)
    stub = world.channel.unary_unary(
        f"/tailored.v1.{method.path}", request_serializer=None, response_deserializer=None
    )
    try:
        answer: bytes = stub(data, timeout=TIMEOUT, metadata=auth if method.admin else ())
        code, details = OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    if expected == UNDECODABLE:
        event(f"{method.path}: undecodable")
        assert code == UNDECODABLE[0] and details.startswith(UNDECODABLE[1]), (code, details)
        return
    event(f"{method.path}: {expected.name}")
    assert code == expected, details
    if code == REFUSED:
        world.model.failed_reloads += 1
    if code != OK:
        return
    resp: Any = method.response.FromString(answer)
    name = method.path.rsplit("/", 1)[1]
    if name == "Recommend":
        check_recommended(req, resp, world)
    elif name == "Track":
        check_tracked(req, resp, world)
    elif name == "SetConsent":
        check_consented(req, resp, world)
    elif name == "ReloadBundle":
        check_reloaded(resp, world)
    elif name == "SetItemAvailability":
        check_availability(req, resp, world)
    else:
        check_status(resp, world)


# -- a few fixed cases -----------------------------------------------------------------------
def test_the_right_token_reloads_this_bundle_and_it_keeps_serving(world: World) -> None:
    auth = (("authorization", f"Bearer {TOKEN}"),)
    for path in ("", str(world.bundles), str(world.version_dir)):
        code, resp, details = call(
            world.admin.ReloadBundle, pb.ReloadBundleRequest(path=path), auth
        )
        assert code == OK, details
        check_reloaded(resp, world)
    code, resp, details = call(world.admin.Status, pb.StatusRequest(), auth)
    assert code == OK, details
    check_status(resp, world)


def test_a_message_over_grpcs_size_limit_is_refused_before_the_servicer(world: World) -> None:
    req = pb.RecommendRequest(user_id="u" * 5_000_000, k=1, surface="home")
    code, _, details = call(world.personalization.Recommend, req)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details


# -- where the server disagrees with the documented rules ------------------------------------
@pytest.mark.parametrize("age", ["1e40", "-1e40", "1e308"])
def test_a_huge_finite_numeric_profile_value_is_not_a_server_outage(world: World, age: str) -> None:
    """A finite decimal whose standardized value does not fit the towers' float32 input is
    refused as out of range (INVALID_ARGUMENT), not an outage (UNAVAILABLE)."""
    req = pb.RecommendRequest(user_id="fuzz-new-user", k=10, surface="home", profile={"age": age})
    assert world.model.personalized(req.user_id) and not world.known(req.user_id)
    code, _, details = call(world.personalization.Recommend, req)
    assert code == INVALID, f"{code}: {details}"


def _c1_calls(w: World) -> dict[str, tuple[Any, Any, Any]]:
    bad = "user\x85id"  # NEL, a C1 control character (Unicode category Cc)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    event = pb.Event(user_id="u1", item_id=bad, type=pb.CLICK)
    return {
        "Recommend.user_id": (
            w.personalization.Recommend,
            pb.RecommendRequest(user_id=bad, k=1, surface="home"),
            (),
        ),
        "Recommend.exclude_item_ids": (
            w.personalization.Recommend,
            pb.RecommendRequest(user_id="u1", k=1, surface="home", exclude_item_ids=["\x9b"]),
            (),
        ),
        "Track.item_id": (w.personalization.Track, pb.TrackRequest(events=[event]), ()),
        "SetConsent.user_id": (
            w.personalization.SetConsent,
            pb.SetConsentRequest(user_id=bad, purposes=[PERSONALIZATION]),
            (),
        ),
        "SetItemAvailability.item_ids": (
            w.admin.SetItemAvailability,
            pb.SetItemAvailabilityRequest(item_ids=[bad], available=True),
            auth,
        ),
    }


@pytest.mark.parametrize(
    "where",
    [
        "Recommend.user_id",
        "Recommend.exclude_item_ids",
        "Track.item_id",
        "SetConsent.user_id",
        "SetItemAvailability.item_ids",
    ],
)
def test_c1_control_characters_in_ids_are_invalid(world: World, where: str) -> None:
    method, req, auth = _c1_calls(world)[where]
    code, _, details = call(method, req, auth)
    assert code == INVALID, f"{code}: {details}"


@pytest.mark.parametrize(
    "context",
    [
        pb.Context(time_unix_ms=-1),
        pb.Context(extra=_big_map(MAX_MAP + 1)),
        pb.Context(extra={"a\x00b": "v"}),
    ],
    ids=["negative-time", "65-extras", "control-key"],
)
def test_an_events_context_is_checked_like_a_recommend_context(
    world: World, context: pb.Context
) -> None:
    assert not context_ok(context)
    event = pb.Event(user_id="u1", item_id="1", type=pb.CLICK, context=context)
    code, _, details = call(world.personalization.Track, pb.TrackRequest(events=[event]))
    assert code == INVALID, f"{code}: {details}"


@pytest.mark.parametrize("profile", [{"age": "nan"}, {"age": "thirty"}, {"name": "x"}])
def test_a_malformed_profile_is_invalid_without_consent_too(
    world: World, profile: dict[str, str]
) -> None:
    user = "fuzz-no-consent"
    code, resp, details = call(
        world.personalization.SetConsent, pb.SetConsentRequest(user_id=user, purposes=[])
    )
    assert code == OK, details
    check_consented(pb.SetConsentRequest(user_id=user), resp, world)
    req = pb.RecommendRequest(user_id=user, k=10, surface="home", profile=profile)
    assert expect_recommend(req) == INVALID
    code, _, details = call(world.personalization.Recommend, req)
    assert code == INVALID, f"{code}: {details}"


# -- after all that --------------------------------------------------------------------------
def test_the_server_is_healthy_after_the_fuzzing(world: World) -> None:
    health = health_pb2_grpc.HealthStub(world.channel)
    for name in ("", "tailored.v1.Personalization", "tailored.v1.Admin"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    auth = (("authorization", f"Bearer {TOKEN}"),)
    again = pb.SetItemAvailabilityRequest(item_ids=sorted(world.model.unavailable), available=True)
    code, resp, details = call(world.admin.SetItemAvailability, again, auth)
    assert code == OK, details
    check_availability(again, resp, world)
    assert resp.unavailable_total == 0
    req = pb.RecommendRequest(user_id="1", k=10, surface="home")
    code, resp, details = call(world.personalization.Recommend, req)
    assert code == OK, details
    check_recommended(req, resp, world)
    assert len(resp.items) == 10
    code, resp, details = call(world.admin.Status, pb.StatusRequest(), auth)
    assert code == OK, details
    check_status(resp, world)


def test_invalid_utf8_in_a_string_field_is_invalid_argument(world: World) -> None:
    """The bytes of a RecommendRequest whose user_id (field 1) is not UTF-8: the caller's
    error, said so, where grpc's deserializer would answer INTERNAL."""
    stub = world.channel.unary_unary(
        "/tailored.v1.Personalization/Recommend",
        request_serializer=None,
        response_deserializer=None,
    )
    data = b"\x0a\x02\xff\xfe" + pb.RecommendRequest(k=5, surface="home").SerializeToString()
    with pytest.raises(grpc.RpcError) as err:
        stub(data, timeout=TIMEOUT)
    assert err.value.code() == INVALID
    assert "not a valid Recommend message" in (err.value.details() or "")
