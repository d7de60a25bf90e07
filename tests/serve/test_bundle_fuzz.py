"""Fuzzing a bundle's arrays behind a valid manifest: whatever a resealed bundle holds, loading
it refuses it cleanly or serves from it correctly, and the bundle watcher outlives it.

A manifest proves that a bundle's files are the ones written, not that the writer was right
(``bundle/checks.py``). Here, for each ``.npy`` file of the session's real MovieLens-100k
bundle (one parametrized test each: every array under ``items/`` and ``users/``, and the
index's ``index/ids.npy``; the ranker's cohort counts under ``cohorts/`` on the session's
synthetic bundle with cohorts, as MovieLens's has none), hypothesis draws damage of every
class that applies to that array; each damage goes into its own copy of the bundle, resealed
(``tests.helpers.reseal``) so that only the array contents are inconsistent, and the copy is
loaded. The classes:

- ``drop_rows`` / ``add_rows``: rows deleted (some, or all) or copies of rows inserted;
- ``dtype``: the array cast to another of float16/32/64, int16/32/64, uint16: a cast to the
  other kind (int <-> float), or a value-preserving one within its kind;
- ``add_dim`` / ``drop_dim``: an axis of length 1 inserted; one index of an axis taken, or
  two axes merged;
- ``columns``: columns added to, or removed from, an axis after the first;
- ``non_finite``: NaN, inf or -inf written into a float array;
- ``out_of_range``: an integer reference outside what it refers to: an item row outside 0..N
  (item neighbours, user history, seen items, a cohort's items), an index id outside 1..N,
  an item-item model row outside -1..K-1;
- ``offsets``: the users' seen-item, history or exposure offsets, or the cohorts', made
  non-monotonic, not starting at 0 or not ending at the number of entries.

The oracle: :func:`tailored.serve.bundles.load_recommender` (what the server and its watcher
run: verify, load, check, warm up) raises :class:`~tailored.bundle.format.BundleError` whose
message names the bundle and the damaged file. Only damage that changes nothing serving reads
may load instead (a value-preserving cast within a kind; any damage to ``users/embeddings.npy``,
which the build writes and serving never reads); such a bundle must then answer requests
with finite scores. Any other exception (an ``IndexError`` from a lookup, onnxruntime's
``InvalidArgument``...) or a bundle that loads despite the damage is a failure: such a bundle
would fail, or answer ``score=nan``, on requests instead of being refused at load.

Cases the fuzzing found have a test of their own at the end, and one test drops several
damaged versions into a watched directory: the watcher thread lives through all of them.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from tailored.bundle.format import BUNDLE_FILES, COHORT_FILES, BundleError
from tailored.bundle.runtime import LoadedBundle
from tailored.config import ServeConfig, load_serve_config
from tailored.serve.bundles import LiveBundle, load_recommender
from tailored.serve.recommender import Recommender, Request
from tests.serve.test_live_bundle import _broken, _serving, _until, _until_refused, _version

pytestmark = pytest.mark.slow  # damages copies of the session's trained bundle (serve_bundle)

INDEX_IDS = f"{BUNDLE_FILES['index']}/ids.npy"
OFFSETS = frozenset(
    BUNDLE_FILES[k]
    for k in (
        "user_seen_offsets",
        "user_history_offsets",
        "user_exposure_offsets",
        "cohort_offsets",
    )
)
# the ranker's cohort counts: fuzzed on the session's synthetic bundle with cohorts, as the
# MovieLens one has none
COHORT_NPY = frozenset(BUNDLE_FILES[k] for k in COHORT_FILES)
# written by the build (for refresh), never read by serving: no damage to it can matter there
UNREAD = frozenset({BUNDLE_FILES["user_embeddings"]})
DTYPES = tuple(
    np.dtype(t) for t in ("float16", "float32", "float64", "int16", "int32", "int64", "uint16")
)
# in the order an example applies them: those the loader refuses most often last, so that
# a failure (which ends the example) leaves the fewest others untried
KINDS = (
    "non_finite",
    "out_of_range",
    "offsets",
    "drop_rows",
    "add_rows",
    "dtype",
    "add_dim",
    "drop_dim",
    "columns",
)
# every array a bundle may hold, and the index's ids (index/ also holds a FAISS file)
NPY_FILES = sorted({*(f for f in BUNDLE_FILES.values() if f.endswith(".npy")), INDEX_IDS})
EXAMPLES_PER_FILE = 3  # each about 0.07 s per kind of damage: copy, damage, reseal, load


def fuzz(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        # no shrinking (minutes: each try loads several bundles); the notes say what failed
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@dataclass(frozen=True, repr=False)
class Good:
    """The undamaged bundle and what the fuzzing needs to know of it."""

    path: Path  # the version directory
    cfg: ServeConfig
    files: tuple[str, ...]  # every .npy it holds, relative paths
    # integer reference arrays: the values they may hold, inclusive
    refs: dict[str, tuple[int, int]]
    users: tuple[str, ...]  # pseudonyms of some of its users, to serve them

    def __repr__(self) -> str:  # what hypothesis prints of a failing example
        return f"Good({self.path})"


@dataclass(frozen=True)
class Damage:
    file: str  # relative to the bundle
    what: str
    array: np.ndarray  # what the file holds instead
    may_load: bool  # nothing serving reads has changed


def _users(bundle: LoadedBundle) -> tuple[str, ...]:
    """Pseudonyms of some of ``bundle``'s users, to serve them."""
    assert bundle.users is not None and len(bundle.users) > 1
    ids = bundle.users.ids
    return tuple(str(ids[i]) for i in sorted({0, 1, len(ids) // 2, len(ids) - 1}))


@pytest.fixture(scope="module")
def good(serve_bundle: Path) -> Good:
    path = _version(serve_bundle)
    bundle = LoadedBundle.load(path)
    n = bundle.n_items
    refs = {
        BUNDLE_FILES["item_neighbors"]: (0, n),
        BUNDLE_FILES["user_history"]: (0, n),
        BUNDLE_FILES["user_exposures"]: (0, n),
        BUNDLE_FILES["user_seen_items"]: (0, n),
        BUNDLE_FILES["context_popular"]: (0, n),
        INDEX_IDS: (1, n),
        BUNDLE_FILES["item_ease_rows"]: (-1, bundle.item_regression.weights.shape[0] - 1),
    }
    if bundle.segments is not None:  # each user's segment: 0..k-1
        refs[BUNDLE_FILES["user_segments"]] = (0, len(bundle.segments.labels) - 1)
    files = tuple(
        sorted(
            p.relative_to(path).as_posix()
            for part in ("items", "users", "index", "segments")
            for p in (path / part).rglob("*.npy")
        )
    )
    # every array the bundle holds is fuzzed, and every kind of damage has a file to damage
    assert (
        {
            INDEX_IDS,
            *(OFFSETS - {BUNDLE_FILES[k] for k in ("user_exposure_offsets", "cohort_offsets")}),
            *UNREAD,
        }
        <= set(files)
        <= set(NPY_FILES) - COHORT_NPY
    )
    assert len({f for f in refs if f in files}) >= 4
    cfg = load_serve_config(overrides={"clock": "bundle"})
    return Good(path, cfg, files, {f: r for f, r in refs.items() if f in files}, _users(bundle))


@pytest.fixture(scope="module")
def good_cohorts(cohort_site: dict[str, Any]) -> Good:
    """The session's synthetic bundle with cohorts (``tests/conftest.py``), for its cohort
    files."""
    path = cohort_site["version"]
    bundle = LoadedBundle.load(path)
    assert bundle.cohorts is not None and len(bundle.cohorts.cohorts) >= 5
    files = tuple(sorted(p.relative_to(path).as_posix() for p in (path / "cohorts").glob("*.npy")))
    assert set(files) == COHORT_NPY
    refs = {BUNDLE_FILES["cohort_items"]: (1, bundle.n_items)}
    cfg = load_serve_config(overrides={"clock": "bundle"})
    return Good(path, cfg, files, refs, _users(bundle))


# -- the damage ------------------------------------------------------------------------------
def _is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def _lossless(a: np.ndarray, dtype: np.dtype[Any]) -> bool:
    """``a`` cast to ``dtype`` and back is ``a``, without overflow or rounding."""
    with np.errstate(all="ignore"):
        b = a.astype(dtype)
        return bool(np.isfinite(b).all() if _is_float(b) else True) and np.array_equal(
            b.astype(a.dtype), a
        )


def _applies(kind: str, file: str, a: np.ndarray, good: Good) -> bool:
    rows = a.ndim >= 1 and a.shape[0] > 0
    match kind:
        case "drop_rows" | "add_rows":
            return rows
        case "drop_dim":
            return a.ndim >= 1 and a.size > 0
        case "columns":
            return a.ndim >= 2
        case "non_finite":
            return _is_float(a) and a.size > 0
        case "out_of_range":
            return file in good.refs and a.size > 0
        case "offsets":
            return file in OFFSETS
    return True  # dtype, add_dim


def _damage(data: st.DataObject, kind: str, file: str, a: np.ndarray, good: Good) -> Damage:
    """Damage of ``kind`` to ``file`` (holding ``a``), drawn from ``data``."""

    def draw(strategy: st.SearchStrategy[Any], label: str) -> Any:
        return data.draw(strategy, f"{kind}, {label}")

    def positions() -> list[int]:
        return draw(st.lists(st.integers(0, a.size - 1), min_size=1, max_size=5, unique=True), "at")

    n = a.shape[0] if a.ndim else 0
    may_load = file in UNREAD
    match kind:
        case "drop_rows":
            if draw(st.booleans(), "every row"):
                what, b = f"all {n} rows deleted", a[:0]
            else:
                rows = draw(
                    st.lists(st.integers(0, n - 1), min_size=1, max_size=8, unique=True), "rows"
                )
                what, b = f"rows {sorted(rows)} of {n} deleted", np.delete(a, rows, axis=0)
        case "add_rows":
            rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5), "copies of rows")
            at = draw(st.integers(0, n), "inserted at")
            what, b = f"copies of rows {rows} inserted at {at}", np.insert(a, at, a[rows], axis=0)
        case "dtype":
            same = np.floating if _is_float(a) else np.integer
            to = draw(
                st.sampled_from(
                    [
                        d
                        for d in DTYPES
                        if d != a.dtype and (not np.issubdtype(d, same) or _lossless(a, d))
                    ]
                ),
                "to",
            )
            with np.errstate(all="ignore"):
                b = a.astype(to)
            what = f"cast from {a.dtype} to {to}"
            may_load = may_load or bool(np.issubdtype(to, same))  # then value-preserving
        case "add_dim":
            axis = draw(st.integers(0, a.ndim), "axis")
            what, b = f"an axis inserted at {axis}", np.expand_dims(a, axis)
        case "drop_dim":
            if a.ndim >= 2 and draw(st.booleans(), "merge two axes"):
                axis = draw(st.integers(0, a.ndim - 2), "axis")
                shape = (*a.shape[:axis], a.shape[axis] * a.shape[axis + 1], *a.shape[axis + 2 :])
                what, b = f"axes {axis} and {axis + 1} merged", a.reshape(shape)
            else:
                axis = draw(st.sampled_from([i for i, size in enumerate(a.shape) if size]), "axis")
                at = draw(st.integers(0, a.shape[axis] - 1), "index")
                what, b = f"index {at} of axis {axis} taken", a.take(at, axis=axis)
        case "columns":
            axis = draw(st.integers(1, a.ndim - 1), "axis")
            width = a.shape[axis]
            if width > 0 and draw(st.booleans(), "remove"):
                cols = draw(
                    st.lists(st.integers(0, width - 1), min_size=1, max_size=3, unique=True),
                    "columns",
                )
                what, b = f"columns {cols} of axis {axis} removed", np.delete(a, cols, axis=axis)
            else:
                k = draw(st.integers(1, 3), "added")
                zeros = width == 0 or draw(st.booleans(), "zeros")
                shape = (*a.shape[:axis], k, *a.shape[axis + 1 :])
                extra = np.zeros(shape, a.dtype) if zeros else a.take([0] * k, axis=axis)
                what = f"{k} {'zero' if zeros else 'copied'} columns added to axis {axis}"
                b = np.concatenate([a, extra], axis=axis)
        case "non_finite":
            b = a.copy()
            at = positions()
            values = draw(
                st.lists(
                    st.sampled_from([math.nan, math.inf, -math.inf]),
                    min_size=len(at),
                    max_size=len(at),
                ),
                "values",
            )
            b.flat[at] = values
            what = f"{values} written at {at}"
        case "out_of_range":
            lo, hi = good.refs[file]
            info = np.iinfo(a.dtype)
            below = (
                st.integers(max(info.min, lo - 2**20), lo - 1) if info.min < lo else st.nothing()
            )
            above = (
                st.integers(hi + 1, min(info.max, hi + 2**20)) if info.max > hi else st.nothing()
            )
            b = a.copy()
            at = positions()
            values = draw(
                st.lists(
                    st.one_of(st.sampled_from([lo - 1, hi + 1]), below, above),
                    min_size=len(at),
                    max_size=len(at),
                ),
                "values",
            )
            b.flat[at] = values
            what = f"{values} written at {at}, where {lo}..{hi} belong"
        case "offsets":
            b = a.copy()
            how = draw(st.sampled_from(["swap", "lower", "first", "last"]), "how")
            if how in ("swap", "lower"):
                steps = np.flatnonzero(np.diff(a) > 0).tolist()  # a[i] < a[i + 1]
                i = draw(st.sampled_from(steps), "at")
                if how == "swap":
                    b[i], b[i + 1] = a[i + 1], a[i]
                else:
                    b[i + 1] = a[i] - draw(st.integers(1, 100), "by")
            elif how == "first":
                b[0] = draw(st.integers(1, int(a[-1])), "first")
            else:
                b[-1] = a[-1] + draw(st.integers(-int(a[-1]), 100).filter(bool), "by")
            what = f"offsets damaged ({how})"
        case _:
            raise AssertionError(kind)
    return Damage(file, what, b, may_load)


# -- the oracle ------------------------------------------------------------------------------
def _serves(rec: Recommender, good: Good) -> None:
    """Some of the bundle's users, and one it does not know, personalized or not: each gets
    items with finite scores."""
    now = float(rec.bundle.last_event_time)
    known = set(map(str, rec.bundle.item_ids))
    for user in (*good.users, "0" * 32):
        for personalized in (True, False):
            req = Request(
                user=user, k=10, surface=good.cfg.surfaces[0], time=now, personalized=personalized
            )
            got = rec.recommend(req)
            assert got.item_ids and set(got.item_ids) <= known, (user, got)
            assert all(map(math.isfinite, got.scores)), (user, got.scores)


def _refused(good: Good, bad: Path, file: str, what: str) -> Recommender | None:
    """Load ``bad`` as a server does: None where it is refused with a BundleError naming the
    bundle and ``file``; the loaded bundle otherwise. Any other exception fails the test."""
    try:
        return load_recommender(bad, good.cfg)
    except BundleError as e:
        assert str(bad) in str(e) and file in str(e), (
            f"{file}, {what}: refused, but the message does not name the file: {e}"
        )
        return None


def _refused_or_served(good: Good, damage: Damage, at: Path) -> None:
    """Write ``damage`` into a resealed copy of the good bundle at ``at`` and load it: refused
    with a BundleError naming the file, or (only where ``damage.may_load``) served."""

    def write(b: Path) -> None:
        np.save(b / damage.file, damage.array, allow_pickle=False)

    bad = _broken(good.path, at, write)
    rec = _refused(good, bad, damage.file, damage.what)
    event("refused" if rec is None else "loaded")
    if rec is not None:
        _serves(rec, good)  # first: what serving it would do
        assert damage.may_load, f"{damage.file}, {damage.what}: loaded, but must be refused"


@pytest.mark.parametrize("file", NPY_FILES)
@fuzz(EXAMPLES_PER_FILE)
@given(data=st.data())
def test_a_resealed_bundle_with_a_damaged_array_is_refused_naming_the_file(
    request: pytest.FixtureRequest, file: str, data: st.DataObject
) -> None:
    """Each example damages ``file`` once in every way that applies to it, one bundle each."""
    good: Good = request.getfixturevalue("good_cohorts" if file in COHORT_NPY else "good")
    if file not in good.files:
        pytest.skip(f"the session's bundle has no {file}")
    a = np.load(good.path / file, allow_pickle=False)
    for kind in (k for k in KINDS if _applies(k, file, a, good)):
        damage = _damage(data, kind, file, a, good)
        note(f"{kind}: {damage.what} -> {damage.array.dtype} {damage.array.shape}")
        event(kind)
        with tempfile.TemporaryDirectory(prefix="bundle-fuzz-") as tmp:
            _refused_or_served(good, damage, Path(tmp) / "v000002")


# -- the watcher -----------------------------------------------------------------------------
def _write(file: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(b: Path) -> None:
        np.save(b / file, change(np.load(b / file)), allow_pickle=False)

    return damage


def _offsets_not_monotonic(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[1], b[2] = a[2], a[1] - 1
    return b


def _index_ids_past_the_items(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, len(a) + 1)


def _wider(a: np.ndarray) -> np.ndarray:
    """A column of zeros more (an array with none has one then)."""
    return np.concatenate([a, np.zeros((a.shape[0], 1, *a.shape[2:]), a.dtype)], axis=1)


@pytest.fixture
def watched(good: Good, tmp_path: Path) -> Iterator[tuple[Path, LiveBundle]]:
    root = tmp_path / "bundles"
    _broken(good.path, root / "v000001", lambda b: None)
    live = LiveBundle(root, good.cfg)
    live.watch(0.05)
    yield root, live
    live.close()


def test_the_watcher_lives_through_damaged_arrays_and_then_loads_a_good_one(
    good: Good, watched: tuple[Path, LiveBundle]
) -> None:
    """Beside ``test_live_bundle``'s (short embeddings, NaN, garbage ranker, history out of
    range): damage that check_loaded refuses (offsets), and damage that fails later in the load
    with no BundleError of its own (index ids past the items: IndexError in the warm-up;
    item-history vectors wider than the user tower reads: onnxruntime's InvalidArgument)."""
    root, live = watched
    first = root / "v000001"
    damages = [
        _write(BUNDLE_FILES["user_seen_offsets"], _offsets_not_monotonic),
        _write(BUNDLE_FILES["user_history_offsets"], _offsets_not_monotonic),
        _write(INDEX_IDS, _index_ids_past_the_items),
        _write(BUNDLE_FILES["item_history"], _wider),
    ]
    assert live._watcher is not None
    for n, damage in enumerate(damages, start=2):
        _broken(good.path, root / f"v{n:06d}", damage)
        assert _until_refused(live, n - 1), f"v{n:06d} not tried"
        assert live._watcher.is_alive() and _serving(live) == first
    _broken(good.path, root / "v000009", lambda b: None)
    assert _until(lambda: _serving(live) == root / "v000009")
    assert live._watcher.is_alive() and live.failed_reloads == len(damages)


# -- cases the fuzzing found -----------------------------------------------------------------
def _last(a: np.ndarray) -> np.ndarray:
    return a[:-1]


def _as_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


def _first_index_id_negative(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[0] = -1
    return b


def _last_index_id_past_the_items(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[-1] = len(a) + 1
    return b


def _narrower(a: np.ndarray) -> np.ndarray:
    return np.delete(a, -1, axis=1)


def _one_nan(a: np.ndarray) -> np.ndarray:
    b = a.copy()
    b[0, 1] = np.nan
    return b


def _all_nan(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, np.nan)


FOUND = [
    # index/ids.npy is checked by nobody: a negative id silently hides an item, float ids
    # load, an id past the items fails requests (the next test), and a count that disagrees
    # is a TailoredError naming the index directory, not a BundleError naming the file
    (INDEX_IDS, _first_index_id_negative, "index-id-negative"),
    (INDEX_IDS, _as_float, "index-ids-as-floats"),
    (INDEX_IDS, _last, "index-ids-one-fewer"),
    # widths that serving's models read are not checked against model.json: onnxruntime's
    # InvalidArgument in the warm-up, or IndexError (activity's columns, multi's fields), or
    # the bundle loads (activity with a fourth column)
    (BUNDLE_FILES["item_history"], _wider, "item-history-wider"),
    (BUNDLE_FILES["item_numeric"], _narrower, "item-numeric-narrower"),
    (BUNDLE_FILES["item_categorical"], _wider, "item-categorical-wider"),
    (BUNDLE_FILES["item_multi"], _narrower, "item-multi-narrower"),
    (BUNDLE_FILES["item_multi"], _wider, "item-multi-wider"),
    (BUNDLE_FILES["item_activity"], _narrower, "item-activity-narrower"),
    (BUNDLE_FILES["item_activity"], _wider, "item-activity-wider"),
    (BUNDLE_FILES["user_categorical"], _narrower, "user-categorical-narrower"),
    (BUNDLE_FILES["user_numeric"], _wider, "user-numeric-wider"),
    # the item-item model's weights are not checked for NaN: all NaN, every personalized
    # request answers score=nan; one NaN, those whose candidates read it
    (BUNDLE_FILES["item_ease_weights"], _all_nan, "ease-weights-all-nan"),
    (BUNDLE_FILES["item_ease_weights"], _one_nan, "ease-weights-one-nan"),
    # refused, but the message names the index, not the embeddings whose width changed
    (BUNDLE_FILES["item_embeddings"], _wider, "item-embeddings-wider"),
]


@pytest.mark.parametrize(("file", "change"), [f[:2] for f in FOUND], ids=[f[2] for f in FOUND])
def test_what_the_fuzzing_found_is_refused_naming_the_file(
    good: Good, tmp_path: Path, file: str, change: Callable[[np.ndarray], np.ndarray]
) -> None:
    bad = _broken(good.path, tmp_path / "v000002", _write(file, change))
    rec = _refused(good, bad, file, change.__name__)
    if rec is not None:
        _serves(rec, good)  # first: what serving it does (the NaN weights: score=nan)
        pytest.fail(f"{file} ({change.__name__}): the damaged bundle loaded")


def test_an_index_id_past_the_items_is_refused_at_load_not_at_a_request(
    good: Good, tmp_path: Path
) -> None:
    """The last item's id in the index made N+1: the warm-up does not retrieve that item, so
    the bundle loads (and a watcher swaps it in); then every request whose candidates include
    it fails with IndexError, in ``ActivitySnapshot.counts`` (28 of the 943 users, in one build)."""
    bad = _broken(good.path, tmp_path / "v000002", _write(INDEX_IDS, _last_index_id_past_the_items))
    rec = _refused(good, bad, INDEX_IDS, "the last id made N+1")
    if rec is not None:
        users = rec.bundle.users
        assert users is not None
        now = float(rec.bundle.last_event_time)
        for user in map(str, users.ids):
            rec.recommend(Request(user, 10, good.cfg.surfaces[0], now, personalized=True))
        pytest.fail(f"{INDEX_IDS}: an id past the items loaded")
