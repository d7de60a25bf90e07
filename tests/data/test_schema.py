from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailored.data.schema import DatasetMeta, DatasetSchema, FieldSpec, SchemaError, validate_table
from tailored.data.store import DatasetWriter

SCHEMA = DatasetSchema(
    user_fields=(FieldSpec("age", "numeric"), FieldSpec("gender", "categorical")),
    item_fields=(FieldSpec("genres", "multi_categorical"), FieldSpec("title", "text")),
    context_fields=("surface",),
)


def _events(**over: list) -> pa.Table:
    cols = {
        "user_id": ["a", "b", "a"],
        "item_id": ["1", "2", "2"],
        "timestamp": [10, 20, 30],
        "type": ["click", "view", "rating"],
        "value": [None, 40.0, 4.0],
        "surface": ["home", None, "search"],
    }
    cols.update(over)
    return pa.table(cols)


def _users() -> pa.Table:
    return pa.table({"user_id": ["a", "b"], "age": [31.0, None], "gender": ["F", "M"]})


def _items() -> pa.Table:
    return pa.table({"item_id": ["1", "2"], "genres": [["x", "y"], []], "title": ["One", "Two"]})


def test_valid_tables_are_cast_to_the_stored_schema() -> None:
    t = validate_table(
        _events(timestamp=pa.array([10, 20, 30], pa.int32())), "events", SCHEMA, source="ev.parquet"
    )
    assert t.schema.field("timestamp").type == pa.int64()
    assert t.column("value").to_pylist() == [None, 40.0, 4.0]


@pytest.mark.parametrize(
    ("table", "kind", "expected"),
    [
        (
            _events(type=["click", "add to cart", "view"]),
            "events",
            "ev.parquet: row 2, column 'type': 'add to cart' is not an event type name",
        ),
        (_events(timestamp=[1, -5, 3]), "events", "row 2, column 'timestamp': is negative"),
        (_events(user_id=["a", "", "b"]), "events", "row 2, column 'user_id': is an empty string"),
        (_events(user_id=["a", "b", None]), "events", "row 3, column 'user_id': is empty"),
        (
            _events(value=[1.0, float("nan"), 2.0]),
            "events",
            "row 2, column 'value': nan is not a finite number",
        ),
        (
            _events(timestamp=["1", "2", "soon"]),
            "events",
            "row 3, column 'timestamp': cannot read 'soon'",
        ),
        (_events().drop(["type"]), "events", "missing column(s) ['type']"),
        (
            _events().append_column("colour", pa.array(["r", "g", "b"])),
            "events",
            "column(s) ['colour'] are not declared",
        ),
        (
            pa.table({"user_id": ["a", "b", "a"], "age": [1.0, 2.0, 3.0], "gender": ["F"] * 3}),
            "users",
            "row 3, column 'user_id': duplicates row 1",
        ),
    ],
)
def test_bad_tables_name_file_row_column(table: pa.Table, kind: str, expected: str) -> None:
    with pytest.raises(SchemaError, match=None) as e:
        validate_table(table, kind, SCHEMA, source="ev.parquet")  # type: ignore[arg-type]
    assert expected in str(e.value)


def test_row_offset_is_added_for_chunked_reads() -> None:
    with pytest.raises(SchemaError, match="row 1002, column 'type'"):
        validate_table(
            _events(type=["click", "no pe", "view"]),
            "events",
            SCHEMA,
            source="ev.csv",
            row_offset=1000,
        )


def _meta() -> DatasetMeta:
    return DatasetMeta(name="t", schema=SCHEMA, key_fingerprint="f")


def test_writer_writes_a_complete_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, _meta()) as w:
        w.write_users(_users(), source="u")
        w.write_items(_items(), source="i")
        w.write_events(_events(), source="e")
        w.write_events(_events(), source="e", row_offset=3)
    assert pq.read_table(out / "events.parquet").num_rows == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_events_referring_to_unknown_items_are_refused(tmp_path: Path) -> None:
    expected = "row 2, column 'item_id': refers to no row of the items"
    with pytest.raises(SchemaError, match=expected), DatasetWriter(tmp_path / "ds", _meta()) as w:
        w.write_users(_users(), source="u")
        w.write_items(_items(), source="i")
        w.write_events(_events(item_id=["1", "9", "2"]), source="e")


def test_a_failure_leaves_the_old_dataset_and_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out, _meta()) as w:
        w.write_users(_users(), source="u")
        w.write_items(_items(), source="i")
        w.write_events(_events(), source="e")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SchemaError), DatasetWriter(out, _meta()) as w:
        w.write_users(_users(), source="u")
        w.write_items(_items(), source="i")
        w.write_events(_events(), source="e")
        w.write_events(_events(type=["click", "b a d", "view"]), source="e2")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
