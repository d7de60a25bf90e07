"""Popularity in the request's context: the bundle counts positives per context value (a
synthetic site whose events carry surface and device), and a request without consent to
personalization gets the items popular in its own context, then overall."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from tailored.bundle.runtime import LoadedBundle
from tailored.config import ServeConfig
from tailored.data.interactions import Interactions
from tailored.serve.recommender import Recommendation, Recommender, Request
from tailored.train.runs import load_data
from tests.helpers import synthetic_bundle

pytestmark = pytest.mark.slow  # trains on a synthetic site and builds a bundle


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Interactions, LoadedBundle]:
    base = tmp_path_factory.mktemp("context")
    bundles, cfg = synthetic_bundle(base)
    return load_data(cfg), LoadedBundle.load(bundles / "v000001")


def _oracle(data: Interactions) -> dict[tuple[str, str], list[int]]:
    """Per (context field, value): item rows by positives in it, most first, ties by row."""
    counts: dict[tuple[str, str], Counter[int]] = {}
    for f, (name, vocab) in enumerate(data.context_vocabs.items()):
        for code, item in zip(data.context[:, f].tolist(), data.item.tolist(), strict=True):
            if code:
                counts.setdefault((name, vocab[code - 1]), Counter())[item] += 1
    return {
        key: [i for i, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
        for key, c in counts.items()
    }


def _now(bundle: LoadedBundle) -> float:
    """The bundle's clock: just after its last event."""
    return bundle.last_event_time + 1.0


def _open(bundle: LoadedBundle, rows: list[int]) -> list[int]:
    """``rows`` less the items not served at the bundle's clock (ended; the site's catalog
    ends some items during its span)."""
    assert bundle.windows is not None
    closed = set(bundle.windows.closed(_now(bundle)).tolist())
    return [r for r in rows if r not in closed]


def _ask(
    bundle: LoadedBundle, k: int, exclude: tuple[str, ...] = (), **context: str
) -> Recommendation:
    surface = context.pop("surface", "home")
    req = Request(
        user="someone",
        k=k,
        surface=surface,
        time=_now(bundle),
        personalized=False,
        context=context,
        exclude=exclude,
    )
    return Recommender(bundle, ServeConfig(surfaces=(surface,))).recommend(req)


def test_the_bundle_ranks_items_by_positives_in_each_context(
    synthetic: tuple[Interactions, LoadedBundle],
) -> None:
    data, bundle = synthetic
    assert set(data.context_vocabs) == {"surface", "device"}
    pop = bundle.context_popular
    assert pop is not None
    oracle = _oracle(data)
    for f, (name, vocab) in enumerate(data.context_vocabs.items()):
        for code, value in enumerate(vocab, start=1):
            expected = oracle.get((name, value), [])
            rows = pop.rows[f, code]
            assert rows[: len(expected)].tolist() == expected[: len(rows)], (name, value)


def test_without_consent_a_request_gets_what_is_popular_in_its_context(
    synthetic: tuple[Interactions, LoadedBundle],
) -> None:
    data, bundle = synthetic
    oracle = _oracle(data)
    devices = data.context_vocabs["device"]
    tops = {}
    for device in devices:
        # a surface the data has no events for: the device alone decides
        rec = _ask(bundle, 10, surface="nowhere", device=device)
        expected = _open(bundle, oracle[("device", device)])[:10]
        assert [bundle.item_ids[r - 1] for r in expected] == rec.item_ids
        assert rec.reasons == [f"popular on {device}"] * 10
        assert rec.strategy == "popular"
        tops[device] = rec.item_ids
    assert len({tuple(t) for t in tops.values()}) > 1  # the devices' lists differ
    # an excluded item is skipped, the next one takes its place
    first = tops[devices[0]]
    rec = _ask(bundle, 10, exclude=(first[0],), surface="nowhere", device=devices[0])
    assert rec.item_ids[:9] == first[1:] and first[0] not in rec.item_ids


def test_surface_and_device_together_sum_their_counts(
    synthetic: tuple[Interactions, LoadedBundle],
) -> None:
    data, bundle = synthetic
    surface, device = data.context_vocabs["surface"][0], data.context_vocabs["device"][0]
    total: Counter[int] = Counter()
    for name, value in (("surface", surface), ("device", device)):
        f = list(data.context_vocabs).index(name)
        code = data.context_vocabs[name].index(value) + 1
        total.update(data.item[data.context[:, f] == code].tolist())
    rec = _ask(bundle, 5, surface=surface, device=device)
    got = [int(np.flatnonzero(bundle.item_ids == i)[0]) + 1 for i in rec.item_ids]
    served = _open(bundle, list(total))
    assert [total[r] for r in got] == sorted((total[r] for r in served), reverse=True)[:5]
    assert rec.reasons[0] == f"popular on {surface}, {device}"


def test_no_context_gives_the_overall_list(synthetic: tuple[Interactions, LoadedBundle]) -> None:
    _, bundle = synthetic
    rec = _ask(bundle, 10, surface="nowhere")
    assert rec.reasons == ["popular right now"] * 10
    popular = Recommender(bundle, ServeConfig(surfaces=("nowhere",))).popular
    overall = _open(bundle, popular.tolist())[:10]
    assert rec.item_ids == [bundle.item_ids[r - 1] for r in overall]
    # a request from 1970 is shown only items the catalog has no launch time for
    before = Recommender(bundle, ServeConfig(surfaces=("nowhere",))).recommend(
        Request(user="someone", k=10, surface="nowhere", time=0.0, personalized=False)
    )
    assert bundle.windows is not None and len(before.item_ids) == 10
    always = [r for r in popular.tolist() if bundle.windows.start[r] == 0][:10]
    assert before.item_ids == [bundle.item_ids[r - 1] for r in always]
    assert (bundle.windows.start > 0).any()  # some items had not launched in 1970


def test_lists_follow_the_models_vocabulary_when_the_data_has_changed(
    synthetic: tuple[Interactions, LoadedBundle],
) -> None:
    # a refresh reads the data as it is now: a value the model never saw (the data's first
    # device) and one it saw that the data no longer has ("fax") must not shift the others
    from tailored.bundle.snapshot import context_popular as _context_popular

    data, _ = synthetic
    devices = data.context_vocabs["device"]
    model_vocabs = {"device": ["fax", *devices[1:]], "surface": data.context_vocabs["surface"]}
    out = _context_popular(data, model_vocabs)
    rows = out["context_popular"]
    assert rows.shape[0] == 2  # the model's fields, in the model's order
    oracle = _oracle(data)
    assert not rows[0, 1].any()  # "fax": nothing in the data
    for code, value in enumerate(model_vocabs["device"][1:], start=2):
        expected = oracle[("device", value)]
        assert rows[0, code, : len(expected)].tolist() == expected[: rows.shape[2]]
    assert not rows[0, len(model_vocabs["device"]) + 1 :].any()  # no code beyond the vocab


def test_a_context_list_that_runs_out_continues_overall_with_descending_scores(
    synthetic: tuple[Interactions, LoadedBundle],
) -> None:
    data, bundle = synthetic
    device = data.context_vocabs["device"][0]
    full = _ask(bundle, 1000, surface="nowhere", device=device)
    in_context = [i for i, r in zip(full.item_ids, full.reasons, strict=True) if "on" in r]
    # all but the device's two least popular items excluded: those bundle, then the overall list
    # (items without a positive on this device, some with many on others)
    rec = _ask(bundle, 10, tuple(in_context[:-2]), surface="nowhere", device=device)
    assert rec.item_ids[:2] == in_context[-2:]
    assert rec.reasons == [f"popular on {device}"] * 2 + ["popular right now"] * 8
    assert not set(rec.item_ids[2:]) & set(in_context)
    assert all(a >= b for a, b in itertools.pairwise(rec.scores)), rec.scores
