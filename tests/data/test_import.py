"""`tailored data import`: CSV and Parquet through a column mapping, errors that say where."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailored.cli import main
from tailored.data.importer import import_dataset
from tailored.data.mapping import MappingError, load_mapping
from tailored.data.pseudonym import Pseudonymizer
from tailored.data.schema import SchemaError, read_dataset_meta
from tailored.data.store import read_table

KEY = bytes(range(32))
RAW_USERS = ("u_alice", "u_bob", "u_carol")
TYPES = ("view", "click", "rating")
T0 = 1_700_000_000

USERS_CSV = "uid,age,sex\nu_alice,34,f\nu_bob,,m\nu_carol,51,\n"
ITEMS_CSV = "movie_id,name,genres\nm1,Heat,Action|Crime\nm2,Up, Animation | Family \nm3,Quiet,\n"

MAPPING = """\
name = "my-shop"
[users]
file = "users.csv"
id = "uid"
[users.fields]
age = { column = "age", kind = "numeric" }
gender = { column = "sex", kind = "categorical" }
[items]
file = "items.csv"
id = "movie_id"
[items.fields]
genres = { column = "genres", kind = "multi_categorical", separator = "|" }
title = { column = "name", kind = "text" }
[events]
{files}
user = "uid"
item = "movie_id"
timestamp = "ts"
timestamp_format = "{fmt}"
type = "event_type"
value = "rating"
[events.context]
surface = "page"
"""


def _event_rows(n: int = 20, start: int = 0) -> list[list[str]]:
    """Row i: user i % 3, item m(i % 3 + 1), at T0 + 60 i, type i % 3; ratings carry i % 5."""
    rows = []
    for i in range(start, start + n):
        kind = TYPES[i % 3]
        rows.append(
            [
                RAW_USERS[i % 3],
                f"m{i % 3 + 1}",
                str(T0 + 60 * i),
                kind,
                str(i % 5) if kind == "rating" else "",
                "home" if i % 2 else "search",
            ]
        )
    return rows


def _csv(rows: list[list[str]]) -> str:
    return "uid,movie_id,ts,event_type,rating,page\n" + "".join(",".join(r) + "\n" for r in rows)


def _shop(
    root: Path, *, files: str = 'file = "ratings.csv"', fmt: str = "unix", events: str | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.csv").write_text(USERS_CSV)
    (root / "items.csv").write_text(ITEMS_CSV)
    (root / "ratings.csv").write_text(events if events is not None else _csv(_event_rows()))
    path = root / "mapping.toml"
    path.write_text(MAPPING.replace("{files}", files).replace("{fmt}", fmt))
    return path


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TAILORED_PSEUDONYM_KEY", raising=False)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_csv_import_round_trips(tmp_path: Path) -> None:
    out = import_dataset(_shop(tmp_path / "in"), tmp_path / "ds", key=KEY, chunk_rows=7)
    pseudo = Pseudonymizer(KEY)
    meta = read_dataset_meta(out)
    assert (meta.name, meta.presplit, meta.counts) == (
        "my-shop",
        False,
        {"users": 3, "items": 3, "events": 20},
    )
    assert meta.key_fingerprint == pseudo.fingerprint
    assert meta.schema.context_fields == ("surface",)

    users = read_table(out, "users").to_pylist()
    assert users == [
        {"user_id": pseudo("u_alice"), "age": 34.0, "gender": "f"},
        {"user_id": pseudo("u_bob"), "age": None, "gender": "m"},
        {"user_id": pseudo("u_carol"), "age": 51.0, "gender": None},
    ]
    items = read_table(out, "items").to_pylist()
    assert [i["genres"] for i in items] == [["Action", "Crime"], ["Animation", "Family"], None]
    assert [i["title"] for i in items] == ["Heat", "Up", "Quiet"]

    events = read_table(out, "events").to_pylist()
    for i, e in enumerate(events):
        assert e["user_id"] == pseudo(RAW_USERS[i % 3])
        assert (e["item_id"], e["timestamp"], e["type"]) == (
            f"m{i % 3 + 1}",
            T0 + 60 * i,
            TYPES[i % 3],
        )
        assert e["value"] == (float(i % 5) if TYPES[i % 3] == "rating" else None)
        assert e["surface"] == ("home" if i % 2 else "search")

    written = b"".join(p.read_bytes() for p in out.iterdir())
    for raw in RAW_USERS:
        assert raw.encode() not in written
    assert _leftovers(tmp_path) == ["ds", "in"]


@pytest.mark.parametrize(
    ("fmt", "cells", "expected"),
    [
        (
            "iso",
            [
                "2023-11-14T22:13:20Z",
                "2023-11-15T00:13:20+02:00",
                "2023-11-14 22:13:20",
                "2023-11-14",
                "2023-11-14T22:13:20.999",
            ],
            [T0, T0, T0, datetime(2023, 11, 14, tzinfo=UTC).timestamp(), T0],
        ),
        ("unix", ["1700000000", "1700000000.9", " 1700000060 "], [T0, T0, T0 + 60]),
        ("unix_ms", ["1700000000000", "1700000000999", "1700000060000"], [T0, T0, T0 + 60]),
    ],
)
def test_timestamp_formats(
    tmp_path: Path, fmt: str, cells: list[str], expected: list[float]
) -> None:
    rows = [["u_alice", "m1", f'"{c}"', "click", "", "home"] for c in cells]
    out = import_dataset(
        _shop(tmp_path / "in", fmt=fmt, events=_csv(rows)), tmp_path / "ds", key=KEY
    )
    assert read_table(out, "events", ["timestamp"]).column(0).to_pylist() == [
        int(x) for x in expected
    ]


def test_parquet_import_without_users_table(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    pq.write_table(
        pa.table(
            {
                "sku": pa.array([10, 20], pa.int64()),
                "tags": pa.array([["a", "b"], []], pa.list_(pa.string())),
                "price": pa.array([9.5, 20], pa.float64()),
            }
        ),
        root / "items.parquet",
    )
    stamps = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, 12, tzinfo=UTC)]
    pq.write_table(
        pa.table(
            {
                "who": pa.array([7, 8], pa.int64()),
                "what": pa.array([20, 10], pa.int64()),
                "when": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            }
        ),
        root / "clicks.parquet",
    )
    (root / "m.toml").write_text(
        'name = "pq"\n[items]\nfile = "items.parquet"\nid = "sku"\n[items.fields]\n'
        'tags = { kind = "multi_categorical" }\nprice = { kind = "numeric" }\n'
        '[events]\nfile = "clicks.parquet"\nuser = "who"\nitem = "what"\ntimestamp = "when"\n'
        'type_constant = "purchase"\n'
    )
    out = import_dataset(root / "m.toml", key=KEY, chunk_rows=1)
    assert out == tmp_path / "home" / "datasets" / "pq"
    pseudo = Pseudonymizer(KEY)
    assert read_table(out, "users").column("user_id").to_pylist() == [pseudo("7"), pseudo("8")]
    assert read_table(out, "items").to_pylist() == [
        {"item_id": "10", "tags": ["a", "b"], "price": 9.5},
        {"item_id": "20", "tags": [], "price": 20.0},
    ]
    events = read_table(out, "events").to_pydict()
    assert events["timestamp"] == [int(s.timestamp()) for s in stamps]
    assert events["type"] == ["purchase", "purchase"]
    assert events["item_id"] == ["20", "10"]


def test_events_only_tsv(tmp_path: Path) -> None:
    """Without [users] and [items] both tables are the distinct ids of the events."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "log.tsv").write_text("u\ti\tt\nu_bob\tx\t5\nu_bob\ty\t6\nu_alice\tx\t7\n")
    (root / "m.toml").write_text(
        'name = "log"\n[events]\nfile = "log.tsv"\nuser = "u"\n'
        'item = "i"\ntimestamp = "t"\ntype_constant = "view"\n'
    )
    out = import_dataset(root / "m.toml", tmp_path / "ds", key=KEY, chunk_rows=2)
    pseudo = Pseudonymizer(KEY)
    assert read_table(out, "users").column(0).to_pylist() == [pseudo("u_bob"), pseudo("u_alice")]
    assert read_table(out, "items").column(0).to_pylist() == ["x", "y"]
    assert read_dataset_meta(out).counts == {"users": 2, "items": 2, "events": 3}


def test_presplit_import(tmp_path: Path) -> None:
    files = 'train = "train.csv"\nvalid = "valid.csv"\ntest = "test.csv"'
    root = tmp_path / "in"
    mapping = _shop(root, files=files)
    for name, start, n in (("train", 0, 6), ("valid", 6, 2), ("test", 8, 3)):
        (root / f"{name}.csv").write_text(_csv(_event_rows(n, start)))
    out = import_dataset(mapping, tmp_path / "ds", key=KEY, chunk_rows=4)
    assert read_dataset_meta(out).presplit is True
    events = read_table(out, "events")
    assert events.column("split").to_pylist() == ["train"] * 6 + ["valid"] * 2 + ["test"] * 3
    assert events.column("timestamp").to_pylist() == [T0 + 60 * i for i in range(11)]


def _replace_in(root: Path, name: str, old: str, new: str) -> None:
    text = (root / name).read_text()
    assert old in text, (name, old)
    (root / name).write_text(text.replace(old, new, 1))


BAD_INPUTS = {
    "bad number at row 3": (
        "users.csv",
        "u_carol,51,",
        "u_carol,fifty,",
        "users.csv: row 3, column 'age': 'fifty' is not a number",
    ),
    "not an event type name": (
        "ratings.csv",
        "u_bob,m2,1700000060,click",
        "u_bob,m2,1700000060,add to cart",
        "ratings.csv: row 2, column 'event_type': 'add to cart' is not an event type name",
    ),
    "unknown item": (
        "ratings.csv",
        "u_carol,m3,1700000840,",
        "u_carol,m9,1700000840,",
        "ratings.csv: row 15, column 'movie_id': refers to no row of the items",
    ),
    "unknown user": (
        "ratings.csv",
        "u_bob,m2,1700000060",
        "u_zed,m2,1700000060",
        "ratings.csv: row 2, column 'uid': refers to no row of the users",
    ),
    "duplicate item id": (
        "items.csv",
        "m3,Quiet",
        "m1,Quiet",
        "items.csv: row 3, column 'movie_id': duplicates row 1",
    ),
    "duplicate user id": (
        "users.csv",
        "u_carol,51",
        "u_alice,51",
        "users.csv: row 3, column 'uid': duplicates row 1",
    ),
    "empty user id": (
        "ratings.csv",
        "u_alice,m1,1700000000",
        ",m1,1700000000",
        "ratings.csv: row 1, column 'uid': is empty",
    ),
    "missing column": (
        "ratings.csv",
        "uid,movie_id,ts,",
        "uid,movie_id,time,",
        "ratings.csv: no column(s) ['ts']",
    ),
    "bad timestamp": (
        "ratings.csv",
        "u_bob,m2,1700000960,",
        "u_bob,m2,yesterday,",
        "ratings.csv: row 17, column 'ts': 'yesterday' is not a unix timestamp",
    ),
    "empty timestamp": (
        "ratings.csv",
        "u_bob,m2,1700000960,",
        "u_bob,m2,,",
        "ratings.csv: row 17, column 'ts': is empty",
    ),
    "bad rating": (
        "ratings.csv",
        "rating,2,",
        "rating,two,",
        "ratings.csv: row 3, column 'rating': 'two' is not a number",
    ),
    "infinite timestamp": (
        "ratings.csv",
        "u_bob,m2,1700000960,",
        "u_bob,m2,1e400,",
        "ratings.csv: row 17, column 'ts': '1e400' is not a unix timestamp",
    ),
    "negative timestamp": (
        "ratings.csv",
        "u_bob,m2,1700000960,",
        "u_bob,m2,-5,",
        "ratings.csv: row 17, column 'ts': is negative",
    ),
    "ragged row": (
        "ratings.csv",
        "u_bob,m2,1700000960,click,,search",
        "u_bob,m2",
        "ratings.csv: row 17: has 2 fields, the header has 6",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_names_file_row_and_column(tmp_path: Path, case: str) -> None:
    name, old, new, message = BAD_INPUTS[case]
    root = tmp_path / "in"
    mapping = _shop(root)
    _replace_in(root, name, old, new)
    with pytest.raises(SchemaError) as err:
        import_dataset(mapping, tmp_path / "out" / "ds", key=KEY, chunk_rows=5)
    assert message in str(err.value)
    assert _leftovers(tmp_path / "out") == []  # no dataset, no temporary directory


def test_missing_file(tmp_path: Path) -> None:
    mapping = _shop(tmp_path / "in")
    (tmp_path / "in" / "items.csv").unlink()
    with pytest.raises(SchemaError, match=r"mapping.toml: \[items\] file 'items.csv' does not"):
        import_dataset(mapping, tmp_path / "ds", key=KEY)
    assert not (tmp_path / "ds").exists()


def test_failed_reimport_keeps_the_existing_dataset(tmp_path: Path) -> None:
    mapping = _shop(tmp_path / "in")
    out = import_dataset(mapping, tmp_path / "out" / "ds", key=KEY)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _replace_in(tmp_path / "in", "ratings.csv", "u_alice,m1,1700000000", "u_alice,m7,1700000000")
    with pytest.raises(SchemaError, match="row 1, column 'movie_id'"):
        import_dataset(mapping, out, key=KEY, chunk_rows=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path / "out") == ["ds"]


def test_refuses_to_replace_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(SchemaError, match="not a tailored dataset"):
        import_dataset(_shop(tmp_path / "in"), precious, key=KEY)
    assert (precious / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('kind = "multi_categorical"', 'kind = "list"'),
            "mapping.toml: [items.fields.genres] kind 'list' is not one of",
        ),
        (
            ('file = "ratings.csv"', 'file = "ratings.csv"\ntrain = "t.csv"'),
            "mapping.toml: [events] give either file or train/valid/test",
        ),
        (
            ('timestamp_format = "unix"', 'timestamp_format = "rfc"'),
            "mapping.toml: [events] timestamp_format 'rfc' is not one of",
        ),
        (
            ('type = "event_type"', 'type = "event_type"\ntype_constant = "click"'),
            "mapping.toml: [events] give exactly one of type",
        ),
        (('user = "uid"', 'usr = "uid"'), "mapping.toml: [events] unknown key 'usr'"),
        (('file = "users.csv"', 'file = "users.xlsx"'), "mapping.toml: [users] file 'users.xlsx'"),
        (
            ('kind = "numeric"', 'kind = "numeric", separator = ","'),
            "mapping.toml: [users.fields.age] separator applies only",
        ),
        (('name = "my-shop"', 'name = "../up"'), "mapping.toml: name '../up' must be"),
        (
            ("[events.context]", '[events.context]\nuser_id = "page"'),
            "mapping.toml: [events.context.user_id] context name 'user_id'",
        ),
        (('name = "my-shop"', 'name = "my-shop'), "mapping.toml: not valid TOML"),
    ],
)
def test_mapping_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    root = tmp_path / "in"
    _shop(root)
    _replace_in(root, "mapping.toml", *edit)
    with pytest.raises(MappingError) as err:
        load_mapping(root / "mapping.toml")
    assert message in str(err.value)


def test_cli_imports_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = _shop(tmp_path / "in")
    (tmp_path / "in" / "my-shop").mkdir()  # a folder named like the dataset does not capture it
    monkeypatch.chdir(tmp_path / "in")
    key_file = tmp_path / "key.hex"
    key_file.write_text(KEY.hex())
    assert main(["data", "import", "--mapping", str(mapping), "--key-file", str(key_file)]) == 0
    out = tmp_path / "home" / "datasets" / "my-shop"
    assert "3 users, 3 items, 20 events" in capsys.readouterr().out
    assert read_table(out, "users").column("user_id")[0].as_py() == Pseudonymizer(KEY)("u_alice")

    _replace_in(tmp_path / "in", "users.csv", "u_carol,51,", "u_carol,fifty,")
    assert main(["data", "import", "--mapping", str(mapping), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "users.csv: row 3, column 'age': 'fifty' is not a number" in err
    assert not (tmp_path / "x").exists()


def test_presplit_data_is_trained_on_as_split(tmp_path: Path) -> None:
    from tailored.data.interactions import PositiveRule, load_interactions
    from tailored.data.splits import TEST, TRAIN, VALID

    files = 'train = "train.csv"\nvalid = "valid.csv"\ntest = "test.csv"'
    root = tmp_path / "in"
    mapping = _shop(root, files=files)
    for name, start, n in (("train", 0, 12), ("valid", 12, 3), ("test", 15, 3)):
        (root / f"{name}.csv").write_text(_csv(_event_rows(n, start)))
    out = import_dataset(mapping, tmp_path / "ds", key=KEY)
    rule = PositiveRule.weighted({"click": 1.0, "rating": 1.0, "view": 1.0, "purchase": 1.0})
    data = load_interactions(out, rule, split="presplit")
    events = read_table(out, "events")
    kept = rule.mask(
        events.column("type").combine_chunks(), events.column("value").combine_chunks()
    )
    expected = np.asarray(events.column("split").to_pylist())[kept]
    codes = {"train": TRAIN, "valid": VALID, "test": TEST}
    assert sorted(data.split.tolist()) == sorted(codes[s] for s in expected)
    # a dataset imported whole cannot be read as pre-split
    whole = import_dataset(_shop(tmp_path / "in2"), tmp_path / "ds2", key=KEY)
    with pytest.raises(SchemaError, match="needs data imported with train/valid/test files"):
        load_interactions(whole, rule, split="presplit")


def test_an_events_file_with_a_header_and_no_rows_is_refused(tmp_path: Path) -> None:
    """It used to import as a dataset of 0 events, exit 0: a mistake in the export, not data."""
    mapping = _shop(tmp_path / "in", events=_csv([]))
    with pytest.raises(SchemaError, match=r"ratings.csv: no events \(a header and no rows\)"):
        import_dataset(mapping, tmp_path / "out" / "ds", key=KEY)
    assert _leftovers(tmp_path / "out") == []


def test_a_site_s_own_event_types_are_imported_renamed_or_left_out_by_the_mapping_alone(
    tmp_path: Path,
) -> None:
    rows = [
        ["u_alice", "m1", str(T0), "AddToCart", "", "home"],
        ["u_alice", "m2", str(T0 + 60), "ProductView", "42", "home"],
        ["u_bob", "m1", str(T0 + 120), "debug_ping", "", "home"],
        ["u_bob", "m3", str(T0 + 180), "wishlist", "", "search"],
        ["u_carol", "m2", str(T0 + 240), "purchase", "n/a", "search"],
    ]
    root = tmp_path / "in"
    mapping = _shop(root, events=_csv(rows))
    text = mapping.read_text().replace(
        "[events.context]",
        'null_values = ["n/a"]\n'
        "[events.types]\n"
        'AddToCart = "add_to_cart"\nProductView = "view"\ndebug_ping = false\n'
        "[events.context]",
    )
    mapping.write_text(text)
    out = import_dataset(mapping, tmp_path / "ds", key=KEY)
    events = read_table(out, "events")
    assert events.column("type").to_pylist() == ["add_to_cart", "view", "wishlist", "purchase"]
    assert events.column("value").to_pylist() == [None, 42.0, None, None]
    assert read_dataset_meta(out).event_types == {
        "add_to_cart": 1,
        "purchase": 1,
        "view": 1,
        "wishlist": 1,
    }


def test_a_type_the_mapping_cannot_name_is_refused_with_the_key(tmp_path: Path) -> None:
    mapping = _shop(tmp_path / "in")
    mapping.write_text(
        mapping.read_text().replace(
            "[events.context]", '[events.types]\nclick = "a b"\n[events.context]'
        )
    )
    with pytest.raises(MappingError, match=r"\[events.types.click\] write the stored type's name"):
        load_mapping(mapping)


def test_null_markers_of_a_table_and_of_a_field_read_as_missing(tmp_path: Path) -> None:
    root = tmp_path / "in"
    mapping = _shop(root)
    (root / "users.csv").write_text("uid,age,sex\nu_alice,unknown,f\nu_bob,V,m\nu_carol,51,?\n")
    mapping.write_text(
        mapping.read_text()
        .replace('id = "uid"\n', 'id = "uid"\nnull_values = ["unknown"]\n', 1)
        .replace(
            'age = { column = "age", kind = "numeric" }',
            'age = { column = "age", kind = "numeric", null_values = ["V"] }',
        )
        .replace(
            'gender = { column = "sex", kind = "categorical" }',
            'gender = { column = "sex", kind = "categorical", null_values = ["?"] }',
        )
    )
    out = import_dataset(mapping, tmp_path / "ds", key=KEY)
    users = read_table(out, "users").to_pylist()
    assert [(u["age"], u["gender"]) for u in users] == [(None, "f"), (None, "m"), (51.0, None)]
    # without the markers the same file is refused, naming the cell
    (root / "users.csv").write_text("uid,age,sex\nu_alice,unkonwn,f\nu_bob,V,m\nu_carol,51,?\n")
    with pytest.raises(
        SchemaError, match=r"users\.csv: row 1, column 'age': 'unkonwn' is not a number"
    ):
        import_dataset(mapping, tmp_path / "ds2", key=KEY)


def test_the_catalog_s_availability_window_is_imported_and_checked(tmp_path: Path) -> None:
    root = tmp_path / "in"
    mapping = _shop(root)
    (root / "items.csv").write_text(
        "movie_id,name,genres,launch,end\n"
        "m1,Heat,Action,2023-11-14T00:00:00Z,\n"
        "m2,Up,Family,,2024-01-01\n"
        "m3,Quiet,,,\n"
    )
    mapping.write_text(
        mapping.read_text().replace(
            'id = "movie_id"\n',
            'id = "movie_id"\navailable_from = "launch"\navailable_until = "end"\n'
            'time_format = "iso"\n',
        )
    )
    out = import_dataset(mapping, tmp_path / "ds", key=KEY)
    assert read_dataset_meta(out).schema.item_availability
    items = read_table(out, "items")
    assert items.column("available_from").to_pylist() == [1_699_920_000, None, None]
    assert items.column("available_until").to_pylist() == [None, 1_704_067_200, None]
    # an end before the launch names the row
    (root / "items.csv").write_text(
        "movie_id,name,genres,launch,end\nm1,Heat,Action,2024-02-01,2024-01-01\n"
        "m2,Up,Family,,\nm3,Quiet,,,\n"
    )
    with pytest.raises(SchemaError, match=r"items\.csv: row 1, column 'end': .* is not after"):
        import_dataset(mapping, tmp_path / "ds2", key=KEY)
