"""The Page RPC on the real server (MovieLens-100k bundle): modules from each source, no item
twice on a page, fixed and random orders with their propensities, and bad arguments refused
by name."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from tailored.serve.v1 import personalization_pb2 as pb
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # serves the session's trained bundle (conftest's serve_bundle)

MODULES = [
    pb.PageModule(id="for-you", type="recommended", title="For you"),
    pb.PageModule(id="trending", type="trending", title="Trending"),
    pb.PageModule(id="byw", type="because_you_watched"),
    pb.PageModule(id="horror", type="category", param="Horror", title="Horror"),
    pb.PageModule(id="like-50", type="similar", param="50"),
]


@pytest.fixture(scope="module")
def running(serve_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = Running(serve_bundle, tmp_path_factory.mktemp("page") / "state.db")
    yield r
    r.stop()


def _ids(resp: pb.PageResponse) -> list[str]:
    return [i.item_id for m in resp.modules for i in m.items]


def test_a_page_fills_every_module_from_its_source_without_repeats(
    running: Running, movielens_dir: Path
) -> None:
    resp = running.client.page("6", MODULES, k=6)
    assert [m.id for m in resp.modules] == [m.id for m in MODULES]  # fixed: the site's order
    assert [m.position for m in resp.modules] == list(range(5))
    assert all(m.propensity == 1.0 and len(m.items) == 6 for m in resp.modules)
    ids = _ids(resp)
    assert len(ids) == len(set(ids)) == 30  # no item twice on one page
    assert resp.policy == "fixed" and resp.strategy == "personalized" and resp.request_id
    by = {m.id: m for m in resp.modules}
    # the dataset's own genres say which items are Horror
    catalog = pq.read_table(movielens_dir / "items.parquet", columns=["item_id", "genres"])
    horror = {str(r["item_id"]) for r in catalog.to_pylist() if "Horror" in (r["genres"] or [])}
    assert len(horror) > 50 and {i.item_id for i in by["horror"].items} <= horror
    rec = running.service.bundle.current
    rows = rec.attribute_rows("Horror").tolist()
    assert {str(rec.bundle.item_ids[r - 1]) for r in rows} == horror
    assert all(i.reason.startswith("similar to ") for i in by["like-50"].items)
    assert "50" not in ids
    assert all(i.reason.startswith("because you watched ") for i in by["byw"].items)
    # the trending row is the popular control's list, less what the rows above took
    assert by["trending"].items[0].reason.startswith("popular")


def test_a_random_order_logs_each_modules_propensity(serve_bundle: Path, tmp_path: Path) -> None:
    r = Running(serve_bundle, tmp_path / "s.db", page_policy="random")
    try:
        tops: Counter[str] = Counter()
        for _ in range(60):
            resp = r.client.page("6", MODULES[:3], k=3)
            assert resp.policy == "random"
            assert [round(m.propensity, 6) for m in resp.modules] == [
                round(1 / 3, 6),
                0.5,
                1.0,
            ]
            tops[resp.modules[0].id] += 1
            ids = _ids(resp)
            assert len(ids) == len(set(ids))
        assert set(tops) == {"for-you", "trending", "byw"} and min(tops.values()) >= 8
    finally:
        r.stop()


def test_modules_with_nothing_to_show_close_up(running: Running) -> None:
    # a user without history has no "because you watched" row, and an unknown genre is empty
    resp = running.client.page(
        "nobody-at-all",
        [
            pb.PageModule(id="byw", type="because_you_watched"),
            pb.PageModule(id="none", type="category", param="No-Such-Genre"),
            pb.PageModule(id="trending", type="trending"),
        ],
        k=4,
    )
    assert [(m.id, m.position) for m in resp.modules] == [("trending", 0)]
    assert resp.strategy == "popular"


@pytest.mark.parametrize(
    ("modules", "k", "argument", "message"),
    [
        ([], 5, "modules", "no candidate modules"),
        ([pb.PageModule(id="a", type="carousel")], 5, "modules[0].type", "unknown module type"),
        (
            [pb.PageModule(id="a", type="trending"), pb.PageModule(id="a", type="recommended")],
            5,
            "modules[1].id",
            "given twice",
        ),
        ([pb.PageModule(id="a", type="similar")], 5, "modules[0].param", "needs an item id"),
        ([pb.PageModule(id="a", type="trending", param="x")], 5, "modules[0].param", "no param"),
        ([pb.PageModule(id="a", type="trending")], 0, "k", "between 1 and"),
        ([pb.PageModule(id="a", type="trending")], 101, "k", "between 1 and"),
        ([pb.PageModule(id="", type="trending")], 5, "modules[0].id", ""),
    ],
)
def test_bad_page_arguments_are_invalid_and_named(
    running: Running, modules: list[pb.PageModule], k: int, argument: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        running.client.page("6", modules, k=k)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value.details()).startswith(f"{argument}: ") and message in str(
        err.value.details()
    )


def test_an_unknown_page_type_is_named(running: Running) -> None:
    with pytest.raises(grpc.RpcError) as err:
        running.client.page("6", MODULES[:1], page_type="checkout")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err.value.details()).startswith("page_type: unknown page type 'checkout'")


def test_the_page_command(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    from tailored.cli import main

    args = ["page", "--target", running.target, "--user", "6", "--k", "3", "--module"]
    args += ["top=recommended", "horror=category:Horror", "more=similar:50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("bundle ") and "fixed order" in out
    assert "1. top (recommended, propensity 1.000)" in out and "similar to " in out
    assert main([*args[:-3], "broken"]) == 2
    assert "--module 'broken': expected ID=TYPE" in capsys.readouterr().err


def test_a_page_past_its_deadline_is_refused(running: Running) -> None:
    req = pb.PageRequest(user_id="6", page_type="home", modules=MODULES, k=5)
    with pytest.raises(grpc.RpcError) as err:
        running.client.personalization.Page(req, timeout=1e-6)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
